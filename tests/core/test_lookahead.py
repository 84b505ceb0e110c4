"""The scheduler's look-ahead: fires prepared before their due time, published at it, with every guarantee.

Driven tick by tick in-process on a real Redis with an injected clock, as tests/core/test_scheduler.py
does. A fire claimed ahead is held: its run is written but belongs to no history and its message waits,
staged. At the due time it is published (message pushed, entry moved on, in one script) and then
committed (history, the task's latest run, a one-shot's end, the event). An edit, a pause or a delete
made while it is held means it does not happen; a scheduler that lost the lock or died hands it on, and
the batch's ``p:`` entry tidies up after a scheduler that stopped short. Nothing fires twice.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis

from core.models import RunState, TaskState
from core.scheduler import Scheduler
from core.store import due_member_for_run, due_member_for_task
from tests.core.test_scheduler import Clock


@pytest.fixture
def service(settings, redis_server):
    from core.service import Service

    own = settings.replace(namespace=f"ahead{uuid.uuid4().hex[:8]}")
    return Service.from_settings(own)


def echo(service, delay: float = 30.0, **extra):
    return service.create({"name": "echo", "task_name": "taskman.echo", "delay_seconds": delay, **extra})


def queued(service, queue: str = "registered") -> list[dict]:
    return [json.loads(raw) for raw in service.store.redis.lrange(service.store.keys.celery_queue(queue), 0, -1)]


def leftovers(service) -> list[str]:
    """What prepared fires may leave behind: batch entries in the due set and staged or fired lists."""
    store = service.store
    batches = [member for member in store.redis.zrange(store.keys.due, 0, -1) if member.startswith("p:")]
    return batches + sorted(store.redis.scan_iter(f"{store.keys.namespace}:fire:*"))


def held_run_ids(sched: Scheduler) -> list[str]:
    return [fire.run.id for fire in sched.held]


def test_a_fire_claimed_ahead_waits_for_its_due_time_and_then_is_sent_and_recorded_once(service):
    task = echo(service)
    due = task.next_run_at
    clock = Clock(due - 1.0)
    sched = Scheduler(service.store, service.dispatcher, clock=clock, lookahead=2.0)
    sched.tick()
    [run_id] = held_run_ids(sched)
    assert service.runs(task.id) == [] and queued(service) == [], "nothing is sent or shown before its time"
    assert service.get_run(run_id).state is RunState.QUEUED, "but its run is written, ready"
    assert 0 < sched.tick() <= 1.0, "the next look is at the due time"

    clock.now = due
    sched.tick()
    [run] = service.runs(task.id)
    assert run.id == run_id and run.scheduled_for == due and run.queued_at == due
    [message] = queued(service)
    assert message["headers"]["id"] == run.id and message["headers"]["task"] == "taskman.echo"
    assert message["headers"]["taskman_fence"] == 0
    assert service.get(task.id).state is TaskState.DONE
    assert service.store.due_score(due_member_for_task(task.id)) is None
    assert leftovers(service) == [], "a committed batch leaves nothing behind"
    events = [json.loads(fields["event"]) for _, fields in service.store.stream_tail("events", 20)]
    assert [event["run_id"] for event in events if event["type"] == "run.queued"] == [run.id]

    clock.now = due + 600
    sched.tick()
    assert len(service.runs(task.id)) == 1 and len(queued(service)) == 1, "nothing fires twice"


@pytest.mark.parametrize("change", ["pause", "delete", "stop", "edit"])
def test_a_change_made_while_a_fire_is_held_wins(service, change):
    task = service.create({"name": "cron", "task_name": "taskman.echo", "cron_expression": "* * * * *"})
    due = task.next_run_at
    clock = Clock(due - 1.0)
    sched = Scheduler(service.store, service.dispatcher, clock=clock, lookahead=2.0)
    sched.tick()
    [run_id] = held_run_ids(sched)
    if change == "edit":
        service.update(task.id, {"cron_expression": "0 0 1 1 *"})
    else:
        getattr(service, change)(task.id)
    clock.now = due + 0.5
    sched.tick()
    assert queued(service) == [], f"a {change} made while the fire was held means it does not happen"
    if change == "delete":
        assert service.store.get_task(task.id) is None
    else:
        assert service.runs(task.id) == []
        after = service.get(task.id)
        if change == "edit":
            assert service.store.due_score(due_member_for_task(task.id)) == after.next_run_at > due + 86400
        else:
            assert after.state is TaskState.PAUSED
            assert service.store.due_score(due_member_for_task(task.id)) is None
    clock.now = due + sched.lease + sched.lock_ttl + 5  # the batch's p: entry comes up and undoes the run
    sched.tick()
    assert service.store.get_run(run_id) is None
    assert leftovers(service) == []


def test_a_scheduler_that_lost_the_lock_while_holding_fires_publishes_nothing_and_hands_them_back(service):
    task = echo(service)
    due = task.next_run_at
    clock = Clock(due - 1.0)
    frozen = Scheduler(service.store, service.dispatcher, clock=clock, lock_ttl=0.3)
    standby = Scheduler(service.store, service.dispatcher, clock=clock, lock_ttl=0.3)
    frozen.tick()
    assert frozen.held
    time.sleep(0.5)  # frozen past its lock
    standby.tick()
    assert standby.is_leader and not standby.held, "the held entry is leased: the standby does not see it"

    clock.now = due
    frozen.tick()  # wakes at the due time and tries to publish
    assert queued(service) == [] and not frozen.held and not frozen.is_leader
    assert service.store.due_score(due_member_for_task(task.id)) == due, "handed back at its due time"
    standby.tick()
    [run] = service.runs(task.id)
    assert run.scheduled_for == due and len(queued(service)) == 1
    frozen.tick()
    standby.tick()
    assert len(service.runs(task.id)) == 1 and len(queued(service)) == 1


def test_a_scheduler_that_dies_holding_fires_leaves_them_to_fire_soon_after_they_were_due(service):
    task = echo(service)
    due = task.next_run_at
    clock = Clock(due - 1.0)
    dead = Scheduler(service.store, service.dispatcher, clock=clock, lock_ttl=0.3)
    dead.tick()
    [staged_run] = held_run_ids(dead)
    del dead  # killed: no close, no hand-back
    time.sleep(0.5)  # its lock runs out
    heir = Scheduler(service.store, service.dispatcher, clock=clock, lock_ttl=0.3)
    clock.now = due
    heir.tick()
    assert service.runs(task.id) == [], "the entry is leased a little past its due time"
    clock.now = due + heir.lookahead + heir.lock_ttl
    heir.tick()
    [run] = service.runs(task.id)
    assert run.id != staged_run and len(queued(service)) == 1
    assert run.scheduled_for == pytest.approx(due + heir.lookahead + heir.lock_ttl), \
        "(a claim that ran out fires for the time it was leased to)"
    clock.now = due + heir.lease + heir.lock_ttl + 5
    heir.tick()
    assert service.store.get_run(staged_run) is None, "the dead scheduler's staged run is undone"
    assert leftovers(service) == [] and len(service.runs(task.id)) == 1


def test_fires_published_by_a_scheduler_that_died_before_recording_them_are_recorded_by_their_batch(service):
    tasks = service.create_many([{"name": f"echo {i}", "task_name": "taskman.echo", "delay_seconds": 30}
                                 for i in range(3)])
    due = max(task.next_run_at for task in tasks)
    clock = Clock(due - 1.0)
    sched = Scheduler(service.store, service.dispatcher, clock=clock)
    sched.tick()
    commit = service.store.commit
    service.store.commit = lambda *args, **kwargs: 0  # it dies between sending and recording
    clock.now = due
    try:
        sched.tick()
    finally:
        del service.store.commit
    assert len(queued(service)) == 3, "the messages left"
    assert all(service.runs(task.id) == [] for task in tasks), "their runs are not recorded yet"
    assert commit is not None
    clock.now = due + sched.lease + sched.lock_ttl + 5
    sched.tick()
    for task in tasks:
        [run] = service.runs(task.id)
        assert run.queued_at == due and run.scheduled_for == task.next_run_at
        assert service.get(task.id).state is TaskState.DONE
    assert leftovers(service) == []
    clock.now += 600
    sched.tick()
    assert len(queued(service)) == 3 and all(len(service.runs(task.id)) == 1 for task in tasks)


def test_a_cron_fire_held_across_a_jump_of_the_clock_fires_once_and_goes_on_from_now(service):
    task = service.create({"name": "cron", "task_name": "taskman.echo", "cron_expression": "* * * * *"})
    due = task.next_run_at
    clock = Clock(due - 1.0)
    sched = Scheduler(service.store, service.dispatcher, clock=clock)
    sched.tick()
    assert sched.held
    clock.now = due + 3600.5  # the host's clock jumps an hour ahead while the fire is held
    sched.tick()
    [run] = service.runs(task.id)
    assert run.scheduled_for == due, "the held slot fires (the catch-up) ..."
    next_due = service.store.due_score(due_member_for_task(task.id))
    assert next_due == (clock.now // 60 + 1) * 60, "... once: the next fire is the next slot after now"
    assert service.get(task.id).next_run_at == next_due
    sched.tick()
    assert len(service.runs(task.id)) == 1


def test_a_burst_prepared_ahead_is_published_in_batches_exactly_once(service):
    tasks = []
    for start in range(0, 2500, 1000):
        tasks += service.create_many([{"name": f"burst {i}", "task_name": "taskman.echo", "delay_seconds": 30}
                                      for i in range(start, min(2500, start + 1000))])
    due = max(task.next_run_at for task in tasks)
    clock = Clock(due - 10.0)  # a long look-ahead: however slow preparing is here, it is done before the due time
    sched = Scheduler(service.store, service.dispatcher, clock=clock, lookahead=20.0)
    for _ in range(10):  # a tick claims for a while (a third of the lock's TTL), then carries on in the next
        sched.tick()
        if len(sched.held) == 2500:
            break
    assert len(sched.held) == 2500 and queued(service) == []
    clock.now = due
    sched.tick()
    messages = queued(service)
    assert len(messages) == 2500 and len({message["headers"]["id"] for message in messages}) == 2500
    pipe = service.store.redis.pipeline(transaction=False)
    for task in tasks:
        pipe.zcard(service.store.keys.task_runs(task.id))
    assert pipe.execute() == [1] * 2500
    assert leftovers(service) == [] and not sched.held


@pytest.mark.parametrize(("seconds_per_batch", "claimed_early"), [(0.01, False), (5.0, True)])
def test_a_burst_too_big_to_prepare_within_the_look_ahead_is_claimed_earlier(service, seconds_per_batch,
                                                                              claimed_early):
    tasks = service.create_many([{"name": f"big {i}", "task_name": "taskman.echo", "delay_seconds": 60}
                                 for i in range(600)])
    due = min(task.next_run_at for task in tasks)
    clock = Clock(due - 8.0)  # beyond the 2 s look-ahead, within the hold (look-ahead + the lock's 10 s)
    sched = Scheduler(service.store, service.dispatcher, clock=clock, lookahead=2.0, lock_ttl=10.0)
    sched.prepare_seconds = seconds_per_batch  # as if it had measured preparing 1,000 fires to take so long
    sched.tick()
    assert len(sched.held) == (600 if claimed_early else 0)
    clock.now = max(task.next_run_at for task in tasks)
    for _ in range(10):
        sched.tick()
        if not sched.held:
            break
    assert len(queued(service)) == 600 and leftovers(service) == []


def test_messages_of_fires_that_do_not_happen_are_taken_back_before_anyone_reads_them(service):
    """The due instant pushes every held fire's message and takes back, in the same transaction, those whose
    fires do not happen: a worker blocked on the queue never sees one, and older messages keep their place."""
    store = service.store
    echoes = service.create_many([{"name": f"echo {i}", "task_name": "taskman.echo", "delay_seconds": 30}
                                  for i in range(6)])
    codes = service.create_many([{"name": f"code {i}", "function_code": "def main():\n    return 1\n",
                                  "function_name": "main", "delay_seconds": 30} for i in range(3)])
    code_queue, echo_queue = store.keys.celery_queue("code"), store.keys.celery_queue("registered")
    store.redis.lpush(code_queue, "older 1", "older 2")  # sent before: they stay, in their order
    due = max(task.next_run_at for task in echoes + codes)
    clock = Clock(due - 1.0)
    sched = Scheduler(store, service.dispatcher, clock=clock, lookahead=2.0)
    sched.tick()
    order = {fire.task.id: fire.run.id for fire in sched.held}
    held = [fire.run.id for fire in sched.held]  # the order their messages are pushed in
    assert len(order) == 9 and queued(service) == []
    for task in (echoes[1], echoes[3], codes[0]):
        service.pause(task.id)
    service.delete(echoes[5].id)

    taken: list[str] = []
    worker = store.redis.connection_pool.make_connection()  # a worker blocked on the queue meanwhile

    def listen() -> None:
        worker.send_command("BRPOP", echo_queue, 5)
        taken.append(worker.read_response()[1])

    import threading

    listener = threading.Thread(target=listen)
    listener.start()
    try:
        until = time.monotonic() + 5
        while not any(client.get("cmd") == "brpop" for client in store.redis.client_list()):
            assert time.monotonic() < until, "the listener blocks"
            time.sleep(0.01)
        clock.now = due
        sched.tick()
        listener.join(10)
    finally:
        worker.disconnect()
    happened = [fire_run for task, fire_run in order.items()
                if task not in {echoes[1].id, echoes[3].id, echoes[5].id, codes[0].id}]
    echo_runs = [run_id for run_id in held if run_id in happened and run_id in {order[task.id] for task in echoes}]
    assert len(taken) == 1 and json.loads(taken[0])["headers"]["id"] == echo_runs[0], \
        "the blocked worker gets the first fire that happened, not a message taken back"
    rest = [message["headers"]["id"] for message in reversed(queued(service))]
    assert rest == echo_runs[1:] and len(echo_runs) == 3
    in_code = store.redis.lrange(code_queue, 0, -1)
    assert in_code[2:] == ["older 2", "older 1"]
    assert [json.loads(raw)["headers"]["id"] for raw in reversed(in_code[:2])] == \
        [run_id for run_id in held if run_id in (order[codes[1].id], order[codes[2].id])]
    for task in echoes[:5] + codes:  # (the last echo is deleted)
        assert [run.id for run in service.runs(task.id)] == ([order[task.id]] if order[task.id] in happened else [])
    clock.now = due + sched.lease + sched.lock_ttl + 5  # the batch's p: entry undoes the runs that never went
    sched.tick()
    assert all(store.get_run(order[task.id]) is None for task in (echoes[1], echoes[3], echoes[5], codes[0]))
    assert leftovers(service) == []


def prepared_echoes(service, count: int):
    """``count`` delayed echoes due together (one ``create_many``: one due time), and a scheduler that has
    prepared them a second before."""
    tasks = service.create_many([{"name": f"echo {i}", "task_name": "taskman.echo", "delay_seconds": 30}
                                 for i in range(count)])
    due = tasks[0].next_run_at
    assert {task.next_run_at for task in tasks} == {due}
    clock = Clock(due - 1.0)
    sched = Scheduler(service.store, service.dispatcher, clock=clock, lookahead=2.0)
    sched.tick()
    assert len(sched.held) == count
    return tasks, due, clock, sched


def test_a_group_published_again_after_its_answer_was_lost_sends_nothing_twice(service):
    _, due, _, sched = prepared_echoes(service, 3)
    group = list(sched.held)
    assert service.store.publish(group, due, token=sched.token) == [True] * 3
    assert service.store.publish(group, due, token=sched.token) == [False] * 3, "its runs are no longer staged"
    assert len(queued(service)) == 3 and len({message["headers"]["id"] for message in queued(service)}) == 3


def test_a_published_run_gets_its_send_guard_when_recorded_unless_a_worker_started_it_first(service):
    _, due, clock, sched = prepared_echoes(service, 2)
    waiting, started = (fire.run.id for fire in sched.held)
    commit = service.store.commit
    service.store.commit = lambda *args, **kwargs: 0  # not recorded yet ...
    clock.now = due
    try:
        sched.tick()
    finally:
        del service.store.commit
    assert commit is not None
    assert service.store.due_score(due_member_for_run(waiting)) is None, "... so no guard yet"
    service.store.redis.hset(service.store.keys.run(started), "state", "running")  # a worker took it meanwhile
    clock.now = due + sched.lease + sched.lock_ttl + 5  # the batch's p: entry records them
    sched.tick()
    assert service.store.due_score(due_member_for_run(waiting)) == pytest.approx(due + sched.lease)
    assert service.store.due_score(due_member_for_run(started)) is None, "a started run needs no guard"


def armed_burst(service, count: int = 150):
    """:func:`prepared_echoes`, enough of them that their transaction was opened ahead."""
    tasks, due, clock, sched = prepared_echoes(service, count)
    assert len(sched.armed) == 1
    return tasks, due, clock, sched


def open_transactions(service) -> list[dict]:
    return [client for client in service.store.redis.client_list() if client.get("multi", "-1") != "-1"]


def test_a_burst_due_together_has_its_messages_in_redis_ahead_and_runs_them_at_the_due_instant(service):
    tasks, due, clock, sched = armed_burst(service)
    assert queued(service) == [] and len(open_transactions(service)) == 1, "sent ahead, not run"
    service.pause(tasks[7].id)  # made while armed: its message is taken back
    expected = [fire.run.id for fire in sched.held if fire.task.id != tasks[7].id]
    clock.now = due
    sched.tick()
    assert not sched.armed and open_transactions(service) == []
    assert [message["headers"]["id"] for message in reversed(queued(service))] == expected
    assert all(len(service.runs(task.id)) == (0 if task is tasks[7] else 1) for task in tasks)
    clock.now = due + 600
    sched.tick()
    assert len(queued(service)) == 149 and leftovers(service) == []


def test_a_transaction_opened_ahead_whose_connection_broke_is_published_the_plain_way(service):
    tasks, due, clock, sched = armed_burst(service)
    [transaction] = open_transactions(service)
    service.store.redis.client_kill_filter(_id=transaction["id"])
    clock.now = due
    sched.tick()  # the armed publish raises (the connection is gone): an outage of a moment, the fires kept
    assert sched.outage_since is not None
    assert not sched.armed and len(sched.held) == 150 and queued(service) == []
    sched.tick()
    assert len(queued(service)) == 150 and all(len(service.runs(task.id)) == 1 for task in tasks)
    assert leftovers(service) == []


def test_a_scheduler_frozen_past_its_lock_with_a_transaction_open_publishes_nothing(service):
    tasks, due, clock, frozen = armed_burst(service)
    frozen.lock_ttl = 0.3
    service.store.redis.pexpire(service.store.keys.scheduler_lock, 300)
    time.sleep(0.5)  # frozen past its lock
    standby = Scheduler(service.store, service.dispatcher, clock=clock, lock_ttl=0.3)
    standby.tick()
    assert standby.is_leader
    clock.now = due
    frozen.tick()
    assert queued(service) == [] and not frozen.armed and not frozen.held and open_transactions(service) == []
    assert all(service.store.due_score(due_member_for_task(task.id)) == due for task in tasks), "handed back"
    standby.tick()
    assert len(queued(service)) == 150 and all(len(service.runs(task.id)) == 1 for task in tasks)


def test_a_scheduler_closed_with_a_transaction_open_drops_it_and_hands_its_fires_back(service):
    tasks, due, _, sched = armed_burst(service)
    sched.close()
    assert open_transactions(service) == [] and not sched.armed and not sched.held
    assert queued(service) == [], "nothing was published"
    assert all(service.store.due_score(due_member_for_task(task.id)) == due for task in tasks)


def test_a_group_that_fails_before_it_is_published_drops_its_transaction_and_goes_again_next_tick(service):
    tasks, due, clock, sched = armed_burst(service)
    publish = service.store.publish

    def fails_first(*args, **kwargs):
        del service.store.publish
        raise RuntimeError("failed before publishing")

    service.store.publish = fails_first
    clock.now = due
    with pytest.raises(RuntimeError, match="before publishing"):
        sched.tick()
    assert service.store.publish == publish
    assert open_transactions(service) == [] and not sched.armed, "its transaction is not left open"
    assert len(sched.held) == 150 and queued(service) == []
    sched.tick()
    assert len(queued(service)) == 150 and all(len(service.runs(task.id)) == 1 for task in tasks)
    assert leftovers(service) == []


def test_a_transaction_opened_ahead_closed_on_this_side_sends_nothing_outside_it(service):
    tasks, due, clock, sched = armed_burst(service)
    sched.armed[0].connection.disconnect()  # as a reset of its pool does; redis-py would reconnect on a send
    clock.now = due
    sched.tick()
    assert sched.outage_since is not None, "an outage of a moment"
    assert queued(service) == [] and len(sched.held) == 150
    assert all(service.store.due_score(due_member_for_task(task.id)) != due for task in tasks), "still claimed"
    sched.tick()
    assert len(queued(service)) == 150 and all(len(service.runs(task.id)) == 1 for task in tasks)
    assert leftovers(service) == []


def test_a_publish_whose_script_fails_takes_its_pushes_back_and_goes_again_next_tick(service):
    tasks, due, clock, sched = prepared_echoes(service, 3)
    service.store._joined_wire = lambda fires: "not JSON"  # PUBLISH fails before it begins
    clock.now = due
    try:
        with pytest.raises(redis.ResponseError, match="invalid token"):
            sched.tick()
    finally:
        del service.store._joined_wire
    assert queued(service) == [], "the pushes were taken back"
    assert len(sched.held) == 3 and all(service.runs(task.id) == [] for task in tasks)
    sched.tick()
    assert len(queued(service)) == 3 and all(len(service.runs(task.id)) == 1 for task in tasks)
    assert leftovers(service) == []
