"""A run whose message was sent and then lost is sent again, once, about a lease later.

kombu's Redis transport takes a message off its queue's list with BRPOP and only then records it in its
``unacked`` hash: a worker's main process killed between the two loses the message for good. A run's send
guard (``r:<run>``) therefore stays until a worker starts the run. When it comes up, the scheduler looks
for the message: still in its queue's list (a backlog) or in ``unacked`` (reserved by a worker), it waits
another lease; nowhere, it moves the run's fence on and sends the run again.

Each test removes or moves the message in Redis by hand, exactly as the lost BRPOP (or a reservation)
would, while no worker serves the queue, then starts one. The claim lease (the guard's wait) is 2 s.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from core.models import RunState
from core.store import due_member_for_run
from tests.conftest import wait_for
from tests.faults.conftest import CODE, FIGURES, code_worker

LEASE = 2.0


@pytest.fixture
def stack(private_stack):
    """The private stack with a 2 s claim lease and a scheduler; no worker yet."""
    from core.service import Service

    for env in (private_stack.env, private_stack.procs.env):
        env["TASKMAN_CLAIM_LEASE"] = str(LEASE)
    private_stack.service = Service.from_settings(private_stack.settings())
    private_stack.procs.start("beat", "beat", "-l", "INFO", "--pidfile=")
    return private_stack


def queue_key(stack) -> str:
    return stack.service.store.keys.celery_queue("code")


def sent_run(stack, how: str):
    """A code run whose message waits in the ``code`` queue (no worker serves it yet): submitted, or fired by
    the scheduler (a delayed task: its message is pushed by ``PUBLISH``, which writes its guard)."""
    service = stack.service
    spec = {"name": f"lost {uuid.uuid4().hex[:6]}", "function_code": CODE, "function_name": "main"}
    if how == "fired":
        spec["delay_seconds"] = 1
    task = service.create(spec)
    run = wait_for(lambda: (runs := service.runs(task.id)) and runs[0], timeout=30, message="the run")
    wait_for(lambda: service.store.redis.llen(queue_key(stack)) == 1, timeout=30, message="its message queued")
    assert service.store.due_score(due_member_for_run(run.id)) is not None, "its guard was written with it"
    assert service.store.redis.hget(service.store.keys.run(run.id), "sent_fence") == "0"
    return task, run


def fence(stack, run_id: str) -> int:
    return stack.service.store.run_owner(run_id)[2]


def ended(stack, run_id: str):
    return wait_for(lambda: (run := stack.service.get_run(run_id)).state.final and run, timeout=60,
                    message="the run to end")


def starts(stack, run_id: str) -> int:
    return sum(1 for _, entry in stack.service.store.stream_tail("events", 2000)
               if (event := json.loads(entry["event"])).get("run_id") == run_id and event["type"] == "run.started")


def looked_at_twice(stack, run_id: str, first: float) -> None:
    """Wait until the scheduler has claimed the run's guard twice (so its first look is over, whatever it did)."""
    guard = due_member_for_run(run_id)
    wait_for(lambda: (score := stack.service.store.due_score(guard)) is not None and score >= first + 2 * LEASE,
             timeout=30, message="the guard to come up twice")


@pytest.mark.parametrize("how", ["submitted", "fired"])
def test_a_message_lost_after_it_was_sent_is_sent_again_and_runs_once(stack, how):
    task, run = sent_run(stack, how)
    store = stack.service.store
    taken = store.redis.rpop(queue_key(stack))  # a worker's BRPOP, the worker killed before recording it
    assert json.loads(taken)["headers"]["id"] == run.id
    lost_at = time.monotonic()
    stack.procs.start("worker", *code_worker("late"))
    done = ended(stack, run.id)
    took = time.monotonic() - lost_at
    assert done.state is RunState.SUCCEEDED and done.result == "ran"
    assert fence(stack, run.id) == 1, "sent again under a new fence"
    assert starts(stack, run.id) == 1 and len(stack.service.runs(task.id)) == 1, "it ran once"
    assert store.due_score(due_member_for_run(run.id)) is None, "its start removed its guard"
    lines = [entry["msg"] for _, entry in store.stream_tail("logs", 500) if entry.get("run") == run.id]
    assert any("its message was sent but never reached a worker" in line for line in lines), lines
    assert f"run {run.id}: its message was sent but never reached a worker" in stack.log("beat")
    FIGURES[f"lost message ({how}) recovered"] = f"{took:.1f} s (lease {LEASE:.0f} s)"


def test_a_message_waiting_behind_a_backlog_is_not_sent_again(stack):
    _, run = sent_run(stack, "submitted")
    first = stack.service.store.due_score(due_member_for_run(run.id))
    looked_at_twice(stack, run.id, first)
    assert fence(stack, run.id) == 0 and stack.service.store.redis.llen(queue_key(stack)) == 1, "not sent again"
    stack.procs.start("worker", *code_worker("late"))
    done = ended(stack, run.id)
    assert done.state is RunState.SUCCEEDED and fence(stack, run.id) == 0 and starts(stack, run.id) == 1


def reserve(stack, run_id: str, delivered_ago: float) -> tuple[str, str]:
    """Take the run's message off its list and record it in kombu's ``unacked`` hash as delivered
    ``delivered_ago`` seconds ago, as a worker's reservation (prefetch) does; (delivery tag, message)."""
    store = stack.service.store
    raw = store.redis.rpop(queue_key(stack))
    assert json.loads(raw)["headers"]["id"] == run_id
    tag = json.loads(raw)["properties"]["delivery_tag"]
    store.redis.hset(store.keys.celery_unacked, tag, json.dumps([json.loads(raw), "", "code"]))
    store.redis.zadd(store.keys.celery_unacked_index, {tag: time.time() - delivered_ago})
    return tag, raw


@pytest.mark.parametrize("holder", ["lists it", "has not beaten since", "stopped listing (holds too many)"])
def test_a_message_a_live_worker_may_hold_is_not_sent_again(stack, holder):
    """Reserved by a worker that is alive: its heartbeat lists the message, or it was delivered after the
    worker's last beat, or the worker no longer says what it holds (what it listed before no longer counts).
    Each waits (a lease at a time)."""
    _, run = sent_run(stack, "submitted")
    store = stack.service.store
    first = store.due_score(due_member_for_run(run.id))
    if holder == "lists it":  # beating before its guard can come up, then every second
        store.heartbeat("busy@box", life="busy@box#1", holds=[run.id])
    if holder.startswith("stopped listing"):
        store.heartbeat("busy@box", life="busy@box#1", holds=[])  # it held nothing then
        store.heartbeat("busy@box", life="busy@box#1", holds=None)  # and now too many to list
    tag, raw = reserve(stack, run.id, delivered_ago=0.0 if holder == "has not beaten since" else 60.0)
    stop = threading.Event()

    def beat() -> None:  # a live worker's heartbeat, every second
        while not stop.wait(1.0 if holder != "has not beaten since" else 0):
            store.heartbeat("busy@box", life="busy@box#1", holds=None if holder.startswith("stopped listing") else
                            [run.id] if holder == "lists it" else [])
            if holder == "has not beaten since":
                return  # once, before the delivery's time + 1 s; then silent but within the grace (30 s)

    beating = threading.Thread(target=beat, daemon=True)
    if holder == "has not beaten since":
        beat()
    else:
        beating.start()
    try:
        looked_at_twice(stack, run.id, first)
    finally:
        stop.set()
    assert fence(stack, run.id) == 0 and store.redis.llen(queue_key(stack)) == 0, "not sent again"
    assert store.redis.hexists(store.keys.celery_unacked, tag), "its reservation stays"
    # kombu restores an unacknowledged message to its queue (after the visibility window): do it now
    store.redis.hdel(store.keys.celery_unacked, tag)
    store.redis.zrem(store.keys.celery_unacked_index, tag)
    store.redis.lpush(queue_key(stack), raw)
    stack.procs.start("worker", *code_worker("late"))
    done = ended(stack, run.id)
    assert done.state is RunState.SUCCEEDED and fence(stack, run.id) == 0 and starts(stack, run.id) == 1


@pytest.mark.parametrize("holder", ["no worker", "a dead worker", "a dead worker, a backlog behind",
                                    "a worker its supervisor saw exit"])
def test_a_message_prefetched_by_a_worker_that_died_is_sent_again_and_runs_once(stack, holder):
    """Reserved (prefetched) and never started, by a worker that is gone: kombu would give it back only after
    its visibility timeout (an hour). The guard sends the run again under a new fence and drops the stale
    reservation, so kombu never redelivers it. A dead worker's heartbeat listed what it held: those runs are
    looked for even while other messages wait in the queue (a plain guard then waits, sparing the search). A
    worker whose supervisor (``taskman up``) saw it exit is dead at once, its last beat however recent."""
    task, run = sent_run(stack, "submitted")
    store = stack.service.store
    tag, _ = reserve(stack, run.id, delivered_ago=60.0)
    life = "gone@box#0123456789ab"
    if holder.startswith("a dead worker"):  # it listed the run, then fell silent longer than the grace (30 s)
        store.heartbeat("gone@box", life=life, holds=[run.id])
        store.redis.zadd(store.keys.worker_lives, {life: store.server_time() - 120})
    if holder == "a worker its supervisor saw exit":  # it listed the run a moment ago, then died
        store.heartbeat("gone@box", life=life, holds=[run.id])
        assert stack.service.worker_exited("0123456789ab") == 1
    if holder.endswith("a backlog behind"):
        sent_run(stack, "submitted")
    found_at = time.monotonic()
    wait_for(lambda: fence(stack, run.id) == 1, timeout=30, message="the run sent again")
    assert not store.redis.hexists(store.keys.celery_unacked, tag), "the stale reservation is gone"
    assert store.redis.zscore(store.keys.celery_unacked_index, tag) is None
    stack.procs.start("worker", *code_worker("late"))
    done = ended(stack, run.id)
    took = time.monotonic() - found_at
    assert done.state is RunState.SUCCEEDED and starts(stack, run.id) == 1 and len(stack.service.runs(task.id)) == 1
    assert not store.redis.hexists(store.keys.worker_held, life), "what a dead worker held is forgotten"
    lines = [entry["msg"] for _, entry in store.stream_tail("logs", 500) if entry.get("run") == run.id]
    assert any("was taken by a worker that fell silent before starting it" in line for line in lines), lines
    FIGURES[f"prefetched message of {holder} recovered"] = f"{took:.1f} s (lease {LEASE:.0f} s)"
