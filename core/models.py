"""Task and run records and the states they move through: plain data, no validation.

``Task`` and ``Run`` are the stored records as front ends see them; their ``to_dict`` is the JSON shape
of ``--json`` and the API. A task holds its spec as stored, and validates it (``core.spec.TaskSpec``)
only when something asks for ``Task.spec``: listing tasks, their names, kinds and modes, needs no
pydantic, which is most of what a ``taskman list`` or the console's first page would otherwise load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from core import redact

if TYPE_CHECKING:
    from core.spec import TaskSpec

CODE_TASK = "taskman.code"
HTTP_TASK = "taskman.http"
INTERNAL_TASKS = frozenset({CODE_TASK, HTTP_TASK})
"""taskman's own Celery tasks: they run a stored code or API task by id, so naming one as a registered
task would run any task (an admin's code task, say) on behalf of whoever may create registered ones."""
CODE_QUEUE = "code"
HTTP_QUEUE = "http"
REGISTERED_QUEUE = "registered"
BROKER_KEYS = frozenset({"unacked", "unacked_index", "unacked_mutex"})
"""Keys kombu's Redis transport keeps beside the queues (under the same prefix): a queue of that name
would push onto a hash and take every worker down with WRONGTYPE."""


QUEUE_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,100}$"
"""What a queue's name may be (a registered task's spec ``queue``, ``taskman worker --queue``)."""


def queue_refusal(queue: str) -> str | None:
    """Why ``queue`` may never carry a registered task, or None. The static half of the rule; the
    service adds the dynamic half (only queues the workers serve)."""
    lowered = queue.lower()
    if lowered in BROKER_KEYS or lowered.startswith(("_", "unacked")):
        return f"{queue!r} is one of the broker's own keys, not a queue"
    if any(part in lowered for part in ("pidbox", "celeryev", "kombu", "binding")) or lowered.startswith("reply."):
        return f"{queue!r} is reserved for Celery's and kombu's internals"
    if lowered in (CODE_QUEUE, HTTP_QUEUE):
        return (f"{queue!r} is taskman's own queue for {lowered} tasks; registered tasks run on "
                f"{REGISTERED_QUEUE!r} or a queue of your own that a worker serves")
    return None


def internal_task_refusal(task_name: str) -> str | None:
    """Why ``task_name`` may never be a registered task (taskman's or Celery's own), or None."""
    if task_name in INTERNAL_TASKS or task_name.lower().startswith(("taskman.code", "taskman.http", "celery.")):
        return f"{task_name!r} is internal to taskman or Celery and cannot be run as a registered task"
    return None


class Kind(StrEnum):
    """What a task runs."""

    CODE = "code"
    API = "api"
    REGISTERED = "registered"


class Mode(StrEnum):
    """When a task runs; the seed calls this ``task_type``."""

    IMMEDIATE = "immediate"
    DELAYED = "delayed"
    SCHEDULED = "scheduled"


class TaskState(StrEnum):
    """A task definition's state: active (will fire), paused (will not), done (a one-shot that ran)."""

    ACTIVE = "active"
    PAUSED = "paused"
    DONE = "done"


class RunState(StrEnum):
    """A run's state. ``retrying`` marks an attempt that failed and was followed by another."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    STOPPED = "stopped"
    RETRYING = "retrying"

    @property
    def final(self) -> bool:
        return self not in (RunState.QUEUED, RunState.RUNNING)


@dataclass
class Run:
    """One attempt at running a task, as stored."""

    id: str
    task_id: str
    state: RunState
    attempt: int = 1
    max_attempts: int = 1
    trigger: str = "now"
    queued_at: float | None = None
    scheduled_for: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    duration_ms: float | None = None
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    output: str = ""
    worker: str | None = None
    series: str | None = None
    overrides: dict[str, Any] | None = None
    """What this run was given instead of its task's arguments or request body (``check_overrides``)."""

    def to_dict(self) -> dict[str, Any]:
        """The run as front ends show it; secret-named fields of its overrides masked (``core.redact``)."""
        return {
            "id": self.id,
            "task_id": self.task_id,
            "state": self.state.value,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "trigger": self.trigger,
            "queued_at": iso(self.queued_at),
            "scheduled_for": iso(self.scheduled_for),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "duration_ms": self.duration_ms,
            "result": self.result,
            "error": self.error,
            "traceback": self.traceback,
            "output": self.output,
            "worker": self.worker,
            "series": self.series,
            "overrides": ({key: redact.mask_fields(value) if key != "args" else value
                           for key, value in self.overrides.items()} if self.overrides else None),
        }


@dataclass
class Task:
    """A stored task definition with its runtime state and (when asked for) its recent runs."""

    id: str
    stored_spec: dict[str, Any]
    """The spec as stored (``TaskSpec.to_dict``): its name, kind and mode are read from it as they are,
    and ``spec`` validates it only when asked for."""
    state: TaskState
    created_at: float
    updated_at: float
    next_run_at: float | None = None
    last_run_id: str | None = None
    last_run_state: str | None = None
    last_duration_ms: float | None = None
    last_started_at: float | None = None
    """When the latest run started: stored when it ends; while it runs ``Service`` fills it in."""
    recent_runs: int = 0
    """How many of the task's latest finished runs (succeeded, failed or timed out; at most
    ``core.store.RECENT_OUTCOMES``) ``recent_ok`` and ``recent_p95_ms`` are taken over."""
    recent_ok: int = 0
    """How many of those succeeded."""
    recent_p95_ms: float | None = None
    """Their 95th percentile duration (nearest rank), in ms."""
    runs: list[Run] = field(default_factory=list)
    _spec: TaskSpec | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_spec(cls, spec: TaskSpec, **fields: Any) -> Task:
        """A task with ``spec``, validated already (a new task); ``fields`` are the others."""
        task = cls(stored_spec=spec.to_dict(), **fields)
        task._spec = spec
        return task

    @property
    def spec(self) -> TaskSpec:
        """The spec, validated (once, on first use) from what is stored: it was checked in full when written."""
        if self._spec is None:
            from core.spec import TaskSpec

            self._spec = TaskSpec.model_validate(self.stored_spec, context={"stored": True})
        return self._spec

    @spec.setter
    def spec(self, spec: TaskSpec) -> None:
        self._spec, self.stored_spec = spec, spec.to_dict()

    @property
    def name(self) -> str:
        return self.stored_spec["name"]

    @property
    def kind(self) -> Kind:
        return Kind(self.stored_spec["kind"])

    @property
    def mode(self) -> Mode:
        return Mode(self.stored_spec["task_type"])

    def to_dict(self) -> dict[str, Any]:
        """The task as front ends show it: secrets masked (``core.redact``: headers, URL query, params,
        body fields at any depth, a registered task's kwargs). Only ``Service.export`` returns them."""
        spec = redact.mask_spec(self.stored_spec)
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind.value,
            "mode": self.mode.value,
            "state": self.state.value,
            "next_run_at": iso(self.next_run_at),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "last_run": (
                {"id": self.last_run_id, "state": self.last_run_state, "duration_ms": self.last_duration_ms,
                 "started_at": iso(self.last_started_at)}
                if self.last_run_id
                else None
            ),
            "spec": spec,
            "runs": [run.to_dict() for run in self.runs],
        }


def iso(timestamp: float | None) -> str | None:
    """A Unix timestamp as ISO 8601 in UTC with its offset, or None."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="milliseconds")
