"""Settings come from the TOML file, the environment over it, keyword arguments over both (core.config)."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from core.config import Settings


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No TASKMAN_ variable but the config file's path; returns that path (the file is not written yet)."""
    for name in list(os.environ):
        if name.upper().startswith("TASKMAN_"):
            monkeypatch.delenv(name)
    path = tmp_path / "taskman.toml"
    monkeypatch.setenv("TASKMAN_CONFIG", str(path))
    return path


def test_the_environment_wins_over_the_file_and_arguments_over_both(clean_env, monkeypatch):
    clean_env.write_text('namespace = "from-file"\ndefault_timeout = 12\nhttp_allow = ["10.0.0.1", "10.0.0.2"]\n'
                         'jail_accept_weak = true\nsomething_else = 1\n')
    assert (Settings().namespace, Settings().default_timeout) == ("from-file", 12.0)
    assert Settings().http_allow == ["10.0.0.1", "10.0.0.2"] and Settings().jail_accept_weak is True
    monkeypatch.setenv("TASKMAN_DEFAULT_TIMEOUT", "33")
    monkeypatch.setenv("taskman_jail_accept_weak", "0")  # any case, as pydantic-settings read it
    monkeypatch.setenv("TASKMAN_HTTP_ALLOW", "127.0.0.1, ::1,")
    monkeypatch.setenv("TASKMAN_NOT_A_SETTING", "ignored")
    settings = Settings()
    assert (settings.namespace, settings.default_timeout, settings.jail_accept_weak) == ("from-file", 33.0, False)
    assert settings.http_allow == ["127.0.0.1", "::1"]
    settings = Settings(namespace="given", default_timeout=1)
    assert (settings.namespace, settings.default_timeout, settings.http_allow) == ("given", 1.0, ["127.0.0.1", "::1"])


def test_defaults_without_a_file_and_refusals_naming_the_setting(clean_env, monkeypatch):
    settings = Settings()
    assert settings.namespace == "taskman" and settings.redis_url is None and "math" in settings.sandbox_imports
    monkeypatch.setenv("TASKMAN_REDIS_URL", "")
    assert Settings().redis_url == ""
    monkeypatch.setenv("TASKMAN_DEFAULT_TIMEOUT", "-1")
    with pytest.raises(ValidationError, match="default_timeout"):
        Settings()
    with pytest.raises(ValidationError, match="output_cap"):
        Settings(default_timeout=5, output_cap=10**9)
