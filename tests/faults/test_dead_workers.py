"""A dead worker's runs come back in seconds, and never run twice at once.

Each test has a namespace of its own with a short dead-worker grace (4 s), a scheduler and two code
workers. The run under test is a code task that busy-waits a few seconds, so it is surely running
when its worker is killed or frozen.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import pytest

from core.config import Settings
from core.models import RunState
from tests.conftest import Processes, _process_env, wait_for
from tests.faults.conftest import FIGURES

GRACE = 4.0
SLOW = ("import datetime\n"
        "def main(seconds):\n"
        "    end = datetime.datetime.now() + datetime.timedelta(seconds=seconds)\n"
        "    while datetime.datetime.now() < end:\n"
        "        pass\n"
        "    return 'done'\n")


def worker_args(name: str) -> tuple[str, ...]:
    return ("worker", "-Q", "code", "-P", "prefork", "-c", "1", "-n", f"{name}@%h", "-l", "INFO",
            "--without-mingle", "--without-gossip")


@pytest.fixture
def pair(taskman_env, tmp_path):
    """(service, processes, first worker) with a scheduler; the second worker is started by the test."""
    from core.service import Service

    env = {**taskman_env, "TASKMAN_NAMESPACE": f"dead{uuid.uuid4().hex[:6]}",
           "TASKMAN_DEAD_WORKER_GRACE": str(GRACE), "TASKMAN_SCHEDULER_LOCK_TTL": "3"}
    procs = Processes(_process_env(env), tmp_path)
    values = {key.removeprefix("TASKMAN_").lower(): value for key, value in env.items()}
    service = Service.from_settings(Settings(**values))
    procs.start("beat", "beat", "-l", "INFO", "--pidfile=")
    first = procs.start("worker-1", *worker_args("first"))
    wait_for(lambda: service.store.worker_reports(), timeout=60, message="the first worker")
    yield service, procs, first
    procs.stop_all()


def running_on(service, task_id, node_prefix: str):
    def check():
        runs = service.get(task_id).runs
        if runs and runs[0].state is RunState.RUNNING:
            node = service.store.run_owner(runs[0].id)[1]
            return node.startswith(node_prefix) and runs[0]
        return None
    return check


def state_events(service, run_id: str, kind: str) -> int:
    return sum(1 for _, entry in service.store.stream_tail("events", 2000)
               if (event := json.loads(entry["event"])).get("run_id") == run_id and event.get("type") == kind)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM-to-the-group"])
def test_a_killed_workers_run_runs_elsewhere_within_seconds(pair, how):
    """SIGKILL of the whole worker, or SIGTERM to its whole process group (which ends the pool process
    mid-run while the main process shuts down): either way the run goes to another worker."""
    service, procs, first = pair
    task = service.create({"name": "orphan", "function_code": SLOW, "function_name": "main", "args": [3],
                           "timeout": 30})
    run = wait_for(running_on(service, task.id, "first@"), timeout=30, message="the run on the first worker")
    procs.start("worker-2", *worker_args("second"))
    os.killpg(first.pid, how)
    killed_at = time.monotonic()
    wait_for(running_on(service, task.id, "second@"), timeout=GRACE + 30, message="the run on the second worker")
    took = time.monotonic() - killed_at
    final = wait_for(lambda: (r := service.get_run(run.id)).state.final and r, timeout=30, message="the run to end")
    assert final.state is RunState.SUCCEEDED and final.result == "done"
    assert took < GRACE + 10, f"handed over after {took:.1f} s"
    assert len(service.get(task.id).runs) == 1
    # SIGKILL: the scheduler's dead-worker watch hands it over. SIGTERM: the dying worker's broker channel
    # gives the message back at once and the other worker takes the run as a redelivery; but the dying
    # worker also withdraws its heartbeat, so on a slow machine the watch may hand it over first (the
    # redelivered message is then refused on arrival: its fence moved on). Either way it ran once.
    requeued = state_events(service, run.id, "run.requeued")
    assert requeued == 1 if how is signal.SIGKILL else requeued in (0, 1)
    assert state_events(service, run.id, "run.succeeded") == 1
    FIGURES[f"worker {how.name} (process group) mid-run -> run elsewhere (grace {GRACE:g} s)"] = (
        f"{took:.2f} s; runs lost 0, run recorded once")


def test_a_frozen_worker_that_wakes_up_cannot_overwrite_the_new_attempt(pair):
    service, procs, first = pair
    task = service.create({"name": "sleeper", "function_code": SLOW, "function_name": "main", "args": [2],
                           "timeout": 30})
    run = wait_for(running_on(service, task.id, "first@"), timeout=30, message="the run on the first worker")
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        procs.start("worker-2", *worker_args("second"))
        wait_for(running_on(service, task.id, "second@"), timeout=GRACE + 30, message="the run on the second worker")
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    final = wait_for(lambda: (r := service.get_run(run.id)).state.final and r, timeout=30, message="the run to end")
    time.sleep(3)  # the first worker's own finish arrives meanwhile, and must be refused
    assert final.state is RunState.SUCCEEDED
    assert service.get_run(run.id).worker == final.worker
    assert state_events(service, run.id, "run.succeeded") == 1
    FIGURES["worker SIGSTOP past the grace, then SIGCONT"] = "its late finish refused; run recorded once"
    assert first.poll() is None, "the woken worker goes on serving"
    after = service.create({"name": "after", "function_code": "def main():\n    return 1\n", "function_name": "main"})
    assert wait_for(lambda: (r := service.get(after.id).runs) and r[0].state.final and r[0], timeout=30).result == 1


def test_a_worker_restarted_under_its_own_name_does_not_vouch_for_its_dead_predecessors_run(pair):
    """``taskman up``, systemd and docker restart a dead worker under the same node name at once. Its
    heartbeats are those of another life, so the dead one's run is handed over after the grace, not left
    to the broker's redelivery window (an hour by default)."""
    service, procs, first = pair
    task = service.create({"name": "orphan of a restart", "function_code": SLOW, "function_name": "main",
                           "args": [3], "timeout": 30})
    run = wait_for(running_on(service, task.id, "first@"), timeout=30, message="the run on the first worker")
    os.killpg(first.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    procs.start("worker-1-again", *worker_args("first"))
    final = wait_for(lambda: (r := service.get_run(run.id)).state.final and r, timeout=GRACE + 40,
                     message="the run to run again and end")
    took = time.monotonic() - killed_at
    assert final.state is RunState.SUCCEEDED and final.result == "done"
    assert state_events(service, run.id, "run.requeued") == 1, "the dead-worker watch handed it over"
    assert took < GRACE + 15, f"ended {took:.1f} s after the kill"
    FIGURES["worker SIGKILL, restarted under its own name -> run ends"] = f"{took:.2f} s (grace {GRACE:g} s)"


def test_runs_a_killed_worker_had_prefetched_run_elsewhere_within_seconds(taskman_env, tmp_path):
    """A registered-queue worker takes messages ahead (prefetch 4, one process): while its one process runs a
    long task, it holds three short runs it has not started. Killed, it can give none of them back, and kombu
    would redeliver them only after its visibility timeout (an hour). Its heartbeats listed what it held, so
    once it has been silent for the grace the scheduler brings those runs' send guards forward (the claim
    lease here is two minutes) and sends each again under a new fence: each runs once, on the other worker."""
    from core.service import Service

    env = {**taskman_env, "TASKMAN_NAMESPACE": f"ahead{uuid.uuid4().hex[:6]}", "TASKMAN_DEAD_WORKER_GRACE": str(GRACE),
           "TASKMAN_SCHEDULER_LOCK_TTL": "3", "TASKMAN_CLAIM_LEASE": "120"}
    procs = Processes(_process_env(env), tmp_path)
    service = Service.from_settings(Settings(**{key.removeprefix("TASKMAN_").lower(): value
                                                for key, value in env.items()}))
    store = service.store

    def registered_worker(name: str, processes: int) -> tuple[str, ...]:
        return ("worker", "-Q", "registered", "-P", "prefork", "-c", str(processes), "--prefetch-multiplier", "4",
                "-n", f"{name}@%h", "-l", "INFO", "--without-mingle", "--without-gossip")

    try:
        procs.start("beat", "beat", "-l", "INFO", "--pidfile=")
        first = procs.start("worker-1", *registered_worker("first", 1))
        wait_for(lambda: service.store.worker_reports(), timeout=60, message="the first worker")
        long = service.create({"name": "long", "task_name": "taskman.sleep", "kwargs": {"seconds": 20},
                               "timeout": 60})
        wait_for(running_on(service, long.id, "first@"), timeout=30, message="the long run on the first worker")
        shorts = [service.create({"name": f"short {i}", "task_name": "taskman.echo", "args": [i]}) for i in range(3)]
        runs = [service.get(task.id).runs[0] for task in shorts]

        def held_by_first() -> bool:
            held = " ".join(value for life, value in store.redis.hgetall(store.keys.worker_held).items()
                            if life.startswith("first@"))
            return all(run.id in held for run in runs)

        wait_for(held_by_first, timeout=30, message="the first worker to list the three runs it took ahead")
        assert all(service.get_run(run.id).state is RunState.QUEUED for run in runs), "taken, not started"
        os.killpg(first.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        procs.start("worker-2", *registered_worker("second", 2))
        for run in runs:
            wait_for(lambda run=run: service.get_run(run.id).state.final, timeout=GRACE + 60,
                     message=f"run {run.id} to end on the second worker")
        took = time.monotonic() - killed_at
        for run, index in zip(runs, range(3), strict=True):
            done = service.get_run(run.id)
            assert done.state is RunState.SUCCEEDED and done.result == {"args": [index], "kwargs": {}}, done
            _, node, fence = store.run_owner(run.id)
            assert node.startswith("second@") and state_events(service, run.id, "run.started") == 1
            assert fence == 1, "sent again under a new fence"
        assert took < GRACE + 30, f"the prefetched runs ended {took:.1f} s after the kill (claim lease 120 s)"
        assert "was taken by a worker that fell silent before starting it" in (tmp_path / "beat.log").read_text()
        assert not [value for value in store.redis.hvals(store.keys.celery_unacked)
                    if any(run.id in value for run in runs)], "the dead worker's reservations are gone"
        FIGURES[f"worker SIGKILL holding 3 prefetched runs -> they end elsewhere (grace {GRACE:g} s)"] = f"{took:.2f} s"
    finally:
        procs.stop_all()
