"""The stack rides out Redis trouble: a stalled Redis and a Redis killed and restarted on its AOF.

Each test runs against a Redis of its own (append-only, fsync always) with its own worker and scheduler processes,
so stopping or killing that Redis disturbs nothing else. The invariants: the scheduler process is
still alive afterwards, every delayed run that fell due during the outage ran exactly once, and the
cron schedule fires again, each nominal fire at most once.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
import redis

from core.config import Settings
from core.embedded import RedisServer
from core.models import RunState
from tests.conftest import Processes, _process_env, wait_for
from tests.faults.conftest import BEAT, CODE, EVERY_2S, FIGURES, code_worker


@pytest.fixture
def troubled(private_stack):
    """(service, processes, redis server, beat) on a private append-only Redis, worker and scheduler up."""
    stack = private_stack
    stack.procs.start("worker", *code_worker("trouble"))
    beat = stack.procs.start("beat", *BEAT)
    wait_for(lambda: stack.service.registered_tasks(), timeout=60, message="the worker to be ready")
    return stack.service, stack.procs, stack.server, beat


def runs_of(service, task_id):
    return wait_for(lambda: _runs(service, task_id), timeout=30, message="Redis to answer")


def _runs(service, task_id):
    try:
        return service.get(task_id, runs=200).runs
    except Exception:
        return None


def fires_after(service, task_id, after: float) -> int:
    return sum(1 for run in runs_of(service, task_id) if (run.scheduled_for or 0) > after)


def assert_each_fire_once(service, task_id) -> int:
    nominal = [run.scheduled_for for run in runs_of(service, task_id) if run.trigger == "cron"]
    assert len(nominal) == len(set(nominal)), f"a nominal fire ran twice: {sorted(nominal)}"
    return len(nominal) - len(set(nominal))


def first_fire_after(service, task_id, after: float) -> float:
    """Seconds from ``after`` until the first cron run queued after it."""
    queued = [run.queued_at for run in runs_of(service, task_id) if (run.queued_at or 0) > after]
    return min(queued) - after


def test_a_stalled_redis_stops_nothing_for_good(troubled, tmp_path):
    service, procs, server, beat = troubled
    cron = service.create({"name": "every-2s", "function_code": CODE, "function_name": "main",
                           "cron_expression": EVERY_2S})
    wait_for(lambda: fires_after(service, cron.id, 0) >= 1, timeout=30, message="the first cron fire")
    delayed = service.create({"name": "due-in-the-stall", "function_code": CODE, "function_name": "main",
                              "delay_seconds": 3})
    os.kill(server.pid, signal.SIGSTOP)
    try:
        time.sleep(30)  # the issue's 30 s: past the clients' 15 s socket timeout and the scheduler's 3 s lock
    finally:
        os.kill(server.pid, signal.SIGCONT)
    resumed = time.time()
    assert beat.poll() is None, "the scheduler survived the stall"
    run = wait_for(lambda: (r := runs_of(service, delayed.id)) and r[0].state.final and r[0], timeout=60,
                   message="the delayed run that fell due during the stall")
    assert run.state is RunState.SUCCEEDED
    wait_for(lambda: fires_after(service, cron.id, resumed) >= 2, timeout=30, message="cron to fire again")
    assert len(runs_of(service, delayed.id)) == 1
    duplicates = assert_each_fire_once(service, cron.id)
    FIGURES["Redis SIGSTOP 30 s: SIGCONT -> first cron fire"] = (
        f"{first_fire_after(service, cron.id, resumed):.2f} s; runs lost 0, duplicate fires {duplicates}")
    log = (tmp_path / "beat.log").read_text()
    assert log.count("Redis is unreachable") <= 1 and "Traceback" not in log


def test_redis_killed_and_restarted_on_its_aof(troubled, tmp_path):
    service, procs, server, beat = troubled
    cron = service.create({"name": "every-2s", "function_code": CODE, "function_name": "main",
                           "cron_expression": EVERY_2S})
    delayed = service.create({"name": "due-while-down", "function_code": CODE, "function_name": "main",
                              "delay_seconds": 4})
    wait_for(lambda: fires_after(service, cron.id, 0) >= 1, timeout=30, message="the first cron fire")
    os.kill(server.pid, signal.SIGKILL)  # fsync always: everything acknowledged is on disk
    server._proc.wait()
    time.sleep(6)
    restarted = RedisServer(server.directory, port=server.port, appendonly=True, appendfsync="always").start()
    try:
        back = time.time()
        assert beat.poll() is None, "the scheduler survived Redis's death"
        run = wait_for(lambda: (r := runs_of(service, delayed.id)) and r[0].state.final and r[0], timeout=60,
                       message="the delayed run that fell due while Redis was down")
        assert run.state is RunState.SUCCEEDED
        assert len(runs_of(service, delayed.id)) == 1
        wait_for(lambda: fires_after(service, cron.id, back) >= 2, timeout=60, message="cron to fire again")
        duplicates = assert_each_fire_once(service, cron.id)
        FIGURES["Redis SIGKILL, restart on its AOF: back -> first cron fire"] = (
            f"{first_fire_after(service, cron.id, back):.2f} s; runs lost 0, duplicate fires {duplicates}")
        assert "Traceback" not in (tmp_path / "beat.log").read_text()
    finally:
        procs.stop_all()
        restarted.stop()


def test_redis_back_without_its_data_is_said_loudly(taskman_env, tmp_path):
    """A Redis restarted without its AOF: the scheduler notices the missing epoch and says so once."""
    from core.service import Service

    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    env = {**taskman_env, "TASKMAN_REDIS_URL": server.url, "TASKMAN_NAMESPACE": f"amnesia{uuid.uuid4().hex[:6]}",
           "TASKMAN_SCHEDULER_LOCK_TTL": "2"}
    procs = Processes(_process_env(env), tmp_path)
    service = Service.from_settings(Settings(**{k.removeprefix("TASKMAN_").lower(): v for k, v in env.items()}))
    beat = procs.start("beat", "beat", "-l", "INFO", "--pidfile=")
    try:
        wait_for(lambda: service.store.redis.get(service.store.keys.epoch), timeout=30, message="the epoch")
        assert service.data_loss() is None
        os.kill(server.pid, signal.SIGKILL)
        server._proc.wait()
        empty = RedisServer(tmp_path / "redis", port=server.port, appendonly=False).start()
        try:
            lost = wait_for(lambda: _quiet(service.data_loss), timeout=40, message="the data loss to be noticed")
            assert lost["was"] != lost["now"]
            assert beat.poll() is None
            log = (tmp_path / "beat.log").read_text()
            assert log.count("Redis lost its data") == 1
        finally:
            procs.stop_all()
            empty.stop()
    finally:
        procs.stop_all()
        server.stop()


def _quiet(call):
    try:
        return call()
    except Exception:
        return None


def test_connections_killed_five_times_half_a_second_apart(troubled, tmp_path):
    """``CLIENT KILL TYPE normal`` drops every client's connection (worker, scheduler, this service) five
    times while runs are being submitted: every acknowledged submit runs, the schedule keeps firing once
    per slot, and every process carries on."""
    service, procs, server, beat = troubled
    cron = service.create({"name": "every-2s", "function_code": CODE, "function_name": "main",
                           "cron_expression": EVERY_2S})
    wait_for(lambda: fires_after(service, cron.id, 0) >= 1, timeout=30, message="the first cron fire")
    admin = redis.Redis.from_url(server.url)
    acknowledged, refused, killed = [], 0, 0
    started = time.monotonic()
    while killed < 5:
        killed += 1 if admin.client_kill_filter(_type="normal", skipme=True) else 0
        try:
            acknowledged.append(service.create({"name": f"between kills {killed}", "function_code": CODE,
                                                "function_name": "main"}))
        except Exception:
            refused += 1
        time.sleep(0.5)
    span = time.monotonic() - started  # about 2.5 s: five kills half a second apart (more on a loaded machine)
    after = time.time()
    for task in acknowledged:
        run = wait_for(lambda task=task: (r := runs_of(service, task.id)) and r[0].state.final and r[0],
                       timeout=60, message=f"the run of {task.name}")
        assert run.state is RunState.SUCCEEDED, (task.name, run.state, run.error)
    wait_for(lambda: fires_after(service, cron.id, after) >= 2, timeout=30, message="cron to fire again")
    duplicates = assert_each_fire_once(service, cron.id)
    assert beat.poll() is None and all(child.poll() is None for child in procs.children)
    FIGURES["CLIENT KILL TYPE normal x5, 0.5 s apart"] = (
        f"in {span:.1f} s: {len(acknowledged)} submits acknowledged and run, {refused} refused; "
        f"duplicate fires {duplicates}")
    assert "Traceback" not in (tmp_path / "beat.log").read_text()
