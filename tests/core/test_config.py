"""Settings come from the TOML file, the environment over it, keyword arguments over both (core.config)."""

from __future__ import annotations

import os

import pytest

from core.config import Settings
from core.errors import InvalidSetting


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
    with pytest.raises(InvalidSetting, match=r"^TASKMAN_DEFAULT_TIMEOUT: must be greater than 0, not '-1'$"):
        Settings()
    with pytest.raises(InvalidSetting, match=r"^output_cap: \(1e\+09\) must not exceed max_output_cap"):
        Settings(default_timeout=5, output_cap=10**9)


@pytest.mark.parametrize(("variable", "value", "refusal"), [
    ("TASKMAN_DEFAULT_TIMEOUT", "soon", "must be a number, not 'soon'"),
    ("TASKMAN_DEFAULT_TIMEOUT", "nan", "must be a number, not 'nan'"),
    ("TASKMAN_OUTPUT_CAP", "1.5", "must be a whole number, not '1.5'"),
    ("TASKMAN_OUTPUT_CAP", "-3", "must be at least 0, not '-3'"),
    ("TASKMAN_JAIL_ACCEPT_WEAK", "perhaps", "must be true or false, not 'perhaps'"),
    ("TASKMAN_JAIL_UID", "0", "must be at least 1, not '0'"),
])
def test_a_bad_variable_is_refused_by_its_name(clean_env, monkeypatch, variable, value, refusal):
    monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidSetting) as refused:
        Settings()
    assert refused.value.message == f"{variable}: {refusal}"


def test_values_of_each_type_from_the_file_the_environment_and_keywords(clean_env, monkeypatch):
    clean_env.write_text('output_cap = 100.0\njail_accept_weak = "yes"\ndata_dir = "/tmp/tm"\nimports = "a.b, c"\n')
    settings = Settings()
    assert (settings.output_cap, settings.jail_accept_weak, str(settings.data_dir), settings.imports) == (
        100, True, "/tmp/tm", ["a.b", "c"])
    assert type(settings.output_cap) is int and type(Settings(default_timeout=5).default_timeout) is float
    monkeypatch.setenv("TASKMAN_OUTPUT_CAP", " 7 ")
    assert Settings().output_cap == 7 and Settings(output_cap="9").output_cap == 9
    clean_env.write_text('namespace = 5\n')
    with pytest.raises(InvalidSetting, match=r"^namespace in .*taskman.toml: must be text, not 5$"):
        Settings()
    clean_env.write_text('max_retries_cap = true\n')
    with pytest.raises(InvalidSetting, match=r"max_retries_cap in .*: must be a number, not True"):
        Settings()


def test_replace_checks_its_changes_and_reads_no_source_again(clean_env, monkeypatch):
    settings = Settings(namespace="first")
    monkeypatch.setenv("TASKMAN_NAMESPACE", "from-env")
    copy = settings.replace(redis_url="redis://127.0.0.1:1/0", default_timeout="2")
    assert (copy.namespace, copy.redis_url, copy.default_timeout) == ("first", "redis://127.0.0.1:1/0", 2.0)
    assert (settings.redis_url, settings.default_timeout) == (None, 60.0)
    with pytest.raises(InvalidSetting, match="^no_such: is not a setting$"):
        settings.replace(no_such=1)
    with pytest.raises(InvalidSetting, match="^memory_limit_mb: must be 0"):
        settings.replace(memory_limit_mb=8)


def test_a_bad_setting_is_one_line_on_the_command_line_not_a_traceback(clean_env, monkeypatch):
    from click.testing import CliRunner

    from tui.cli import main

    monkeypatch.setenv("TASKMAN_DEFAULT_TIMEOUT", "-1")
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 2
    assert result.output == "error: TASKMAN_DEFAULT_TIMEOUT: must be greater than 0, not '-1'\n"
