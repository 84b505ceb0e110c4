"""A registered task's run, as a worker's pool process records it: its start reads the task's definition (named
by the message's header) in the same round trip, and its end is recorded without reading the run again.

The runner is driven here directly on a real Redis (no worker serves this namespace); tests/e2e/test_runs.py
runs registered tasks through real workers.
"""

from __future__ import annotations

import json
import uuid

import pytest

from core.dispatch import TASK_HEADER
from core.models import RunState
from core.runner import Runner


@pytest.fixture
def service(settings, redis_server):
    from core.service import Service

    return Service.from_settings(settings.replace(namespace=f"reg{uuid.uuid4().hex[:8]}"))


def queued_run(service, name: str):
    task = service.create({"name": name, "task_name": "taskman.echo", "kwargs": {"api_key": "s3cr3t"}})
    [message] = service.store.redis.lrange(service.store.keys.celery_queue("registered"), 0, -1)
    service.store.redis.delete(service.store.keys.celery_queue("registered"))  # nobody serves it: no stray copy
    assert json.loads(message)["headers"][TASK_HEADER] == task.id, "the message names its task"
    return task, task.runs[0]


def lines_of(service, run_id: str) -> list[str]:
    return [entry["msg"] for _, entry in service.store.stream_tail("logs", 500) if entry.get("run") == run_id]


def test_a_run_started_with_its_task_named_ends_without_reading_it_again(service, monkeypatch):
    task, run = queued_run(service, "named")
    runner = Runner(service.store, service.settings, "box:1")
    started = runner.registered_started(run.id, 0, "n@box#1", task_id=task.id)
    assert started is not None and started.task is not None and started.task.id == task.id

    def no_reads(*args, **kwargs):
        raise AssertionError("the end of a run this process started reads nothing")

    monkeypatch.setattr(service.store, "get_run", no_reads)
    monkeypatch.setattr(service.store, "get_task", no_reads)
    runner.registered_finished(run.id, RunState.SUCCEEDED, result={"echo": "s3cr3t"}, fence=0)
    monkeypatch.undo()
    done = service.get_run(run.id)
    assert done.state is RunState.SUCCEEDED and done.result == {"echo": "***"}, "secret kwargs masked as before"
    lines = lines_of(service, run.id)
    assert lines[0] == f"run {run.id} started on box:1 (attempt 1/1)"
    assert lines[-1].startswith(f"run {run.id} succeeded in ") and len(lines) == 2


def test_a_run_stopped_while_it_ran_keeps_its_stop_and_gets_no_closing_line(service):
    task, run = queued_run(service, "stopped meanwhile")
    runner = Runner(service.store, service.settings, "box:1")
    assert runner.registered_started(run.id, 0, "n@box#1", task_id=task.id) is not None
    service.stop(task.id)
    assert service.get_run(run.id).state is RunState.STOPPED
    runner.registered_finished(run.id, RunState.SUCCEEDED, result=1, fence=0)
    assert service.get_run(run.id).state is RunState.STOPPED
    assert not [line for line in lines_of(service, run.id) if "succeeded" in line], lines_of(service, run.id)


def test_a_message_naming_another_task_is_not_trusted_for_the_definition(service):
    task, run = queued_run(service, "mine")
    other, _ = queued_run(service, "other")
    runner = Runner(service.store, service.settings, "box:1")
    started = runner.registered_started(run.id, 0, "n@box#1", task_id=other.id)
    assert started is not None and run.id not in runner._registered, "its end reads the run's own task"
    runner.registered_finished(run.id, RunState.SUCCEEDED, result={"echo": "s3cr3t"}, fence=0)
    assert service.get_run(run.id).result == {"echo": "***"}


def test_only_workers_that_serve_a_sendable_queue_are_named_for_a_registered_task(service):
    from core.errors import InvalidSpec

    store = service.store
    store.record_registered(["ops.add", "taskman.echo"], "code@box", ["code"])
    store.record_registered(["ops.add", "taskman.echo"], "http@box", ["http"])
    with pytest.raises(InvalidSpec, match="ops.add"):  # no worker that could ever take its message
        service.create({"name": "add", "task_name": "ops.add"})
    store.record_registered(["ops.add", "taskman.echo"], "registered@box", ["registered", "reports"])
    names = store.registered()
    assert names["ops.add"] == {"workers": ["registered@box"], "queues": ["registered", "reports"]}
    assert set(store.worker_reports()) == {"code@box", "http@box", "registered@box"}, "every report is kept"
    assert service.create({"name": "add", "task_name": "ops.add"}).spec.task_name == "ops.add"
