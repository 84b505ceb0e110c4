"""``taskman up`` supervises: a scheduler, a worker or the embedded Redis that dies is restarted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import ROOT, _process_env, wait_for
from tests.e2e.test_processes import TASKMAN, alive, stop, taskman, wait_done
from tests.faults.conftest import FIGURES


def children_of(pid: int, word: str) -> list[int]:
    found = []
    for line in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
        try:
            if word.encode() in Path(f"/proc/{line}/cmdline").read_bytes():
                found.append(int(line))
        except FileNotFoundError:
            pass
    return found


def redis_pid_in(address: Path) -> int | None:
    try:
        return json.loads(address.read_text())["pid"]
    except (FileNotFoundError, ValueError):  # being rewritten
        return None


@contextmanager
def running_up(tmp_path: Path, namespace: str, **settings: str) -> Iterator[tuple[subprocess.Popen, dict, Path]]:
    """``taskman up --no-console`` on a data folder of its own (``settings``: more ``TASKMAN_<NAME>`` values), once
    its Redis's address is written: (the process, its environment, its log); stopped by SIGINT at the end."""
    env = _process_env({"TASKMAN_DATA_DIR": str(tmp_path / "data"), "TASKMAN_NAMESPACE": namespace,
                        "TASKMAN_SCHEDULER_INTERVAL": "0.05",
                        **{f"TASKMAN_{name.upper()}": value for name, value in settings.items()}})
    log_path = tmp_path / "up.log"
    log = open(log_path, "wb")
    up = subprocess.Popen([*TASKMAN, "up", "--no-console"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
    log.close()
    try:
        wait_for((tmp_path / "data" / "redis.json").exists, timeout=30, message="the address file")
        yield up, env, log_path
    finally:
        assert stop(up, signal.SIGINT) == 0


def submit_once_it_answers(env: dict, spec: dict) -> dict:
    """``taskman submit`` of ``spec``, tried until the stack answers (its Redis may be starting or restarting)."""
    done = wait_for(lambda: (r := taskman(env, "submit", "-", "--json", input_text=json.dumps(spec))).returncode == 0
                    and r, timeout=30, message="a submit to succeed")
    return json.loads(done.stdout)


def test_up_restarts_what_dies_and_says_so(tmp_path):
    with running_up(tmp_path, "sup", scheduler_lock_ttl="2") as (up, env, log_path):
        address = tmp_path / "data" / "redis.json"
        beat = wait_for(lambda: children_of(up.pid, "beat"), timeout=30, message="the scheduler")[0]
        os.kill(beat, signal.SIGKILL)
        wait_for(lambda: [pid for pid in children_of(up.pid, "beat") if pid != beat], timeout=30,
                 message="a new scheduler")
        redis_pid = wait_for(lambda: redis_pid_in(address), timeout=10, message="the Redis pid")
        os.kill(redis_pid, signal.SIGKILL)
        wait_for(lambda: redis_pid_in(address) not in (None, redis_pid), timeout=30,
                 message="the embedded Redis to be restarted")
        created = submit_once_it_answers(env, {"name": "after", "delay_seconds": 1, "function_name": "f",
                                               "function_code": "def f():\n    return 'healed'"})
        assert wait_done(env, created["id"], timeout=90)["result"] == "healed"
        worker = children_of(up.pid, "-Q\x00code\x00")[0]
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: [pid for pid in children_of(up.pid, "-Q\x00code\x00") if pid != worker], timeout=30,
                 message="a new code worker")
        wait_for(lambda: "code runs jailed" in log_path.read_text(), timeout=40, message="the walls line")
    text = log_path.read_text()
    assert "taskman up: code runs jailed: every wall up" in text
    assert "beat exited" in text and "beat restarted (restart 1)" in text
    assert "the embedded Redis is back" in text
    assert "worker-code restarted" in text
    assert not alive(beat)


def test_up_hands_the_runs_of_a_worker_that_died_to_another_at_once_not_after_the_grace(tmp_path):
    """``up`` saw its code worker die: it kills what is left of it and says so in Redis, so the run goes to the
    new worker within seconds, though the dead-worker grace (120 s here) would have waited two minutes."""
    with running_up(tmp_path, "bury", dead_worker_grace="120") as (up, env, _):
        created = submit_once_it_answers(env, {"name": "spin", "function_name": "f", "timeout": 8, "max_retries": 0,
                                               "function_code": "def f():\n    n = 0\n    while True:\n        n += 1"})

        def runs():
            return json.loads(taskman(env, "show", created["id"], "--json").stdout)["runs"]

        wait_for(lambda: runs() and runs()[0]["state"] == "running", timeout=60, message="the run to start")
        worker = children_of(up.pid, "-Q\x00code\x00")[0]
        os.kill(worker, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: subprocess.run(["pgrep", "-g", str(worker)], capture_output=True).returncode == 1,
                 timeout=10, message="the dead worker's pool processes to be killed")

        def said(words: str) -> list[str]:
            lines = taskman(env, "logs", created["id"], "--json").stdout.splitlines()
            return [json.loads(line)["msg"] for line in lines if words in line]

        handed = wait_for(lambda: said("exited; handed to another worker"), timeout=30,
                          message="the run to be handed over")
        starts = wait_for(lambda: (found := said("started on")) and len(found) == 2 and found, timeout=30,
                          message="the run to start on the restarted worker")
        took = time.monotonic() - killed_at
        resent = said("fell silent before starting it")
    assert len(handed) == 1
    assert starts[0].split(" started on ")[1] != starts[1].split(" started on ")[1], starts
    assert resent == [], "handed over once: its message not sent a third time"
    FIGURES["worker SIGKILL mid-run under taskman up -> run started again"] = (
        f"{took:.1f} s after the kill, on the restarted worker (grace 120 s)")


def test_up_frees_the_lock_of_a_scheduler_that_died_so_its_restart_leads_at_once(tmp_path):
    """The scheduler's lock lives 60 s here: a killed scheduler's restart would wait that long to lead. ``up`` saw
    it exit and freed the lock, so a delayed run due after the restart fires within seconds."""
    with running_up(tmp_path, "beat", scheduler_lock_ttl="60") as (up, env, _):
        created = submit_once_it_answers(env, {"name": "before", "delay_seconds": 1, "function_name": "f",
                                               "function_code": "def f():\n    return 1"})
        wait_done(env, created["id"], timeout=60)  # the first scheduler leads
        beat = children_of(up.pid, "beat")[0]
        os.kill(beat, signal.SIGKILL)
        wait_for(lambda: [pid for pid in children_of(up.pid, "beat") if pid != beat], timeout=30,
                 message="a new scheduler")
        after = json.loads(taskman(env, "submit", "-", "--json", input_text=json.dumps(
            {"name": "after", "delay_seconds": 1, "function_code": "def f():\n    return 2",
             "function_name": "f"})).stdout)
        assert wait_done(env, after["id"], timeout=40)["result"] == 2  # within 40 s: the old lock did not wait out
