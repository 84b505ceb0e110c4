"""Reading the events and log streams: what front ends tail instead of rescanning keys.

Writers append through ``core.store`` (in the same pipeline as the state change they report);
readers here get the recent past and then block on XREAD for what comes next. Each read returns a
:class:`Batch`, everything one XREAD brought and the cursor to read on from, so a reader hands its
front end one message per batch rather than one per entry. Front ends read through ``core.service``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import StrEnum
from typing import Any, NamedTuple

from core.store import Store

BLOCK_MS = 1000


class EventType(StrEnum):
    """Every ``type`` an events-stream entry can have (members are plain strings on the wire)."""

    TASK_CREATED = "task.created"
    TASK_UPDATED = "task.updated"
    TASK_PAUSED = "task.paused"
    TASK_RESUMED = "task.resumed"
    TASK_STOPPED = "task.stopped"
    TASK_DELETED = "task.deleted"
    RUN_QUEUED = "run.queued"
    RUN_STARTED = "run.started"
    RUN_REQUEUED = "run.requeued"
    RUN_SUCCEEDED = "run.succeeded"
    RUN_FAILED = "run.failed"
    RUN_TIMED_OUT = "run.timed_out"
    RUN_RETRYING = "run.retrying"
    RUN_STOPPED = "run.stopped"

    @classmethod
    def run_ended(cls, state: str) -> EventType:
        """The event of a run that reached ``state`` (a final state, or retrying)."""
        return cls(f"run.{state}")


class Batch(NamedTuple):
    """What one read of a stream brought: its ``(id, entry)`` pairs, oldest first, and the cursor to read on
    from (the last id read; unchanged when nothing came)."""

    entries: list[tuple[str, dict[str, Any]]]
    cursor: str


RUN_ENDINGS = frozenset({EventType.RUN_SUCCEEDED, EventType.RUN_FAILED, EventType.RUN_TIMED_OUT,
                         EventType.RUN_RETRYING, EventType.RUN_STOPPED})


def recent_logs(store: Store, task_id: str | None, count: int) -> list[tuple[str, dict]]:
    """The last ``count`` log entries (of one task if given), oldest first."""
    if count <= 0:
        return []
    if task_id is None:
        return store.stream_tail("logs", count)
    found: list[tuple[str, dict]] = []
    for entry_id, entry in reversed(store.stream_tail("logs", max(count * 20, 2000))):
        if entry.get("task") == task_id:
            found.append((entry_id, entry))
            if len(found) == count:
                break
    return list(reversed(found))


def read(store: Store, stream: str, cursor: str, wait_ms: int | None = BLOCK_MS,
         shape: Callable[[str, dict[str, str]], dict[str, Any] | None] = lambda _, entry: entry) -> Batch:
    """The entries of ``stream`` after ``cursor``, waiting up to ``wait_ms`` for the first one (one XREAD),
    each as ``shape(id, fields)`` makes it (None leaves it out). The cursor moves past every entry read,
    those left out included, so none is read twice."""
    entries = store.read_stream(stream, cursor, wait_ms)
    shaped = ((entry_id, shape(entry_id, fields)) for entry_id, fields in entries)
    return Batch([(entry_id, entry) for entry_id, entry in shaped if entry is not None],
                 entries[-1][0] if entries else cursor)


def read_events(store: Store, cursor: str, wait_ms: int | None = BLOCK_MS) -> Batch:
    """The events after ``cursor``, decoded."""
    return read(store, "events", cursor, wait_ms, lambda _, fields: json.loads(fields["event"]))


def read_logs(store: Store, cursor: str, task_id: str | None = None, wait_ms: int | None = BLOCK_MS) -> Batch:
    """The log entries after ``cursor``, of one task if given."""
    return read(store, "logs", cursor, wait_ms,
                lambda _, entry: entry if task_id is None or entry.get("task") == task_id else None)


def newest_id(store: Store, stream: str) -> str:
    """The id of the newest entry of ``stream`` (``0-0`` while it is empty): reading on from it returns
    only what comes next, without the gap that re-reading ``$`` on every call would leave."""
    tail = store.stream_tail(stream, 1)
    return tail[-1][0] if tail else "0-0"
