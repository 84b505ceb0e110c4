"""Snapshots of the workers view at 80x24 and 200x50.

The data is fixed: a namespace of its own holding three workers' reports and heartbeats (one silent,
one with a wall down), messages waiting and unacknowledged in two queues, and Redis's clock pinned for
the overview, so "3 s ago" reads the same every time. Each picture is taken once the first read is on
screen (waited for, never slept for). Update them with ``pytest --snapshot-update``.
"""

from __future__ import annotations

import json
import uuid

import pytest
from textual.widgets import DataTable

from core.service import Service
from tests.tui.test_console import until
from tests.tui.test_snapshots import LABEL, T0, finished, pinned_clock, steady  # noqa: F401  (a fixture)
from tui.app import TaskmanApp
from tui.screens.workers import WorkersScreen

WALLS_UP = {"fresh_process": True, "clean_env": True, "user": True, "no_new_privs": True, "rlimits": True,
            "landlock": True, "seccomp": True, "netns": True}


@pytest.fixture
def workers_namespace(settings, redis_server):
    """Three workers as they report themselves, two queues with messages; Redis's clock pinned at T0."""
    service = Service.from_settings(settings.replace(namespace=f"snapw{uuid.uuid4().hex[:6]}"))
    store = service.store
    names = ["ops.add", "ops.fail", "taskman.echo", "taskman.prune_history", "taskman.sleep"]
    reports = {
        "code@box-1": (["code", "registered"], {"up": WALLS_UP, "why": {}, "missing": [], "accept_weak": False}),
        "http@box-1": (["http"], None),
        "code@box-2": (["code", "registered"], {"up": {**WALLS_UP, "landlock": False},
                                                "why": {"landlock": "ENOSYS"}, "missing": ["landlock"],
                                                "accept_weak": False}),
    }
    for node, (queues, isolation) in reports.items():
        store.record_registered(names, node, queues, isolation)
    beats = {"code@box-1": (3, "prefork", 4, 2, 1532), "http@box-1": (1, "threads", 8, 0, 20411),
             "code@box-2": (45, "prefork", 2, 0, 17)}
    for node, (age, pool, concurrency, active, processed) in beats.items():
        store.heartbeat(node, when=T0 - age, stats={"host": node.split("@")[1], "pid": 4242, "pool": pool,
                                                    "concurrency": concurrency, "active": active,
                                                    "processed": processed})
    store.redis.rpush(store.keys.celery_queue("code"), *["{}"] * 3)
    store.redis.rpush(store.keys.celery_queue("registered"), "{}")
    for index in range(2):
        store.redis.hset(store.keys.celery_unacked, f"tag{index}", json.dumps([{"body": "x"}, "", "code"]))
    store.server_time = lambda: T0  # type: ignore[method-assign]
    yield service
    keys = store.redis.keys(f"{store.keys.namespace}:*")
    if keys:
        store.redis.delete(*keys)


async def _workers_shown(pilot) -> None:
    await pilot.press("w")
    screen = await until(pilot, lambda: isinstance(pilot.app.screen, WorkersScreen) and pilot.app.screen)
    table = screen.query_one("#workers", DataTable)
    await until(pilot, lambda: table.row_count == 3 and finished(pilot, "workers-read"), message="the workers")
    await steady(pilot)


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_workers_view(snap_compare, workers_namespace, size):
    assert snap_compare(TaskmanApp(workers_namespace, redis_label=LABEL), terminal_size=size,
                        run_before=_workers_shown)
