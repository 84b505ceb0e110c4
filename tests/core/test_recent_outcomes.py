"""A task's recent outcomes: the success rate and p95 duration the wide console list shows, kept by the store
in the transaction that ends a run, and read with the task at no extra cost (real Redis)."""

from __future__ import annotations

import uuid

import pytest

from core.models import Run, RunState
from core.service import Service
from core.store import RECENT_OUTCOMES

T0 = 1_780_000_000.0


@pytest.fixture
def service(settings, redis_server):
    """A namespace of its own, removed afterwards."""
    service = Service.from_settings(settings.replace(namespace=f"recent{uuid.uuid4().hex[:6]}"))
    yield service
    keys = service.store.redis.keys(f"{service.store.keys.namespace}:*")
    if keys:
        service.store.redis.delete(*keys)


@pytest.fixture
def task(service):
    task = service.create({"name": "outcomes", "cron_expression": "0 0 1 1 *", "function_name": "f",
                           "function_code": "def f():\n    return 1"})
    service.pause(task.id)
    return task


def start(service, task_id: str, index: int) -> Run:
    """A run of ``task_id`` recorded as running, started at T0 + index."""
    run = Run(id=f"{task_id}-{index}", task_id=task_id, state=RunState.RUNNING, trigger="cron",
              queued_at=T0 + index, started_at=T0 + index)
    pipe = service.store.pipeline()
    service.store.add_run(run, pipe)
    pipe.execute()
    return run


def finish(service, run: Run, state: RunState, duration_ms: float | None) -> None:
    """End ``run`` as the runner does: the transition and the task's summary in one transaction."""
    store = service.store
    pipe = store.pipeline()
    store.transition(run.id, (RunState.RUNNING, RunState.QUEUED), state, pipe=pipe,
                     fields={"finished_at": (run.started_at or T0) + 1, "duration_ms": duration_ms})
    store.set_last_run(run.task_id, run.id, state, duration_ms, pipe)
    pipe.execute()


def test_the_rate_and_p95_of_finished_runs_come_with_the_task(service, task):
    durations = [10.0 * (index + 1) for index in range(20)]  # 10 ms … 200 ms
    for index, duration in enumerate(durations):
        finish(service, start(service, task.id, index), RunState.FAILED if index == 3 else RunState.SUCCEEDED,
               duration)
    read = service.tasks([task.id])[0]
    assert (read.recent_runs, read.recent_ok) == (20, 19)
    assert read.recent_p95_ms == 190.0  # nearest rank: the 19th of 20
    # the latest run's start is kept with its summary
    assert read.last_run_state == "succeeded" and read.last_started_at == T0 + 19 and read.last_duration_ms == 200.0


def test_only_the_latest_runs_count_and_a_timeout_is_a_failure(service, task):
    for index in range(RECENT_OUTCOMES + 5):
        finish(service, start(service, task.id, index), RunState.TIMED_OUT if index < 5 else RunState.SUCCEEDED,
               1000.0 + index)
    read = service.tasks([task.id])[0]
    assert (read.recent_runs, read.recent_ok) == (RECENT_OUTCOMES, RECENT_OUTCOMES)
    later = start(service, task.id, 100)
    finish(service, later, RunState.TIMED_OUT, 5000.0)
    read = service.tasks([task.id])[0]
    assert (read.recent_runs, read.recent_ok) == (RECENT_OUTCOMES, RECENT_OUTCOMES - 1)
    assert read.recent_p95_ms == 1034.0  # one slow run in 30 lies beyond the p95 (the 29th of 30)


def test_stops_and_retried_attempts_are_not_outcomes_and_a_run_counts_once(service, task):
    first = start(service, task.id, 0)
    finish(service, first, RunState.SUCCEEDED, 12.0)
    finish(service, first, RunState.SUCCEEDED, 99.0)  # a stale second finish: refused, and not counted again
    finish(service, start(service, task.id, 1), RunState.STOPPED, 5.0)
    finish(service, start(service, task.id, 2), RunState.RETRYING, 7.0)
    read = service.tasks([task.id])[0]
    assert (read.recent_runs, read.recent_ok, read.recent_p95_ms) == (1, 1, 12.0)
    assert read.last_run_state == "retrying"


def test_a_queued_run_has_not_started_and_an_older_record_reads_as_no_history(service, task):
    finish(service, start(service, task.id, 0), RunState.SUCCEEDED, 12.0)
    pipe = service.store.pipeline()
    service.store.add_run(Run(id=f"{task.id}-q", task_id=task.id, state=RunState.QUEUED, queued_at=T0 + 5), pipe)
    pipe.execute()
    read = service.tasks([task.id])[0]
    assert read.last_run_state == "queued" and read.last_started_at is None
    assert read.recent_runs == 1  # the history stays
    # a task stored before these fields existed
    service.store.redis.hdel(service.store.keys.task(task.id), "recent_runs", "recent_ok", "recent_p95_ms",
                             "last_started_at")
    read = service.tasks([task.id])[0]
    assert (read.recent_runs, read.recent_ok, read.recent_p95_ms, read.last_started_at) == (0, 0, None, None)


def test_a_deleted_task_keeps_no_outcomes_and_a_late_finish_does_not_bring_it_back(service, task):
    finish(service, start(service, task.id, 0), RunState.SUCCEEDED, 12.0)
    running = start(service, task.id, 1)
    outcomes = service.store.keys.task_outcomes(task.id)
    assert service.store.redis.exists(outcomes)
    service.store.redis.hset(service.store.keys.run(running.id), "state", "running")
    pipe = service.store.pipeline()
    service.store.remove_task(task.id, pipe)
    pipe.execute()
    finish(service, running, RunState.SUCCEEDED, 12.0)
    assert not service.store.redis.exists(outcomes)
    assert not service.store.redis.exists(service.store.keys.task(task.id))


def test_a_fire_that_ends_before_the_scheduler_records_it_shows_its_start(service):
    """The scheduler publishes a fire's message, then records it as its task's latest run: a worker may end
    the run in between, and the task then shows that run's state, start and duration, its outcome counted."""
    from core.scheduler import Scheduler

    task = service.create({"name": "quick", "task_name": "taskman.echo", "delay_seconds": 30})
    due = task.next_run_at
    now = [due - 1.0]
    sched = Scheduler(service.store, service.dispatcher, clock=lambda: now[0])
    sched.tick()
    [fire] = sched.held
    service.store.commit = lambda *args, **kwargs: 0  # the recording comes later
    now[0] = due
    try:
        sched.tick()
    finally:
        del service.store.commit
    run = service.store.get_run(fire.run.id)
    service.store.transition(run.id, (RunState.QUEUED,), RunState.RUNNING, fields={"started_at": due + 0.25})
    run.started_at = due + 0.25
    finish(service, run, RunState.SUCCEEDED, 12.0)
    now[0] = due + sched.lease + sched.lock_ttl + 5
    sched.tick()
    read = service.tasks([task.id])[0]
    assert (read.last_run_id, read.last_run_state, read.last_duration_ms) == (run.id, "succeeded", 12.0)
    assert read.last_started_at == due + 0.25
    assert (read.recent_runs, read.recent_ok) == (1, 1)
