"""Settings, from the environment (``TASKMAN_*``) and an optional TOML file; the environment wins.

One ``Settings`` object is built at the edge (command line, worker, scheduler) and passed in; code
deeper down never reads the environment itself. The TOML file is ``$TASKMAN_CONFIG`` or
``~/.config/taskman/taskman.toml``; its keys are the field names below.
"""

from __future__ import annotations

import os
from pathlib import Path

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource


def _config_file() -> Path:
    explicit = os.environ.get("TASKMAN_CONFIG")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "taskman" / "taskman.toml"


def default_data_dir() -> Path:
    """Where the embedded Redis keeps its append-only file and where ``up`` leaves its address."""
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "taskman"


class Settings(BaseSettings):
    """Everything taskman can be told; each field is also ``TASKMAN_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="TASKMAN_", extra="ignore")

    redis_url: str | None = None
    """Redis to use. Unset: the one ``taskman up`` started (found through ``data_dir``)."""
    namespace: str = "taskman"
    """Prefix of every Redis key, Celery's queues included, so several installs share one Redis."""
    data_dir: Path = Field(default_factory=default_data_dir)
    """Folder for the embedded Redis (its AOF) and the file that tells other commands its address."""
    http_allow: Annotated[list[str], NoDecode] = []
    """Hosts or CIDRs that API tasks may reach despite the SSRF guard (comma-separated in env)."""
    imports: Annotated[list[str], NoDecode] = []
    """Modules the worker imports so their Celery tasks become registered tasks."""

    default_timeout: float = 60.0
    """Seconds a run may take when its spec names no timeout."""
    max_timeout: float = 3600.0
    """Upper bound on any task's timeout; specs asking for more are refused."""
    kill_grace: float = 3.0
    """Seconds between the soft time limit and the hard kill of a code run."""
    redelivery_margin: float = 60.0
    """Seconds past the hard time limit after which an unacknowledged run (its worker died) is redelivered."""
    output_cap: int = 64 * 1024
    """Bytes of captured print() output kept per run; the rest is cut with a marker."""
    result_cap: int = 256 * 1024
    """Bytes of a run's JSON result kept; larger results fail the run."""
    memory_limit_mb: int = 512
    """Address-space limit for a code run's process, in MiB (0 disables)."""
    http_body_cap: int = 256 * 1024
    """Bytes of an API task's response body kept in the run record."""
    max_retries_cap: int = 20
    """Upper bound on a task's ``max_retries``."""

    history_per_task: int = 200
    """Run records kept per task (older ones are trimmed)."""
    run_ttl_days: float = 14.0
    """Days a finished run record is kept."""
    events_maxlen: int = 10_000
    """Approximate length cap of the events stream."""
    logs_maxlen: int = 50_000
    """Approximate length cap of the log stream."""

    scheduler_interval: float = 0.25
    """Longest sleep of the scheduler between looks at the due set, in seconds."""
    scheduler_lock_ttl: float = 10.0
    """Seconds the scheduler's lock lives unless its owner extends it."""
    claim_lease: float = 60.0
    """Seconds a claimed due entry stays hidden; a scheduler that dies mid-send is retried after it."""

    @field_validator("http_allow", "imports", mode="before")
    @classmethod
    def _split_commas(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=_config_file()))
