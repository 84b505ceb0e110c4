"""``taskman workers`` and ``Service.workers``: the workers and queues overview from what real workers report."""

from __future__ import annotations

import re
import time

import pytest

from tests.conftest import IDLE_RUN, wait_for
from tests.e2e.test_cli import Cli

pytestmark = pytest.mark.usefixtures("stack")
FAR_CRON = "0 0 1 1 *"


@pytest.fixture(scope="module")
def cli(taskman_env) -> Cli:
    return Cli(taskman_env)


def by_prefix(view, prefix: str):
    return next(worker for worker in view.workers if worker.name.startswith(prefix))


def test_the_overview_shows_each_worker_s_pool_numbers_heartbeat_and_walls(stack):
    view = wait_for(lambda: (v := stack.workers()) and all(w.pool != "?" for w in v.workers) and v,
                    message="both workers to report their pool")
    code, http = by_prefix(view, "code@"), by_prefix(view, "http@")
    assert (code.pool, code.concurrency, http.pool, http.concurrency) == ("prefork", 2, "threads", 8)
    assert code.prefetch == http.prefetch == 1, "these workers take taskman's Celery default: one ahead each"
    assert code.alive and http.alive and code.beat_age is not None and code.beat_age < 5
    assert code.host and code.pid and code.queues == ["code", "registered"] and http.queues == ["http"]
    assert code.walls is not None and all(code.walls.values()) and code.walls_summary().startswith("all ")
    assert http.walls is None and http.walls_summary() == "no code runs"
    assert {"code", "http", "registered"} <= {queue.name for queue in view.queues}
    assert {"ops.add", "taskman.echo"} <= set(view.tasks)
    assert abs(view.at - time.time()) < 5, "the overview is stamped with Redis's clock"


def test_a_running_run_counts_as_active_and_unacked_on_its_queue_then_as_processed(stack):
    before = by_prefix(stack.workers(), "code@").processed or 0
    task = stack.create({"name": f"busy-{time.time_ns() % 10**9}", "cron_expression": FAR_CRON, "timeout": 60,
                         "function_name": "f", "function_code": f"def f():\n    {IDLE_RUN}"})
    stack.run_now(task.id)
    view = wait_for(lambda: (v := stack.workers()) and (by_prefix(v, "code@").active or 0) >= 1 and v,
                    message="the code worker to say it runs something")
    code_queue = next(queue for queue in view.queues if queue.name == "code")
    assert code_queue.unacked is not None and code_queue.unacked >= 1, view.queues
    assert view.unacked >= 1 and code_queue.consumers == 1
    stack.stop(task.id)
    wait_for(lambda: (by_prefix(stack.workers(), "code@").processed or 0) > before, message="processed to count it")


def test_taskman_workers_prints_workers_queues_and_registered_names(cli, stack):
    wait_for(lambda: all(w.pool != "?" for w in stack.workers().workers), message="the workers' pools")
    out = cli.ok("workers").stdout
    lines = out.splitlines()
    assert lines[0].split() == ["WORKER", "POOL", "CONC", "AHEAD", "ACTIVE", "PROCESSED", "HEARTBEAT", "WALLS"]
    code = next(line for line in lines if line.startswith("code@"))
    assert " prefork " in code and "all " in code and " up" in code, code
    assert re.search(r"  (just now|\d+ s ago)  ", code), f"no heartbeat age in {code!r}"
    http = next(line for line in lines if line.startswith("http@"))
    assert " threads " in http and "no code runs" in http, http
    assert any(line.split()[:1] == ["registered"] for line in lines), out
    assert "ops.add" in out.splitlines()[-1]
    data = cli.json("workers")
    assert {worker["pool"] for worker in data["workers"]} >= {"prefork", "threads"}
    assert {"workers", "queues", "unacked", "registered_tasks", "at"} <= set(data)
    assert all(worker["last_beat"].endswith("+00:00") for worker in data["workers"])
