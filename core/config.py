"""Settings, from the environment (``TASKMAN_*``) and an optional TOML file; the environment wins.

One ``Settings`` object is built at the edge (command line, worker, scheduler) and passed in; code
deeper down never reads the environment itself. The TOML file is ``$TASKMAN_CONFIG`` or
``~/.config/taskman/taskman.toml``; its keys are the field names below.

``Settings`` is a plain pydantic model that reads the two sources itself (``TASKMAN_<FIELD>``, any case, over
the file; keyword arguments over both), as pydantic-settings did for it: that package and what it loads
(dotenv, argparse, its providers) cost every ``taskman`` command about a tenth of a bare Python's start.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.allowed_imports import SANDBOX_IMPORTS

MIN_MEMORY_LIMIT_MB = 32
"""Smallest memory limit of a code run: below it the interpreter's own stack growth can fail (SIGSEGV)."""


def _config_file() -> Path:
    explicit = os.environ.get("TASKMAN_CONFIG")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "taskman" / "taskman.toml"


def default_data_dir() -> Path:
    """Where the embedded Redis keeps its append-only file and where ``up`` leaves its address."""
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "taskman"


ENV_PREFIX = "TASKMAN_"


def _from_environment(fields: Any) -> dict[str, str]:
    """The ``TASKMAN_<FIELD>`` variables (any case) that name one of ``fields``, by field name."""
    found: dict[str, str] = {}
    for name, value in os.environ.items():
        if name[:len(ENV_PREFIX)].upper() == ENV_PREFIX and (field := name[len(ENV_PREFIX):].lower()) in fields:
            found[field] = value
    return found


def _from_file(path: Path) -> dict[str, Any]:
    """The TOML file's keys and values; nothing when there is no such file."""
    try:
        text = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return {}
    import tomllib

    return tomllib.loads(text.decode("utf-8"))


class Settings(BaseModel):
    """Everything taskman can be told; each field is also ``TASKMAN_<FIELD>`` in the environment."""

    model_config = ConfigDict(extra="ignore", validate_default=True)

    def __init__(self, **values: Any) -> None:
        """The TOML file's values, the environment's over them, ``values`` over both; then validated."""
        fields = type(self).model_fields
        super().__init__(**{**_from_file(_config_file()), **_from_environment(fields), **values})

    redis_url: str | None = None
    """Redis to use. Unset: the one ``taskman up`` started (found through ``data_dir``)."""
    namespace: str = "taskman"
    """Prefix of every Redis key, Celery's queues included, so several installs share one Redis."""
    data_dir: Path = Field(default_factory=default_data_dir)
    """Folder for the embedded Redis (its AOF) and the file that tells other commands its address."""
    http_allow: list[str] = []
    """Hosts or CIDRs that API tasks may reach despite the SSRF guard (comma-separated in env)."""
    imports: list[str] = []
    """Modules the worker imports so their Celery tasks become registered tasks."""

    default_timeout: float = Field(60.0, gt=0)
    """Seconds a run may take when its spec names no timeout."""
    max_timeout: float = Field(3600.0, gt=0)
    """Upper bound on any task's timeout; specs asking for more are refused."""
    kill_grace: float = 3.0
    """Seconds between the soft time limit and the hard kill of a code run."""
    redelivery_margin: float = 60.0
    """Seconds past the hard time limit after which an unacknowledged run (its worker died) is redelivered."""
    output_cap: int = Field(64 * 1024, ge=0)
    """Bytes of print() output a code run may produce when its spec sets no ``output_cap``; more fails it."""
    max_output_cap: int = Field(1024 * 1024, ge=0)
    """Upper bound on a code task's ``output_cap``; specs asking for more are refused."""
    result_cap: int = Field(256 * 1024, ge=0)
    """Bytes of JSON result a code run may return when its spec sets no ``result_cap``; more fails it."""
    max_result_cap: int = Field(1024 * 1024, ge=0)
    """Upper bound on a code task's ``result_cap``; specs asking for more are refused."""
    memory_limit_mb: int = Field(512, ge=0)
    """MiB of address space a code run may add to its process when its spec sets no ``memory_limit_mb``
    (0 disables; otherwise at least 32, room the interpreter's own stack growth needs)."""
    max_memory_limit_mb: int = Field(4096, ge=MIN_MEMORY_LIMIT_MB)
    """Upper bound on a code task's ``memory_limit_mb``; specs asking for more are refused."""
    recursion_limit: int = Field(1000, ge=1)
    """Nested calls a code run may make when its spec sets no ``recursion_limit``."""
    max_recursion_limit: int = Field(1000, ge=1)
    """Upper bound on a code task's ``recursion_limit`` (the worker also lowers it to what its C stack holds)."""
    sandbox_imports: list[str] = list(SANDBOX_IMPORTS)
    """Modules code tasks may import (comma-separated in env); each is handed over as a proxy of its
    public functions, classes and constants. ``a.b`` allows the submodule only. Every name added here
    widens the sandbox: never list modules that reach the OS (os, sys, subprocess, io, operator ...)."""
    jail_uid: int = Field(64_999, ge=1)
    """uid and gid code runs take when the worker runs as root (no account needs to exist for it)."""
    jail_accept_weak: bool = False
    """Run code even where an isolation wall cannot be raised (no Landlock, no seccomp, ...). Off: such
    runs are refused with an error naming the missing walls."""
    http_body_cap: int = 256 * 1024
    """Bytes of an API task's response body kept in the run record."""
    http_memory_limit_mb: int = Field(1024, ge=0)
    """MiB of data memory (heap, anonymous mappings, thread stacks: RLIMIT_DATA) a threads-pool http worker
    may hold, applied by ``core.http.limit_memory`` when the worker starts (0: no limit); it uses about 150
    with 8 threads, and a decompression bomb or runaway answer then fails with MemoryError instead."""
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
    log_lines_cap: int = Field(2_000, ge=2)
    """Log lines one run may add to the log stream: past them its first lines are kept, one line says how
    many were dropped, and the run keeps its result (so one run cannot push out everyone else's lines)."""

    scheduler_interval: float = 0.25
    """Longest sleep of the scheduler between looks at the due set, in seconds."""
    scheduler_lock_ttl: float = 10.0
    """Seconds the scheduler's lock lives unless its owner extends it."""
    claim_lease: float = 60.0
    """Seconds a claimed due entry stays hidden; a scheduler that dies mid-send is retried after it."""

    audit_retention_days: float = Field(90.0, gt=0)
    """Days the audit stream (who changed what, from which front end) keeps an entry; it is trimmed by
    time only, so no rate of changes can push out an entry younger than this."""
    audit_maxlen: int = Field(10_000_000, ge=1)
    """Most audit entries held within the retention window. It is never trimmed by length: at this many,
    the REST API refuses changes (503) until entries age out, rather than erase younger ones."""
    api_rate_per_minute: int = Field(600, ge=1)
    """Changes one API token may make per minute (a batch create counts each task; bursts up to a
    minute's worth). Shared by every API process through Redis; more get 429 with ``Retry-After``."""
    celery_events: bool = False
    """Send Celery's task events (for Flower and ``celery events``). Off, as in Celery: taskman's own
    events stream feeds its console, and workers mark themselves alive without them."""
    dead_worker_grace: float = Field(30.0, gt=0)
    """Seconds a worker may stay silent (no heartbeat) before its running runs are handed to another worker."""
    heartbeat_ttl: float = 10.0
    """Seconds after a worker's last heartbeat that it still counts as alive (workers beat every 2 s)."""
    api_max_body: int = 2 * 1024 * 1024
    """Largest request body the REST API reads, in bytes; bigger ones get 413."""
    api_max_streams: int = 64
    """Log streams (``GET /api/logs``) one API process serves at once; more get 503."""

    @field_validator("http_allow", "imports", "sandbox_imports", mode="before")
    @classmethod
    def _split_commas(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _defaults_within_bounds(self) -> Settings:
        # (default_timeout may exceed max_timeout: runs are then simply given max_timeout.)
        for default, bound in (("output_cap", "max_output_cap"),
                               ("result_cap", "max_result_cap"), ("memory_limit_mb", "max_memory_limit_mb"),
                               ("recursion_limit", "max_recursion_limit")):
            if getattr(self, default) > getattr(self, bound):
                raise ValueError(f"{default} ({getattr(self, default):g}) must not exceed {bound} "
                                 f"({getattr(self, bound):g})")
        if 0 < self.memory_limit_mb < MIN_MEMORY_LIMIT_MB:
            raise ValueError(f"memory_limit_mb must be 0 (no limit) or at least {MIN_MEMORY_LIMIT_MB}")
        return self

    def task_limit_bounds(self) -> dict[str, float]:
        """The upper bound of each limit a task's spec may set for itself."""
        return {"timeout": self.max_timeout, "max_retries": self.max_retries_cap,
                "memory_limit_mb": self.max_memory_limit_mb, "output_cap": self.max_output_cap,
                "result_cap": self.max_result_cap, "recursion_limit": self.max_recursion_limit}
