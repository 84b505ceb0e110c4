"""Registered tasks shipped with taskman, so a fresh install has useful ones to schedule.

They are plain functions; ``worker.py`` registers them as Celery tasks named ``taskman.<name>``.
"""

from __future__ import annotations

import time
from typing import Any, cast

from core.store import Store

NAMES = ("taskman.echo", "taskman.sleep", "taskman.prune_history")
"""The names ``worker.py`` registers these under: every worker has them, so a registered task may name
one even before any worker has reported what it registered."""


def echo(*args: Any, **kwargs: Any) -> dict:
    """Return the arguments it was given: a smoke test for the registered-task path."""
    return {"args": list(args), "kwargs": kwargs}


def sleep(seconds: float = 1.0) -> float:
    """Sleep ``seconds`` (at most an hour) and return it: for trying stop and timeouts."""
    seconds = max(0.0, min(float(seconds), 3600.0))
    time.sleep(seconds)
    return seconds


def prune_history(store: Store) -> dict:
    """Drop history entries whose run records have expired; returns how many were removed."""
    removed = 0
    for task_id in store.task_ids():
        key = store.keys.task_runs(task_id)
        run_ids = cast(list[str], store.redis.zrange(key, 0, -1))  # decoded: see core.store
        pipe = store.redis.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.exists(store.keys.run(run_id))
        gone = [run_id for run_id, exists in zip(run_ids, pipe.execute(), strict=True) if not exists]
        if gone:
            store.redis.zrem(key, *gone)
            removed += len(gone)
    return {"removed": removed}
