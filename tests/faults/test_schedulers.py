"""Schedulers that freeze, die and compete: every nominal fire runs once, a catch-up fires once.

Each test runs real beat processes on a private Redis (see ``private_stack``) on a cron that fires every
second. The issue's minutes (three minutes of two schedulers, three minutes of a one-minute cron without a
scheduler) are scaled to seconds with a seconds-field cron: as many nominal fires (or more) are missed or
contested, in a bounded test. The waits that take time are the scenario's own (a frozen leader's 3 s lock and
the lease of the fire it holds running out; a killed scheduler's held fire coming back, on a 1 s lock); past
them the tests wait for the fires they count, not for fixed times.
"""

from __future__ import annotations

import os
import re
import signal
import time

from core.models import RunState
from core.scheduler import LOOKAHEAD
from tests.conftest import wait_for
from tests.faults.conftest import BEAT, CODE, FIGURES, code_worker

EVERY_SECOND = "* * * * * *"
LATE = 1.5
"""Seconds between two nominal fires beyond which a slot of the 1 s cron was lost."""


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
    lock_ttl = float(stack.env["TASKMAN_SCHEDULER_LOCK_TTL"])
    stack.procs.start("worker", *code_worker("sched", concurrency=2))
    beats = {"beat-1": stack.procs.start("beat-1", *BEAT), "beat-2": stack.procs.start("beat-2", *BEAT)}
    wait_for(lambda: service.store.redis.get(service.store.keys.scheduler_lock), timeout=30,
             message="one of the two schedulers, started together, to take the lock")
    wait_for(lambda: all("beat: Starting" in stack.log(name) for name in beats), timeout=30,
             message="the other scheduler to stand by")
    cron = service.create({"name": "every-second", "function_code": CODE, "function_name": "main",
                           "cron_expression": EVERY_SECOND})
    wait_for(lambda: len(slots(service, cron.id)) >= 4, timeout=30, message="four fires under the first leader")
    leader = lock_holder(stack)
    frozen, standby = beats[leader], next(beat for name, beat in beats.items() if name != leader)
    os.kill(frozen.pid, signal.SIGSTOP)
    stopped_at = time.time()
    try:
        wait_for(lambda: lock_holder(stack) != leader, timeout=15, message="the standby to take the lock")
        took_over = time.time() - stopped_at
        # Well past the lock and the lease of the fire the frozen leader holds (claimed a look-ahead before its
        # slot): the standby fires the task's entry when that lease ends, then on time, while it stays frozen.
        wait_for(lambda: len([slot for slot in slots(service, cron.id) if slot > stopped_at + LOOKAHEAD]) >= 2,
                 timeout=30, message="the standby to fire twice past what the frozen leader holds")
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    woke_at = time.time()
    # The old leader is awake: it must not fire, and must not take the lock back, watched for three fires and
    # past a lock's TTL and a standby's next look (a lock left to lapse would have changed hands by then).
    watched_until = woke_at + lock_ttl + 1

    def fired_after_wake() -> bool:
        after = [slot for slot in slots(service, cron.id) if slot > woke_at]
        return len(after) >= 3 and after[-1] > watched_until

    wait_for(lambda: re.search(r"scheduler \w+ lost the lock", stack.log(leader)), timeout=15,
             message="the woken scheduler to find its lock gone")
    wait_for(fired_after_wake, timeout=30, message="three fires, and a lock's TTL, after the old leader woke")

    fired = slots(service, cron.id)
    assert len(fired) == len(set(fired)), f"a nominal fire ran twice: {fired}"
    gaps = [b - a for a, b in zip(fired, fired[1:], strict=False)]
    assert sum(1 for gap in gaps if gap > LATE) <= 1, f"fires were lost beyond one takeover: gaps {gaps}"
    assert lock_holder(stack) != leader, "the woken scheduler did not take the lock back"
    assert frozen.poll() is None and standby.poll() is None
    wait_for(lambda: all(run.state.final for run in cron_runs(service, cron.id)), timeout=30,
             message="every fired run to end")
    assert {run.state for run in cron_runs(service, cron.id)} == {RunState.SUCCEEDED}
    FIGURES["two schedulers, leader SIGSTOPped past its lock"] = (
        f"standby took over in {took_over:.1f} s; {len(fired)} fires, duplicate fires 0")


def test_a_scheduler_killed_through_missed_fires_catches_up_once(private_stack):
    stack, service = private_stack, private_stack.service
    # A 1 s lock: the entry the killed scheduler holds comes back sooner (its lease ends a look-ahead and the
    # lock's TTL after its slot, itself up to a look-ahead after the kill), so fewer seconds pass with none.
    lock_ttl = 1.0
    stack.procs.env["TASKMAN_SCHEDULER_LOCK_TTL"] = str(lock_ttl)
    stack.procs.start("worker", *code_worker("catchup"))
    beat = stack.procs.start("beat-1", *BEAT)
    cron = service.create({"name": "every-second", "function_code": CODE, "function_name": "main",
                           "cron_expression": EVERY_SECOND})
    wait_for(lambda: len(slots(service, cron.id)) >= 2, timeout=30, message="the schedule to fire")
    stack.procs.stop(beat, signal.SIGKILL)
    killed_at = time.time()
    time.sleep(2 * LOOKAHEAD + lock_ttl + 0.5)  # past that lease: five nominal fires pass with no scheduler
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
    FIGURES["scheduler SIGKILLed through 5 slots of a 1 s cron"] = (
        f"1 catch-up fire {catch_up.queued_at - back_at:.1f} s after restart; duplicate fires 0")
