"""The Celery side of taskman: the app's configuration and the sending of run messages.

Front ends and the scheduler send runs by task *name*, so they need the broker configuration but
none of the worker's code. The run id is the Celery task id, which lets every Celery signal and
``celery inspect`` answer name the run directly. Only JSON crosses the broker.

A run's message is built here, not by Celery's ``send_task``: :meth:`Dispatcher.message` writes the
Celery protocol-2 message (headers, properties, base64 JSON body) as kombu's Redis transport stores it
in a queue's list, from parts made once per dispatcher, in tens of microseconds rather than a
millisecond; ``tests/core/test_messages.py`` holds it equal to what ``send_task`` makes. The broker is
taskman's own Redis (``core.store.Keys.celery_queue`` names a queue's list), so a message is published
by an ``LPUSH``: in the transaction that writes a new run (a submit, a "run now":
``core.lifecycle.Launcher.push_with``), in a transaction for a batch (:meth:`Dispatcher.send_many`), each
recording on the run the fence and queue its message was sent with (``core.store.MARK_SENT``: its send
guard then knows it was sent), or inside the scheduler's ``PUBLISH`` script, atomically with the fire it
belongs to. With
Celery's task events on (``celery_events``, for Flower) messages go through ``send_task``, which also sends
the task-sent event (and the sends are recorded on the runs just after).
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections import defaultdict
from json.encoder import encode_basestring_ascii as _quote  # a JSON string, as json.dumps writes it
from typing import TYPE_CHECKING, Any

from core.config import Settings
from core.errors import InvalidSpec
from core.models import (
    CODE_QUEUE,
    CODE_TASK,
    HTTP_QUEUE,
    HTTP_TASK,
    INTERNAL_TASKS,
    REGISTERED_QUEUE,
    Kind,
    Run,
    Task,
    internal_task_refusal,
    queue_refusal,
)
from core.store import MARK_SENT, Keys

if TYPE_CHECKING:
    from celery import Celery

OWN_TASKS = INTERNAL_TASKS
FENCE_HEADER = "taskman_fence"
"""Message header carrying the run's fence (see ``core.store``): a worker refuses a stale one."""
TASK_HEADER = "taskman_task"
"""Message header naming the run's task: a registered task's worker reads its definition with the run's start
(taskman's own tasks have it as an argument)."""
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
"""The third part of a protocol-2 body: no callbacks, no chain, no chord."""
REPR_MAXSIZE = 1024
"""Celery's ``argsrepr_maxsize`` and ``kwargsrepr_maxsize``: how much of the arguments a message's headers show."""
__all__ = ["CODE_QUEUE", "CODE_TASK", "FENCE_HEADER", "HTTP_QUEUE", "HTTP_TASK", "OWN_TASKS", "REGISTERED_QUEUE",
           "TASK_HEADER", "Dispatcher", "make_celery"]


def make_celery(settings: Settings, redis_url: str, task_cls: type | None = None) -> Celery:
    """A Celery app configured the way every taskman process must agree on (``task_cls``: the base of the
    tasks defined on it; the worker's guards every run's start)."""
    from celery import Celery  # here, not above: a front end that only reads tasks never loads Celery

    app = Celery("taskman", broker=redis_url, set_as_current=False, task_cls=task_cls)
    visibility = int(settings.max_timeout + settings.kill_grace + settings.redelivery_margin)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=settings.celery_events,
        task_send_sent_event=settings.celery_events,
        task_default_queue=REGISTERED_QUEUE,
        task_routes={CODE_TASK: {"queue": CODE_QUEUE}, HTTP_TASK: {"queue": HTTP_QUEUE}},
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "global_keyprefix": Keys(settings.namespace).celery_prefix,
            "visibility_timeout": visibility,
            "unacked_restore_interval": max(1, min(10, visibility // 4)),
            "unacked_restore_throttle": 1,
        },
        imports=list(settings.imports),
        beat_scheduler="beat:TaskmanScheduler",
        worker_hijack_root_logger=False,
    )
    return app


class Dispatcher:
    """Sends run messages and termination requests to the workers."""

    def __init__(self, app: Celery | None, settings: Settings, *, redis_url: str | None = None) -> None:
        """Send through ``app``; or, with ``app=None``, through one made from ``redis_url`` on first use."""
        self._app = app
        self._redis_url = redis_url
        self.settings = settings
        self._origin_name, self._origin_pid = "", 0
        self._templates: dict[tuple, tuple[list[str], list[str]]] = {}

    @property
    def app(self) -> Celery:
        if self._app is None:
            assert self._redis_url is not None, "a Dispatcher without an app needs a redis_url"
            self._app = make_celery(self.settings, self._redis_url)
        return self._app

    def timeout_for(self, task: Task) -> float:
        return min(task.spec.timeout or self.settings.default_timeout, self.settings.max_timeout)

    @property
    def builds_messages(self) -> bool:
        """Whether :meth:`message` makes this dispatcher's messages (not with Celery's task events on: those
        need ``send_task``, which sends the task-sent event)."""
        return not self.settings.celery_events

    def route(self, task: Task, run: Run) -> tuple[str, str, list, dict, list[float | None]]:
        """(Celery task name, queue, args, kwargs, [hard, soft] time limits) of ``run``'s message. Raises
        ``InvalidSpec`` for a registered task naming an internal task or queue (validation refuses these; a
        definition stored before it did must still never reach the broker)."""
        timeout = self.timeout_for(task)
        limits: list[float | None] = [float(timeout + self.settings.kill_grace), float(timeout)]
        if task.kind is Kind.CODE:
            return CODE_TASK, CODE_QUEUE, [run.id, task.id], {}, limits
        if task.kind is Kind.API:
            return HTTP_TASK, HTTP_QUEUE, [run.id, task.id], {}, [None, None]
        spec = task.spec.with_overrides(run.overrides)  # a run may be given other arguments
        queue = spec.queue or REGISTERED_QUEUE
        if refusal := internal_task_refusal(spec.task_name or ""):
            raise InvalidSpec("task_name", refusal)
        if refusal := queue_refusal(queue):
            raise InvalidSpec("queue", refusal)
        return spec.task_name or "", queue, list(spec.args), dict(spec.kwargs), limits

    def message(self, task: Task, run: Run, fence: int = 0) -> tuple[str, str]:
        """(queue, message) for ``run`` of ``task`` under ``fence``: the JSON kombu's Redis transport would
        push onto the queue's list for ``send_task`` (the same headers, properties and body), so a worker
        cannot tell them apart. Raises ``InvalidSpec`` as :meth:`route` does."""
        name, queue, args, kwargs, limits = self.route(task, run)
        if task.kind is not Kind.REGISTERED:
            argsrepr, kwargsrepr = repr(args), "{}"
        elif not args and not kwargs:
            argsrepr, kwargsrepr = "[]", "{}"
        else:
            from celery.utils.saferepr import saferepr

            argsrepr, kwargsrepr = saferepr(args, REPR_MAXSIZE), saferepr(kwargs, REPR_MAXSIZE)
        body = base64.b64encode(json.dumps([args, kwargs, _EMBED]).encode()).decode()
        values = {"body": _quote(body), "id": _quote(run.id), "argsrepr": _quote(argsrepr),
                  "kwargsrepr": _quote(kwargsrepr), "tag": _quote(str(uuid.uuid4())), "fence": str(int(fence)),
                  "task": _quote(task.id)}
        pieces, fields = self._template(name, queue, limits)
        filled = [pieces[0]]
        for field, piece in zip(fields, pieces[1:], strict=True):
            filled.append(values[field])
            filled.append(piece)
        return queue, "".join(filled)

    def _template(self, name: str, queue: str, limits: list) -> tuple[list[str], list[str]]:
        """The message of a task name, queue and time limits as JSON text cut where each run's own values go
        (the pieces, and the value that goes after each but the last), made once."""
        key = (name, queue, tuple(limits), self._origin, self._reply_to)
        found = self._templates.get(key)
        if found is None:
            def mark(field: str) -> str:
                return f"\ue000{field}\ue000"

            text = json.dumps({
                "body": mark("body"), "content-encoding": "utf-8", "content-type": "application/json",
                "headers": {"lang": "py", "task": name, "id": mark("id"), "shadow": None, "eta": None,
                            "expires": None, "group": None, "group_index": None, "retries": 0, "timelimit": limits,
                            "root_id": mark("id"), "parent_id": None, "argsrepr": mark("argsrepr"),
                            "kwargsrepr": mark("kwargsrepr"), "origin": self._origin, "ignore_result": None,
                            "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
                            FENCE_HEADER: mark("fence"), TASK_HEADER: mark("task")},
                "properties": {"correlation_id": mark("id"), "reply_to": self._reply_to, "delivery_mode": 2,
                               "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
                               "body_encoding": "base64", "delivery_tag": mark("tag")}})
            cut = text.split('"\\ue000')  # each marked value, quotes included, becomes a cut
            pieces, fields = [cut[0]], []
            for part in cut[1:]:
                field, _, rest = part.partition('\\ue000"')
                fields.append(field)
                pieces.append(rest)
            found = self._templates[key] = (pieces, fields)
        return found

    @property
    def _origin(self) -> str:
        """Celery's ``origin`` header: the sending process (``gen<pid>@<host>``), as ``send_task`` names it."""
        if self._origin_pid != os.getpid():
            from celery.utils.nodenames import anon_nodename

            self._origin_name, self._origin_pid = anon_nodename(), os.getpid()
        return self._origin_name

    @property
    def _reply_to(self) -> str:
        return self.app.thread_oid

    def publish(self, messages: list[tuple[str, str, str, int]]) -> None:
        """Push ``messages`` ((queue, message, run id, fence), in order) onto their queues' lists and record
        each run's ``sent_fence`` and ``sent_queue``, in one transaction (one round trip)."""
        if not messages:
            return
        by_queue: dict[str, list[str]] = defaultdict(list)
        for queue, body, _, _ in messages:
            by_queue[queue].append(body)
        with self.app.producer_or_acquire() as producer:
            with producer.channel.conn_or_acquire() as client:  # kombu's client: it adds the key prefix
                pipe = client.pipeline(transaction=True)
                for queue, bodies in by_queue.items():
                    pipe.lpush(queue, *bodies)
                self._mark_sent(pipe, [(run_id, fence, queue) for queue, _, run_id, fence in messages])
                pipe.execute()

    def _mark_sent(self, pipe: Any, sent: list[tuple[str, int, str]]) -> None:
        """Queue in ``pipe`` (kombu's: it leaves EVAL's keys alone, so they are given whole) the record of the
        fence and queue each run's message was sent with ((run id, fence, queue) triples)."""
        keys = Keys(self.settings.namespace)
        for start in range(0, len(sent), 1000):
            chunk = sent[start:start + 1000]
            pipe.eval(MARK_SENT, len(chunk), *(keys.run(run_id) for run_id, _, _ in chunk),
                      *(item for _, fence, queue in chunk for item in (str(int(fence)), queue)))

    def send(self, task: Task, run: Run, fence: int = 0, *, producer: Any = None) -> None:
        """Queue ``run`` of ``task`` on the queue that serves its kind, under ``fence``, and record on the run
        that it was (``core.store.MARK_SENT``). ``producer``: a list collecting (queue, message, run id, fence)
        to :meth:`publish` together (:meth:`send_many`), or a kombu producer (with Celery's task events on:
        the caller records the sends, :meth:`mark_sent`)."""
        if self.builds_messages:
            queue, message = self.message(task, run, fence)
            if isinstance(producer, list):
                producer.append((queue, message, run.id, fence))
            else:
                self.publish([(queue, message, run.id, fence)])
            return
        self._send_task(task, run, fence, producer)
        if producer is None:
            self.mark_sent([(task, run, fence)])

    def mark_sent(self, sent: list[tuple[Task, Run, int]]) -> None:
        """Record that these runs' messages were sent (by ``send_task``) under these fences, in one round trip."""
        with self.app.producer_or_acquire() as producer:
            with producer.channel.conn_or_acquire() as client:
                pipe = client.pipeline(transaction=False)
                self._mark_sent(pipe, [(run.id, fence, self.route(task, run)[1]) for task, run, fence in sent])
                pipe.execute()

    def _send_task(self, task: Task, run: Run, fence: int, producer: Any) -> None:
        timeout = self.timeout_for(task)
        headers = {FENCE_HEADER: fence, TASK_HEADER: task.id}
        # declare=[]: every message goes straight to its queue's list (the anonymous exchange), which needs no
        # binding, so declaring the queue again on each send would only cost time (workers declare theirs).
        options = {"soft_time_limit": timeout, "time_limit": timeout + self.settings.kill_grace, "headers": headers,
                   "producer": producer, "declare": []}
        spec = task.spec.with_overrides(run.overrides)  # a run may be given other arguments
        if task.kind is Kind.CODE:
            self.app.send_task(CODE_TASK, args=[run.id, task.id], task_id=run.id, queue=CODE_QUEUE, **options)
        elif task.kind is Kind.API:
            self.app.send_task(HTTP_TASK, args=[run.id, task.id], task_id=run.id, queue=HTTP_QUEUE, headers=headers,
                               producer=producer, declare=[])
        else:
            # Validation refuses these; a definition stored before it did must still never reach the broker.
            queue = spec.queue or REGISTERED_QUEUE
            if refusal := internal_task_refusal(spec.task_name or ""):
                raise InvalidSpec("task_name", refusal)
            if refusal := queue_refusal(queue):
                raise InvalidSpec("queue", refusal)
            self.app.send_task(spec.task_name, args=list(spec.args), kwargs=dict(spec.kwargs), task_id=run.id,
                               queue=queue, **options)

    def send_many(self, batch: list[tuple[Task, Run]]) -> None:
        """Queue the first attempt of each run in ``batch`` in few round trips: one producer, its messages
        pipelined by kombu's publish batch. If it raises, any of them may or may not have been queued."""
        if not batch:
            return
        if self.builds_messages:
            messages: list[tuple[str, str, str, int]] = []
            for task, run in batch:
                self.send(task, run, producer=messages)
            self.publish(messages)
            return
        with self.app.producer_or_acquire() as producer, producer.batch(max_size=len(batch) + 1):
            for task, run in batch:
                self.send(task, run, producer=producer)
        self.mark_sent([(task, run, 0) for task, run in batch])

    def revoke(self, run_id: str, *, terminate: bool) -> None:
        """Tell every worker to drop ``run_id``; with ``terminate``, kill the process running it."""
        self.app.control.revoke(run_id, terminate=terminate, signal="SIGKILL")
