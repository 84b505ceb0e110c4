"""A bulk create writes through one ``BATCH`` script: the same records a transaction of commands wrote.

``Service.create_many`` hands its writes to ``Store.batch()`` (one JSON document, run as one command) rather
than a MULTI pipeline. What a created task leaves must not change: its hash (an immediate one with its
latest run), its run and history, its due entry, one ``task.created`` event and one audit entry per task,
the messages queued, each run recorded as sent, and its send guard kept until it starts.
"""

from __future__ import annotations

import json
import uuid

import pytest

from core.models import RunState, TaskState
from core.store import due_member_for_task


@pytest.fixture
def service(settings, redis_server):
    from core.service import Service

    own = settings.replace(namespace=f"bulk{uuid.uuid4().hex[:8]}")
    return Service.from_settings(own).acting_as("cli:tester")


CODE = {"function_code": "def main(n=1):\n    return n\n", "function_name": "main"}


def test_a_bulk_create_leaves_every_record_a_create_did(service):
    specs = ([dict(CODE, name=f"now {i}", kwargs={"n": i}) for i in range(30)]
             + [dict(CODE, name=f"later {i}", delay_seconds=3600) for i in range(30)]
             + [dict(CODE, name=f"cron {i}", cron_expression="0 0 1 1 *") for i in range(30)])
    tasks = service.create_many(specs)
    store, keys = service.store, service.store.keys
    assert [task.name for task in service.list_tasks(limit=200)] == [task.name for task in reversed(tasks)]
    queued = store.redis.lrange(keys.celery_queue("code"), 0, -1)
    run_ids = {json.loads(raw)["headers"]["id"] for raw in queued}
    for task in tasks:
        stored = store.redis.hgetall(keys.task(task.id))
        assert json.loads(stored["spec"]) == task.spec.to_dict()
        if task.name.startswith("now"):
            [run] = service.runs(task.id)
            assert stored["state"] == TaskState.DONE.value and stored["last_run_id"] == run.id
            assert stored["last_run_state"] == "queued" and run.state is RunState.QUEUED and run.trigger == "now"
            assert run.id in run_ids
            assert store.due_score(f"r:{run.id}") == run.queued_at + service.settings.claim_lease, \
                "its send guard stays until it starts"
            assert store.redis.hget(keys.run(run.id), "sent_fence") == "0", "it is known to be sent"
        else:
            assert service.runs(task.id) == [] and stored["state"] == TaskState.ACTIVE.value
            assert store.due_score(due_member_for_task(task.id)) == float(stored["next_run_at"]) == task.next_run_at
    assert len(queued) == 30
    events = [json.loads(fields["event"]) for _, fields in store.stream_tail("events", 500)]
    assert sorted(event["task_id"] for event in events if event["type"] == "task.created") == \
        sorted(task.id for task in tasks)
    trail = service.audit_entries(limit=200)
    assert sorted((entry["actor"], entry["action"], entry["target"]) for entry in trail) == \
        sorted(("cli:tester", "create", task.id) for task in tasks)
    assert {entry["target"]: entry["detail"] for entry in trail}[tasks[0].id] == \
        {"name": "now 0", "kind": "code", "mode": "immediate"}


def test_a_batch_of_kinds_queues_each_message_on_its_own_queue_in_submit_order(service):
    """The batch's pushes to each queue are merged (their messages passed beside the JSON document): every
    message lands once, on its kind's queue, oldest first for the worker (BRPOP takes the list's right end)."""
    http = {"api_url": "http://127.0.0.1:9/never"}
    kinds = [CODE, http, CODE, CODE, http] * 5
    tasks = service.create_many([dict(spec, name=f"mixed {i}") for i, spec in enumerate(kinds)])
    store = service.store
    for queue, spec in (("code", CODE), ("http", http)):
        held = [json.loads(raw)["headers"]["id"] for raw in store.redis.lrange(store.keys.celery_queue(queue), 0, -1)]
        expected = [task.runs[0].id for task, kind in zip(tasks, kinds, strict=True) if kind is spec]
        assert list(reversed(held)) == expected, queue
        assert all(store.redis.hget(store.keys.run(run_id), "sent_queue") == queue for run_id in expected)
