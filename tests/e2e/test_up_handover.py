"""A second ``taskman up`` on the same data folder takes the stack over when the first one goes.

The tester's case: the tmux session running ``taskman up`` is killed and a new ``up`` starts while the first is
still shutting down; it joins the first one's stack, which then goes. Here ``up`` #1 serves a run, ``up`` #2
joins it, and #1 is stopped (SIGTERM: it stops its workers and its Redis) or killed outright (SIGKILL, with its
Redis, or alone: its Redis outlives it). #2 must end up running the stack: a Redis that answers on the same
address with what was written before, and a worker that runs a task submitted after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from core.config import Settings
from core.embedded import server_alive
from core.errors import NoRedis
from core.service import Service
from tests.conftest import ROOT, _process_env, wait_for
from tests.e2e.test_processes import TASKMAN, alive, stop, taskman


def address(data: Path) -> dict:
    try:
        return json.loads((data / "redis.json").read_text())
    except (FileNotFoundError, ValueError):  # not there (yet, or any more), or being rewritten
        return {}


def children(pid: int) -> list[int]:
    return [int(child) for child in
            subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]


def submit(env, name: str, result: str) -> str:
    """A code task run at once, submitted with the command line (which finds Redis through the address file)."""
    done = taskman(env, "submit", "-", "--json", input_text=json.dumps(
        {"name": name, "function_code": f"def f():\n    return {result!r}", "function_name": "f"}))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["id"]


def final_run(service, task_id: str, timeout: float = 30):
    """The task's run once it has ended, read by a client opened before the hand-over (it must reconnect)."""
    def ended():
        try:
            runs = service.get(task_id, runs=1).runs
        except NoRedis:  # the Redis is being replaced
            return None
        return runs and runs[0].state.value not in ("queued", "running") and runs[0]

    return wait_for(ended, timeout, message=f"a run of {task_id} to end")


@pytest.mark.parametrize("how", ["sigterm", "sigkill", "sigkill-up-only"])
def test_a_second_up_takes_the_stack_over_when_the_first_goes(tmp_path, how):
    data = tmp_path / "data"
    env = _process_env({"TASKMAN_DATA_DIR": str(data), "TASKMAN_NAMESPACE": "handover",
                        "TASKMAN_SCHEDULER_INTERVAL": "0.05"})
    env.pop("TASKMAN_REDIS_URL", None)
    started: list[subprocess.Popen] = []
    redis_pids: set[int] = set()

    def up(name: str) -> subprocess.Popen:
        with open(tmp_path / f"{name}.log", "wb") as log:
            child = subprocess.Popen([*TASKMAN, "up", "--no-console"], cwd=ROOT, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        started.append(child)
        return child

    try:
        first = up("up1")
        wait_for(lambda: address(data).get("owner") == first.pid, timeout=30, message="up #1 to start its Redis")
        old_redis, url = address(data)["pid"], address(data)["url"]
        redis_pids.add(old_redis)
        service = Service.from_settings(Settings(redis_url=url, namespace="handover", data_dir=str(data)))
        before = submit(env, "before", "served by up #1")
        assert final_run(service, before).result == "served by up #1"

        second = up("up2")
        wait_for(lambda: f"run by the `taskman up` with pid {first.pid}" in (tmp_path / "up2.log").read_text(),
                 timeout=30, message="up #2 to join up #1's stack")

        if how == "sigterm":
            os.kill(first.pid, signal.SIGTERM)
            assert first.wait(30) == 0
            assert not alive(old_redis)
        else:
            doomed = [first.pid] + ([old_redis, *children(first.pid)] if how == "sigkill" else [])
            for pid in doomed:
                os.kill(pid, signal.SIGKILL)
            first.wait(10)

        def taken_over():
            now = address(data)
            return now.get("owner") == second.pid and alive(now.get("pid", 0)) and now

        now = wait_for(taken_over, timeout=20, message="up #2 to take the stack over")
        redis_pids.add(now["pid"])
        assert now["url"] == url  # same port and password: clients of up #1's Redis carry on
        if how == "sigkill-up-only":
            assert now["pid"] == old_redis  # the Redis that outlived up #1 is adopted, not replaced
        else:
            assert now["pid"] != old_redis
        assert final_run(service, before).result == "served by up #1"  # written before the hand-over
        after = submit(env, "after", "served by up #2")
        assert final_run(service, after).result == "served by up #2"  # a worker of up #2 ran it
        said = (tmp_path / "up2.log").read_text()
        assert "this one takes the stack over" in said and "took the stack over" in said

        assert stop(second, signal.SIGTERM) == 0
        assert not address(data)
        assert not any(alive(pid) for pid in redis_pids)
    finally:
        for child in started:
            stop(child, signal.SIGKILL)
        redis_pids.add(address(data).get("pid", 0))  # one started after the last look, if any
        for pid in redis_pids:  # only the servers these `up`s started in this folder, by pid
            if server_alive(pid, data / "redis"):
                os.kill(pid, signal.SIGKILL)
