"""A run's message as ``core.dispatch`` builds it is the message Celery's ``send_task`` makes.

The scheduler and bulk submits build messages themselves (tens of microseconds, not a millisecond) and
push them onto the queues' lists; a worker must not be able to tell them from Celery's. Each kind of task
is sent both ways into a namespace no worker serves, and the two messages compared field by field; only
what differs per message or per process is set aside: the delivery tag (a fresh uuid per message), the
origin (the sending process) and reply_to (an id per Celery app).
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest

from core.dispatch import Dispatcher
from core.lifecycle import new_run


@pytest.fixture
def service(settings, redis_server):
    from core.service import Service

    own = settings.replace(namespace=f"msg{uuid.uuid4().hex[:8]}")
    return Service.from_settings(own)


SPECS = {
    "code": {"name": "code", "function_code": "def main(n):\n    return n\n", "function_name": "main",
             "kwargs": {"n": 1}, "timeout": 7, "delay_seconds": 600},
    "api": {"name": "api", "api_url": "http://127.0.0.1:9/x", "method": "POST", "delay_seconds": 600},
    "registered": {"name": "registered", "task_name": "taskman.echo", "args": [1, "two", {"3": [4.5]}],
                   "kwargs": {"token": "s3cr3t", "nested": {"a": None}}, "delay_seconds": 600},
}


def comparable(raw: str) -> dict:
    message = json.loads(raw)
    message["properties"].pop("delivery_tag")
    message["properties"].pop("reply_to")
    message["headers"].pop("origin")
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_a_built_message_is_the_message_send_task_makes(service, redis_server, kind):
    task = service.create(SPECS[kind])
    run = new_run(task, "delay", time.time())
    celery_way = Dispatcher(None, service.settings.replace(celery_events=True),
                            redis_url=redis_server.url)
    assert not celery_way.builds_messages and service.dispatcher.builds_messages
    celery_way.send(task, run, fence=3)
    queue, built = service.dispatcher.message(task, run, fence=3)
    [sent] = service.store.redis.lrange(service.store.keys.celery_queue(queue), 0, -1)
    assert comparable(built) == comparable(sent)


def test_send_many_pushes_every_message_in_order_onto_its_queue(service):
    tasks = service.create_many([SPECS["code"], SPECS["registered"], SPECS["code"]])
    runs = [new_run(task, "delay", time.time()) for task in tasks]
    service.dispatcher.send_many(list(zip(tasks, runs, strict=True)))
    code = service.store.redis.lrange(service.store.keys.celery_queue("code"), 0, -1)
    registered = service.store.redis.lrange(service.store.keys.celery_queue("registered"), 0, -1)
    # LPUSH puts each at the head; workers take from the tail: the first sent is the first taken.
    assert [json.loads(raw)["headers"]["id"] for raw in reversed(code)] == [runs[0].id, runs[2].id]
    assert [json.loads(raw)["headers"]["id"] for raw in registered] == [runs[1].id]
