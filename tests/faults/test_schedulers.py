"""Schedulers that freeze, die and compete: every nominal fire runs once, a catch-up fires once.

Each test runs real beat processes on a private Redis (see ``private_stack``) with a 3 s lock, on a
cron that fires every 2 s. The issue's minutes (three minutes of two schedulers, three minutes of a
one-minute cron without a scheduler) are scaled to seconds with a seconds-field cron: the same
number of nominal fires are missed or contested, in a bounded test.
"""

from __future__ import annotations

import os
import re
import signal
import time

from core.models import RunState
from tests.conftest import wait_for
from tests.faults.conftest import BEAT, CODE, EVERY_2S, FIGURES, code_worker


def cron_runs(service, task_id):
    return [run for run in service.get(task_id, runs=200).runs if run.trigger == "cron"]


def slots(service, task_id) -> list[float]:
    return sorted(run.scheduled_for for run in cron_runs(service, task_id))


def lock_holder(stack) -> str:
    """The name of the beat process whose token holds the lock, from the 'took the lock' log lines."""
    token = wait_for(lambda: stack.service.store.redis.get(stack.service.store.keys.scheduler_lock), timeout=30,
                     message="a scheduler to hold the lock")
    for name in ("beat-1", "beat-2", "beat"):
        path = stack.logs / f"{name}.log"
        if path.exists() and re.search(rf"scheduler {token[:8]} took the lock", path.read_text(errors="replace")):
            return name
    raise AssertionError(f"no beat log names the lock's token {token[:8]}")


def test_two_schedulers_a_frozen_leader_and_its_return_fire_each_slot_once(private_stack):
    stack, service = private_stack, private_stack.service
    stack.procs.start("worker", *code_worker("sched", concurrency=2))
    first = stack.procs.start("beat-1", *BEAT)
    wait_for(lambda: service.store.redis.get(service.store.keys.scheduler_lock), timeout=30,
             message="the first scheduler to take the lock")
    second = stack.procs.start("beat-2", *BEAT)
    cron = service.create({"name": "every-2s", "function_code": CODE, "function_name": "main",
                           "cron_expression": EVERY_2S})
    wait_for(lambda: len(slots(service, cron.id)) >= 4, timeout=30, message="four fires under the first leader")
    leader = lock_holder(stack)
    frozen, standby = (first, second) if leader == "beat-1" else (second, first)
    os.kill(frozen.pid, signal.SIGSTOP)
    stopped_at = time.time()
    try:
        wait_for(lambda: lock_holder(stack) != leader, timeout=15, message="the standby to take the lock")
        took_over = time.time() - stopped_at
        time.sleep(8)  # well past the lock: the standby fires meanwhile
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    woke_at = time.time()
    time.sleep(8)  # the old leader is awake: it must not fire, and must not take the lock back
    ended_at = time.time()

    fired = slots(service, cron.id)
    assert len(fired) == len(set(fired)), f"a nominal fire ran twice: {fired}"
    after_wake = [slot for slot in fired if woke_at < slot <= ended_at - 1]
    assert len(after_wake) >= 3, f"firing went on after the old leader woke: {after_wake}"
    gaps = [b - a for a, b in zip(fired, fired[1:], strict=False)]
    assert sum(1 for gap in gaps if gap > 2.5) <= 1, f"fires were lost beyond one takeover: gaps {gaps}"
    assert lock_holder(stack) != leader, "the woken scheduler did not take the lock back"
    assert frozen.poll() is None and standby.poll() is None
    wait_for(lambda: all(run.state.final for run in cron_runs(service, cron.id)), timeout=30,
             message="every fired run to end")
    assert {run.state for run in cron_runs(service, cron.id)} == {RunState.SUCCEEDED}
    FIGURES["two schedulers, leader SIGSTOPped past its lock"] = (
        f"standby took over in {took_over:.1f} s; {len(fired)} fires, duplicate fires 0")


def test_a_scheduler_killed_through_missed_fires_catches_up_once(private_stack):
    stack, service = private_stack, private_stack.service
    stack.procs.start("worker", *code_worker("catchup"))
    beat = stack.procs.start("beat-1", *BEAT)
    cron = service.create({"name": "every-2s", "function_code": CODE, "function_name": "main",
                           "cron_expression": EVERY_2S})
    wait_for(lambda: len(slots(service, cron.id)) >= 2, timeout=30, message="the schedule to fire")
    stack.procs.stop(beat, signal.SIGKILL)
    killed_at = time.time()
    time.sleep(7)  # three or four nominal fires pass with no scheduler
    restarted = stack.procs.start("beat-2", *BEAT)
    back_at = time.time()
    wait_for(lambda: [slot for slot in slots(service, cron.id) if slot > back_at + 2], timeout=30,
             message="the schedule to fire on time again")
    fired = slots(service, cron.id)
    assert len(fired) == len(set(fired))
    missed = [slot for slot in fired if killed_at < slot < back_at]
    assert len(missed) == 1, f"the missed fires are caught up once, not once per slot: {missed}"
    catch_up = next(run for run in cron_runs(service, cron.id) if run.scheduled_for == missed[0])
    assert restarted.poll() is None
    FIGURES["scheduler SIGKILLed through 3 slots of a 2 s cron"] = (
        f"1 catch-up fire {catch_up.queued_at - back_at:.1f} s after restart; duplicate fires 0")
