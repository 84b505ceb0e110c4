"""The Celery side of taskman: the app's configuration and the sending of run messages.

Front ends and the scheduler send runs by task *name* (``send_task``), so they need the broker
configuration but none of the worker's code. The run id is the Celery task id, which lets every
Celery signal and ``celery inspect`` answer name the run directly. Only JSON crosses the broker.
"""

from __future__ import annotations

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
from core.store import Keys

if TYPE_CHECKING:
    from celery import Celery

OWN_TASKS = INTERNAL_TASKS
FENCE_HEADER = "taskman_fence"
"""Message header carrying the run's fence (see ``core.store``): a worker refuses a stale one."""
__all__ = ["CODE_QUEUE", "CODE_TASK", "HTTP_QUEUE", "HTTP_TASK", "OWN_TASKS", "REGISTERED_QUEUE", "Dispatcher",
           "make_celery"]


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

    @property
    def app(self) -> Celery:
        if self._app is None:
            assert self._redis_url is not None, "a Dispatcher without an app needs a redis_url"
            self._app = make_celery(self.settings, self._redis_url)
        return self._app

    def timeout_for(self, task: Task) -> float:
        return min(task.spec.timeout or self.settings.default_timeout, self.settings.max_timeout)

    def send(self, task: Task, run: Run, fence: int = 0, *, producer: Any = None) -> None:
        """Queue ``run`` of ``task`` on the queue that serves its kind, under ``fence``."""
        timeout = self.timeout_for(task)
        headers = {FENCE_HEADER: fence}
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
        with self.app.producer_or_acquire() as producer, producer.batch(max_size=len(batch) + 1):
            for task, run in batch:
                self.send(task, run, producer=producer)

    def revoke(self, run_id: str, *, terminate: bool) -> None:
        """Tell every worker to drop ``run_id``; with ``terminate``, kill the process running it."""
        self.app.control.revoke(run_id, terminate=terminate, signal="SIGKILL")
