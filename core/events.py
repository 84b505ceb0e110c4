"""Reading the events and log streams: what front ends tail instead of rescanning keys.

Writers append through ``core.store`` (in the same pipeline as the state change they report);
readers here get the recent past and then block on XREAD for what comes next.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from enum import StrEnum

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


def follow(store: Store, stream: str, last_id: str = "$",
           should_stop: Callable[[], bool] = lambda: False) -> Iterator[tuple[str, dict]]:
    """Entries of ``events`` or ``logs`` newer than ``last_id``, as they arrive, until ``should_stop()``."""
    while not should_stop():
        for entry_id, entry in store.read_stream(stream, last_id, BLOCK_MS):
            last_id = entry_id
            yield entry_id, entry


def follow_logs(store: Store, task_id: str | None, last_id: str = "$",
                should_stop: Callable[[], bool] = lambda: False) -> Iterator[tuple[str, dict]]:
    """New log entries (of one task if given) as they arrive."""
    for entry_id, entry in follow(store, "logs", last_id, should_stop):
        if task_id is None or entry.get("task") == task_id:
            yield entry_id, entry


def follow_events(store: Store, last_id: str = "$",
                  should_stop: Callable[[], bool] = lambda: False) -> Iterator[tuple[str, dict]]:
    """New events, decoded, as they arrive."""
    for entry_id, entry in follow(store, "events", last_id, should_stop):
        yield entry_id, json.loads(entry["event"])
