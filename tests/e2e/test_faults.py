"""Faults: a worker killed mid-run, its message redelivered by the broker (schedulers: tests/faults).

These run in a namespace of their own with short limits (a redelivery window of a few seconds,
a scheduler lock of two), so killing processes here never disturbs the session's stack.
"""

from __future__ import annotations

import signal
import uuid

import pytest

from core.config import Settings
from core.models import RunState
from tests.conftest import Processes, _process_env, wait_for

WORKER = ("worker", "-Q", "code,registered", "-P", "prefork", "-c", "1", "-n", "faults@%h", "-l", "INFO",
          "--without-mingle", "--without-gossip")


@pytest.fixture
def faulty(taskman_env, tmp_path):
    """A namespace with its own processes and short fault windows; yields (service, processes)."""
    from core.service import Service

    env = {**taskman_env, "TASKMAN_NAMESPACE": f"faults{uuid.uuid4().hex[:6]}", "TASKMAN_MAX_TIMEOUT": "8",
           "TASKMAN_KILL_GRACE": "1", "TASKMAN_REDELIVERY_MARGIN": "1", "TASKMAN_SCHEDULER_LOCK_TTL": "2"}
    procs = Processes(_process_env(env), tmp_path)
    values = {key.removeprefix("TASKMAN_").lower(): value for key, value in env.items()}
    service = Service.from_settings(Settings(**values))
    yield service, procs
    procs.stop_all()


def test_a_worker_killed_mid_run_does_not_lose_the_run(faulty):
    service, procs = faulty
    first = procs.start("worker-1", *WORKER)
    wait_for(lambda: service.registered_tasks(), timeout=60, message="the worker to be ready")
    code = ("import datetime\n"
            "def slow():\n"
            "    end = datetime.datetime.now() + datetime.timedelta(seconds=2)\n"
            "    while datetime.datetime.now() < end:\n"
            "        pass\n"
            "    return 'survived'\n")
    task = service.create({"name": "survivor", "function_code": code, "function_name": "slow", "timeout": 6})
    wait_for(lambda: service.get(task.id).runs[0].state is RunState.RUNNING, timeout=20, message="the run to start")
    procs.stop(first, signal.SIGKILL)
    assert service.get(task.id).runs[0].state is RunState.RUNNING
    procs.start("worker-2", *WORKER)
    run = wait_for(lambda: (r := service.get(task.id).runs[0]).state.final and r, timeout=60,
                   message="the run to be redelivered and finish")
    assert run.state is RunState.SUCCEEDED
    assert run.result == "survived"
    assert len(service.get(task.id).runs) == 1
    logs = [entry["msg"] for _, entry in service.store.stream_tail("logs", 200) if entry["task"] == task.id]
    assert any("redelivered" in line for line in logs)

