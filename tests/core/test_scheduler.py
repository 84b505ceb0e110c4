"""The scheduler's rules, driven tick by tick in-process on a real Redis with an injected clock.

End-to-end tests (tests/e2e, tests/faults) run the real beat process; these step its clock through
jumps and freeze it mid-tick, which real time cannot do in a bounded test. Messages go to the real
broker in a namespace no worker serves: what is checked is which runs were fired, and when for.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import uuid

import pytest

from core.models import RunState
from core.scheduler import Scheduler
from core.store import due_member_for_run, due_member_for_task


class Clock:
    """A wall clock the test moves: forward in steps, or jumping either way."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def service(settings, redis_server):
    from core.service import Service

    own = settings.replace(namespace=f"sched{uuid.uuid4().hex[:8]}")
    return Service.from_settings(own)


def scheduler(service, clock: Clock, **options) -> Scheduler:
    return Scheduler(service.store, service.dispatcher, clock=clock, **options)


def advance(sched: Scheduler, clock: Clock, seconds: float, step: float = 5.0) -> None:
    """Move the clock forward ``seconds`` in ``step``s, ticking after each step."""
    end = clock.now + seconds
    while clock.now < end:
        clock.now = min(end, clock.now + step)
        sched.tick()


def fired_slots(service, task_id: str) -> list[float]:
    return sorted(run.scheduled_for for run in service.runs(task_id, limit=500))


def minute_slots(start: float, end: float) -> int:
    """Nominal fires of ``* * * * *`` in (start, end]."""
    return math.floor(end / 60) - math.floor(start / 60)


def test_wall_clock_jumps_fire_nothing_twice_and_lose_nothing_beyond_the_misfire_rule(service):
    every_minute = service.create({"name": "every minute", "function_code": "def main():\n    return 1\n",
                                   "function_name": "main", "cron_expression": "* * * * *"})
    in_half_an_hour = service.create({"name": "in half an hour", "function_code": "def main():\n    return 1\n",
                                      "function_name": "main", "delay_seconds": 1800})
    clock = Clock(time.time())
    start = clock.now
    sched = scheduler(service, clock)
    advance(sched, clock, 300)
    assert len(fired_slots(service, every_minute.id)) == minute_slots(start, clock.now)
    before_jump = clock.now

    clock.now += 3600  # the host's clock jumps an hour ahead
    sched.tick()
    after_jump = fired_slots(service, every_minute.id)
    assert len(after_jump) == minute_slots(start, before_jump) + 1, "the missed hour is caught up by one fire"
    assert len(service.runs(in_half_an_hour.id)) == 1, "the delayed run that fell due in the jump ran once"
    jumped_from = clock.now
    advance(sched, clock, 300)
    assert len(fired_slots(service, every_minute.id)) == len(after_jump) + minute_slots(jumped_from, clock.now)

    back_from = clock.now
    clock.now -= 600  # and ten minutes back
    advance(sched, clock, 660)
    slots = fired_slots(service, every_minute.id)
    expected = len(after_jump) + minute_slots(jumped_from, back_from) + minute_slots(back_from, clock.now)
    assert len(slots) == expected, "the ten minutes lived twice fire once, not twice"
    assert len(set(slots)) == len(slots)
    assert all(slot % 60 == 0 for slot in slots), "every fire is for a nominal minute"
    assert len(service.runs(in_half_an_hour.id)) == 1


def test_a_scheduler_frozen_past_its_lock_fires_nothing_when_it_wakes(service):
    task = service.create({"name": "soon", "function_code": "def main():\n    return 1\n",
                           "function_name": "main", "delay_seconds": 1})
    clock = Clock(time.time() + 2)
    frozen = scheduler(service, clock, lock_ttl=0.3)
    standby = scheduler(service, clock, lock_ttl=0.3)
    # The frozen scheduler was mid-tick: it held the lock and had claimed the entry when it stopped.
    assert service.store.acquire_lock(frozen.token, frozen.lock_ttl)
    [(member, due_at)] = service.store.claim_due(clock.now, frozen.lease, frozen.token)
    time.sleep(0.5)  # its lock runs out
    standby.tick()
    assert standby.is_leader and service.runs(task.id) == [], "the claimed entry is hidden from the standby"

    frozen.fire(member, due_at, clock.now)  # it wakes up and carries on where it stopped
    assert service.runs(task.id) == [], "a scheduler that lost the lock fires nothing"
    assert service.store.due_score(member) == due_at, "it handed the entry back at its due time"
    assert service.store.claim_due(clock.now, frozen.lease, frozen.token) == [], "and claims nothing more"

    standby.tick()
    [run] = service.runs(task.id)
    assert run.scheduled_for == due_at


def test_a_claim_whose_lease_ran_out_cannot_fire_after_another_claim(service):
    task = service.create({"name": "leased", "function_code": "def main():\n    return 1\n",
                           "function_name": "main", "cron_expression": "* * * * *"})
    clock = Clock(time.time())
    sched = scheduler(service, clock, lease=5)
    clock.now = service.store.due_score(due_member_for_task(task.id)) + 0.1
    assert service.store.acquire_lock(sched.token, sched.lock_ttl)
    [(member, due_at)] = service.store.claim_due(clock.now, sched.lease, sched.token)
    first_claim_at = clock.now
    clock.now += 6  # past the lease: the entry comes up again and is fired by the next tick
    sched.tick()
    assert len(service.runs(task.id)) == 1
    sched.fire(member, due_at, first_claim_at)  # the first claim's fire arrives late
    assert len(service.runs(task.id)) == 1, "a claim that lost its lease fires nothing"


def test_a_schedule_edited_while_claimed_fires_by_the_new_schedule(service):
    task = service.create({"name": "edited", "function_code": "def main():\n    return 1\n",
                           "function_name": "main", "cron_expression": "* * * * *"})
    clock = Clock(service.store.due_score(due_member_for_task(task.id)) + 0.1)
    sched = scheduler(service, clock)
    assert service.store.acquire_lock(sched.token, sched.lock_ttl)
    [(member, due_at)] = service.store.claim_due(clock.now, sched.lease, sched.token)
    service.update(task.id, {"cron_expression": "0 0 1 1 *"})
    sched.fire(member, due_at, clock.now)
    assert service.runs(task.id) == [], "the claim made before the edit does not fire"
    assert service.store.due_score(member) == service.get(task.id).next_run_at


def test_a_queued_run_sent_again_moves_its_fence_so_the_first_message_is_refused(service):
    from core.runner import Runner

    task = service.create({"name": "guarded", "function_code": "def main():\n    return 1\n",
                           "function_name": "main", "cron_expression": "0 0 1 1 *"})
    run = service.run_now(task.id)  # sent under fence 0; nothing serves this namespace, so it waits
    clock = Clock(time.time() + service.settings.claim_lease + 1)
    sched = scheduler(service, clock)
    guard = due_member_for_run(run.id)
    # as if its sender had died after pushing the message and before recording it (send_task, then the record)
    service.store.redis.hdel(service.store.keys.run(run.id), "sent_fence")
    pipe = service.store.pipeline()
    service.store.set_due(guard, time.time(), pipe)
    pipe.execute()
    sched.tick()
    assert service.store.run_owner(run.id)[2] == 1, "the resend carries a new fence"
    assert service.store.redis.hget(service.store.keys.run(run.id), "sent_fence") == "1"
    assert service.store.due_score(guard) == clock.now + sched.lease, "its guard waits until it starts"
    runner = Runner(service.store, service.settings, "test-worker", unrestricted_code=True)
    assert runner.begin(run.id, fence=0) is None, "the first message is refused on arrival"
    started = runner.begin(run.id, fence=1)
    assert started is not None and service.get_run(run.id).state is RunState.RUNNING
    assert service.store.due_score(guard) is None, "the start removes its guard"


def echo_tasks(service, count: int, delay: float = 30) -> list:
    return service.create_many([{"name": f"echo {i}", "task_name": "taskman.echo", "delay_seconds": delay}
                                for i in range(count)])


def queued_messages(service, queue: str) -> int:
    return service.store.redis.llen(service.store.keys.celery_queue(queue))


def sent_fence(service, run_id: str) -> str | None:
    return service.store.redis.hget(service.store.keys.run(run_id), "sent_fence")


def guards(service) -> list[str]:
    return [member for member in service.store.redis.zrange(service.store.keys.due, 0, -1) if member.startswith("r:")]


def test_a_burst_fires_every_entry_once_in_batches_and_sends_every_message(service):
    delayed = echo_tasks(service, 260)
    crons = service.create_many([{"name": f"cron {i}", "function_code": "def main():\n    return 1\n",
                                  "function_name": "main", "cron_expression": "* * * * *"} for i in range(40)])
    clock = Clock(time.time() + 90)  # every entry is due, 300 in all: three batches and a part of one
    sched = scheduler(service, clock)
    sched.tick()
    for task in delayed + crons:
        [run] = service.runs(task.id)
        assert run.scheduled_for == task.next_run_at and run.queued_at == clock.now
    assert queued_messages(service, "registered") == len(delayed) and queued_messages(service, "code") == len(crons)
    runs = [run for task in delayed + crons for run in service.runs(task.id)]
    assert sorted(guards(service)) == sorted(due_member_for_run(run.id) for run in runs), \
        "every sent run keeps its guard until it starts"
    assert {service.store.due_score(due_member_for_run(run.id)) for run in runs} == {clock.now + sched.lease}
    assert {sent_fence(service, run.id) for run in runs} == {"0"}, "and is known to be sent"
    for task in crons:
        assert service.get(task.id).next_run_at == math.floor(clock.now / 60) * 60 + 60
    assert service.get(delayed[0].id).state.value == "done"
    sched.tick()
    assert sum(len(service.runs(task.id)) for task in delayed + crons) == 300, "nothing fires twice"


def test_a_message_the_dispatcher_refuses_keeps_its_guard_and_the_rest_of_its_batch_goes(service):
    tasks = echo_tasks(service, 5)
    bad = tasks[2]
    key = service.store.keys.task(bad.id)
    spec = json.loads(service.store.redis.hget(key, "spec"))
    service.store.redis.hset(key, "spec", json.dumps({**spec, "task_name": "taskman.code"}))  # stored before refusals
    clock = Clock(time.time() + 60)
    scheduler(service, clock).tick()
    assert queued_messages(service, "registered") == 4
    [bad_run] = service.runs(bad.id)
    assert len(guards(service)) == 5, "every run waits for its start or its guard"
    unsent = [task.id for task in tasks if sent_fence(service, service.runs(task.id)[0].id) is None]
    assert unsent == [bad.id], "only the refused run is not sent"
    assert all(len(service.runs(task.id)) == 1 for task in tasks)


def test_a_definition_that_no_longer_reads_holds_back_only_its_own_entry(service):
    tasks = echo_tasks(service, 5)
    bad = tasks[1]
    service.store.redis.hset(service.store.keys.task(bad.id), "spec", "{not json")
    clock = Clock(time.time() + 60)
    sched = scheduler(service, clock)
    sched.tick()
    assert queued_messages(service, "registered") == 4 and len(guards(service)) == 4
    assert [len(service.store.recent_runs(task.id)) for task in tasks] == [1, 0, 1, 1, 1]
    assert service.store.due_score(due_member_for_task(bad.id)) == clock.now + sched.lease, \
        "its entry comes back after the lease"


def test_a_run_whose_worker_its_supervisor_saw_exit_is_handed_over_at_once(service):
    """``taskman up`` saw a worker's start exit (``Service.worker_exited``): its runs go to another worker at the
    watch's next look, though it beat a moment ago; a run of another start under the same node name stays."""
    dead_id, live_id = uuid.uuid4().hex, uuid.uuid4().hex
    runs = {}
    for life_id in (dead_id, live_id):
        task = service.create({"name": f"echo {life_id[:4]}", "task_name": "taskman.echo"})
        run = runs[life_id] = task.runs[0]
        assert service.store.transition(run.id, (RunState.QUEUED,), RunState.RUNNING, running="add",
                                        fields={"started_at": time.time(), "node": f"w@box#{life_id}"}) == "queued"
        service.store.heartbeat("w@box", life=f"w@box#{life_id}", holds=[run.id])
    sched = scheduler(service, Clock(time.time()), dead_worker_grace=120)
    assert sched.hand_over_silent_workers_runs(service.store.server_time()) == 0, "both beat a moment ago"
    with pytest.raises(ValueError, match="not a worker life id"):
        service.worker_exited("*")  # (a pattern would match every start)
    assert service.worker_exited(dead_id) == 1
    assert sched.hand_over_silent_workers_runs(service.store.server_time()) == 1
    handed, kept = (service.store.get_run(runs[life_id].id) for life_id in (dead_id, live_id))
    assert handed.state is RunState.QUEUED and kept.state is RunState.RUNNING
    assert [service.store.redis.hget(service.store.keys.run(run.id), "fence") for run in (handed, kept)] == ["1", None]
    lines = [entry["msg"] for _, entry in service.store.stream_tail("logs", 100) if entry.get("run") == handed.id]
    assert lines == [f"run {handed.id}: worker w@box#{dead_id} exited; handed to another worker"]


def test_a_run_handed_over_keeps_its_send_guard_a_lease_away_though_its_dead_worker_listed_it(service):
    """The dead worker's heartbeat listed the running run among what it held. The watch forgets that before it
    hands the run over, so the new message's guard stays a lease away: the run is not looked for again at once
    and sent a third time (each send a new fence, the earlier message refused)."""
    life_id = uuid.uuid4().hex
    task = service.create({"name": "echo", "task_name": "taskman.echo"})
    run = task.runs[0]
    service.store.transition(run.id, (RunState.QUEUED,), RunState.RUNNING, running="add",
                             fields={"started_at": time.time(), "node": f"w@box#{life_id}"})
    service.store.heartbeat("w@box", life=f"w@box#{life_id}", holds=[run.id])
    service.worker_exited(life_id)
    clock = Clock(time.time())
    sched = scheduler(service, clock, dead_worker_grace=120)
    sched.tick()
    assert service.store.get_run(run.id).state is RunState.QUEUED, "handed over"
    assert service.store.due_score(due_member_for_run(run.id)) == pytest.approx(clock.now + sched.lease, abs=1)
    assert service.store.redis.hget(service.store.keys.run(run.id), "fence") == "1"


def test_the_lock_of_a_scheduler_that_exited_is_freed_when_its_supervisor_says_so(service):
    """``taskman up`` saw its scheduler process exit: the lock it held is freed at once, for the restarted one;
    a pid that does not hold the lock frees nothing."""
    clock = Clock(time.time())
    gone, heir = scheduler(service, clock, lock_ttl=60), scheduler(service, clock, lock_ttl=60)
    gone.tick()
    heir.tick()
    assert gone.is_leader and not heir.is_leader
    assert gone.token.endswith(f".{os.getpid()}@{socket.gethostname()}"), gone.token
    assert not service.scheduler_exited(os.getpid() + 100_000), "another process: the lock stays"
    heir.tick()
    assert not heir.is_leader
    assert service.scheduler_exited(os.getpid())
    heir.tick()
    assert heir.is_leader
