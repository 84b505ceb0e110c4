"""Settings, from the environment (``TASKMAN_*``) and an optional TOML file; the environment wins.

One ``Settings`` object is built at the edge (command line, worker, scheduler) and passed in; code
deeper down never reads the environment itself. The TOML file is ``$TASKMAN_CONFIG`` or
``~/.config/taskman/taskman.toml``; its keys are the field names below.

``Settings`` is a plain dataclass that reads the two sources itself (``TASKMAN_<FIELD>``, any case, over
the file; keyword arguments over both) and checks each value against its field's type and bounds. It
once was a pydantic-settings model, then a pydantic one: building those cost every ``taskman`` command
(``list`` and ``show`` included, which validate nothing else) about a third of a bare Python's start.
A value that does not fit is refused with ``InvalidSetting``, naming where it came from.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Self

from core.allowed_imports import SANDBOX_IMPORTS
from core.errors import InvalidSetting

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
WORKER_LIFE_VARIABLE = "TASKMAN_WORKER_LIFE"
"""Not a setting: the id ``taskman up`` gives one start of a worker it supervises (``worker.LIFE``), so that
it can say which one it saw exit (``Store.end_life``)."""


def _from_environment(names: Any) -> dict[str, tuple[str, str]]:
    """The ``TASKMAN_<FIELD>`` variables (any case) that name one of ``names``: field name -> (value, variable)."""
    found: dict[str, tuple[str, str]] = {}
    for name, value in os.environ.items():
        if name[:len(ENV_PREFIX)].upper() == ENV_PREFIX and (key := name[len(ENV_PREFIX):].lower()) in names:
            found[key] = (value, name)
    return found


def _from_file(path: Path) -> dict[str, Any]:
    """The TOML file's keys and values; nothing when there is no such file."""
    try:
        text = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return {}
    import tomllib

    return tomllib.loads(text.decode("utf-8"))


def _bounded(default: float, *, gt: float | None = None, ge: float | None = None) -> Any:
    """A setting's field with a lower bound (``gt``: above it, ``ge``: at least it)."""
    return field(default=default, metadata={"gt": gt, "ge": ge})


_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


def _coerce(kind: str, value: Any) -> Any:
    """``value`` (from TOML, the environment or a keyword) as a field of type ``kind`` wants it; ValueError
    says what was expected. The environment's strings are parsed, lists are also given comma-separated."""
    if kind in ("str", "str | None"):
        if value is None and kind == "str | None":
            return None
        if isinstance(value, str):
            return value
        raise ValueError("must be text")
    if kind == "Path":
        if isinstance(value, str | Path) and str(value):
            return Path(value)
        raise ValueError("must be a path")
    if kind == "list[str]":
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
            return list(value)
        raise ValueError("must be a list of text (comma-separated in the environment)")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError("must be true or false")
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {value}")
    if kind == "int":
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value.strip())
        raise ValueError("must be a whole number")
    if kind == "float":
        try:
            number = float(value.strip()) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            raise ValueError("must be a number") from None
        if math.isnan(number):
            raise ValueError("must be a number")
        return number
    raise TypeError(f"no rule for settings of type {kind}")


@dataclass(init=False)
class Settings:
    """Everything taskman can be told; each field is also ``TASKMAN_<FIELD>`` in the environment."""

    def __init__(self, **values: Any) -> None:
        """The TOML file's values, the environment's over them, ``values`` over both; each checked, and
        refused with :class:`InvalidSetting` naming the setting and where it came from."""
        path = _config_file()
        given: dict[str, tuple[Any, str]] = {key: (value, f"{key} in {path}")
                                             for key, value in _from_file(path).items()}
        given |= {key: (value, variable) for key, (value, variable) in _from_environment(_NAMES).items()}
        given |= {key: (value, key) for key, value in values.items()}
        for spec in fields(self):
            if spec.name in given:
                value, origin = given[spec.name]
                setattr(self, spec.name, _checked(spec, value, origin))
            else:
                setattr(self, spec.name, spec.default_factory() if callable(spec.default_factory) else spec.default)
        self._defaults_within_bounds()

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` (checked as keyword arguments are), without reading the file or environment."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        by_name = {spec.name: spec for spec in fields(self)}
        for key, value in changes.items():
            if key not in by_name:
                raise InvalidSetting(key, "is not a setting")
            setattr(copy, key, _checked(by_name[key], value, key))
        copy._defaults_within_bounds()
        return copy

    redis_url: str | None = None
    """Redis to use. Unset: the one ``taskman up`` started (found through ``data_dir``)."""
    namespace: str = "taskman"
    """Prefix of every Redis key, Celery's queues included, so several installs share one Redis."""
    data_dir: Path = field(default_factory=default_data_dir)
    """Folder for the embedded Redis (its AOF) and the file that tells other commands its address."""
    http_allow: list[str] = field(default_factory=list)
    """Hosts or CIDRs that API tasks may reach despite the SSRF guard (comma-separated in env)."""
    imports: list[str] = field(default_factory=list)
    """Modules the worker imports so their Celery tasks become registered tasks."""

    default_timeout: float = _bounded(60.0, gt=0)
    """Seconds a run may take when its spec names no timeout."""
    max_timeout: float = _bounded(3600.0, gt=0)
    """Upper bound on any task's timeout; specs asking for more are refused."""
    kill_grace: float = 3.0
    """Seconds between the soft time limit and the hard kill of a code run."""
    redelivery_margin: float = 60.0
    """Seconds past the hard time limit after which an unacknowledged run (its worker died) is redelivered."""
    output_cap: int = _bounded(64 * 1024, ge=0)
    """Bytes of print() output a code run may produce when its spec sets no ``output_cap``; more fails it."""
    max_output_cap: int = _bounded(1024 * 1024, ge=0)
    """Upper bound on a code task's ``output_cap``; specs asking for more are refused."""
    result_cap: int = _bounded(256 * 1024, ge=0)
    """Bytes of JSON result a code run may return when its spec sets no ``result_cap``; more fails it."""
    max_result_cap: int = _bounded(1024 * 1024, ge=0)
    """Upper bound on a code task's ``result_cap``; specs asking for more are refused."""
    memory_limit_mb: int = _bounded(512, ge=0)
    """MiB of address space a code run may add to its process when its spec sets no ``memory_limit_mb``
    (0 disables; otherwise at least 32, room the interpreter's own stack growth needs)."""
    max_memory_limit_mb: int = _bounded(4096, ge=MIN_MEMORY_LIMIT_MB)
    """Upper bound on a code task's ``memory_limit_mb``; specs asking for more are refused."""
    recursion_limit: int = _bounded(1000, ge=1)
    """Nested calls a code run may make when its spec sets no ``recursion_limit``."""
    max_recursion_limit: int = _bounded(1000, ge=1)
    """Upper bound on a code task's ``recursion_limit`` (the worker also lowers it to what its C stack holds)."""
    sandbox_imports: list[str] = field(default_factory=lambda: list(SANDBOX_IMPORTS))
    """Modules code tasks may import (comma-separated in env); each is handed over as a proxy of its
    public functions, classes and constants. ``a.b`` allows the submodule only. Every name added here
    widens the sandbox: never list modules that reach the OS (os, sys, subprocess, io, operator ...)."""
    jail_uid: int = _bounded(64_999, ge=1)
    """uid and gid code runs take when the worker runs as root (no account needs to exist for it)."""
    jail_accept_weak: bool = False
    """Run code even where an isolation wall cannot be raised (no Landlock, no seccomp, ...). Off: such
    runs are refused with an error naming the missing walls."""
    http_body_cap: int = 256 * 1024
    """Bytes of an API task's response body kept in the run record."""
    http_memory_limit_mb: int = _bounded(1024, ge=0)
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
    log_lines_cap: int = _bounded(2_000, ge=2)
    """Log lines one run may add to the log stream: past them its first lines are kept, one line says how
    many were dropped, and the run keeps its result (so one run cannot push out everyone else's lines)."""

    scheduler_interval: float = 0.25
    """Longest sleep of the scheduler between looks at the due set, in seconds."""
    scheduler_lock_ttl: float = 10.0
    """Seconds the scheduler's lock lives unless its owner extends it."""
    claim_lease: float = 60.0
    """Seconds a claimed due entry stays hidden; a scheduler that dies mid-send is retried after it."""

    audit_retention_days: float = _bounded(90.0, gt=0)
    """Days the audit stream (who changed what, from which front end) keeps an entry; it is trimmed by
    time only, so no rate of changes can push out an entry younger than this."""
    audit_maxlen: int = _bounded(10_000_000, ge=1)
    """Most audit entries held within the retention window. It is never trimmed by length: at this many,
    the REST API refuses changes (503) until entries age out, rather than erase younger ones."""
    api_rate_per_minute: int = _bounded(600, ge=1)
    """Changes one API token may make per minute (a batch create counts each task; bursts up to a
    minute's worth). Shared by every API process through Redis; more get 429 with ``Retry-After``."""
    celery_events: bool = False
    """Send Celery's task events (for Flower and ``celery events``). Off, as in Celery: taskman's own
    events stream feeds its console, and workers mark themselves alive without them."""
    prefetch_code: int = _bounded(1, ge=1)
    """Code runs each process of a code worker takes ahead of the one it runs (Celery's prefetch multiplier).
    1: a code run, which may be long, never holds another back that an idle worker could run."""
    prefetch_registered: int = _bounded(4, ge=1)
    """The same for the registered queue's worker: short tasks then never wait for a round trip to Redis
    between two. A run prefetched by a worker that dies is sent again after ``dead_worker_grace``; but one
    prefetched by a worker whose every process runs a long task waits for one of them to end, even if another
    worker is idle. Set it to 1 if your registered tasks are long, or send those to a queue of their own
    (their spec's ``queue``) served by ``taskman worker --queue NAME --prefetch 1``."""
    prefetch_http: int = _bounded(1, ge=1)
    """The same for the http queue's worker, per thread (with 20 threads it holds up to 20 requests ahead)."""
    dead_worker_grace: float = _bounded(30.0, gt=0)
    """Seconds a worker may stay silent (no heartbeat) before its runs, running or prefetched, are handed to
    another worker."""
    heartbeat_ttl: float = 10.0
    """Seconds after a worker's last heartbeat that it still counts as alive (workers beat every 2 s)."""
    api_max_body: int = 2 * 1024 * 1024
    """Largest request body the REST API reads, in bytes; bigger ones get 413."""
    api_max_streams: int = 64
    """Log streams (``GET /api/logs``) one API process serves at once; more get 503."""
    api_threads: int = _bounded(4, ge=1)
    """Threads of one API process that run request bodies (their Redis calls block); more requests wait
    their turn. More threads add no throughput under Python's one lock and make the slowest answers slower
    (measured: 40 threads, p99 86 ms; 4, p99 49 ms). ``/api/health`` has two of its own."""

    def _defaults_within_bounds(self) -> None:
        # (default_timeout may exceed max_timeout: runs are then simply given max_timeout.)
        for default, bound in (("output_cap", "max_output_cap"),
                               ("result_cap", "max_result_cap"), ("memory_limit_mb", "max_memory_limit_mb"),
                               ("recursion_limit", "max_recursion_limit")):
            if getattr(self, default) > getattr(self, bound):
                raise InvalidSetting(default, f"({getattr(self, default):g}) must not exceed {bound} "
                                              f"({getattr(self, bound):g})")
        if 0 < self.memory_limit_mb < MIN_MEMORY_LIMIT_MB:
            raise InvalidSetting("memory_limit_mb", f"must be 0 (no limit) or at least {MIN_MEMORY_LIMIT_MB}")

    def task_limit_bounds(self) -> dict[str, float]:
        """The upper bound of each limit a task's spec may set for itself."""
        return {"timeout": self.max_timeout, "max_retries": self.max_retries_cap,
                "memory_limit_mb": self.max_memory_limit_mb, "output_cap": self.max_output_cap,
                "result_cap": self.max_result_cap, "recursion_limit": self.max_recursion_limit}


def _checked(spec: Any, value: Any, origin: str) -> Any:
    """``value`` for the setting ``spec`` (a dataclass field), or :class:`InvalidSetting` naming ``origin``."""
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    try:
        value = _coerce(str(spec.type), value)
    except ValueError as exc:
        raise InvalidSetting(origin, f"{exc}, not {shown}") from None
    if (gt := spec.metadata.get("gt")) is not None and not value > gt:
        raise InvalidSetting(origin, f"must be greater than {gt}, not {shown}")
    if (ge := spec.metadata.get("ge")) is not None and not value >= ge:
        raise InvalidSetting(origin, f"must be at least {ge}, not {shown}")
    return value


_NAMES = frozenset(spec.name for spec in fields(Settings))
