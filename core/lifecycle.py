"""A run's life up to its Celery message: the one place runs are made, guarded, sent or failed.

Every run is written together with its *send guard*: its own due entry (``r:<run>``), due when the
claim lease ends. A process that dies between writing a run and sending its message leaves the
guard behind, and the scheduler sends the run when it comes up; a sent run removes it. So no path
leaves a run ``queued`` with nothing behind it:

- a submit or "run now" writes the run and its guard in one transaction, sends, and removes the
  guard; a send that raises fails the run at once (someone is waiting for the answer);
- a scheduler fire prepared ahead (``core.scheduler``'s look-ahead) needs no guard: ``PUBLISH`` pushes
  its message in the same script that moves its due entry on, and a prepared run never published is
  undone by its batch's entry; a fire made the plain way (Celery's task events on, or a message that could
  not be prepared) writes the run and its guard in the ``FIRE`` script, and a send that raises leaves the
  guard, so the run is sent again after the lease (the broker is likely in Redis's outage);
- a retry is written by the ``RETRY`` script in the transaction that records the failed attempt,
  its due entry (the backoff's end) being its guard;
- a dead worker's run is requeued under a new fence with a guard in the ``REQUEUE`` script.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

from core.events import EventType
from core.models import Run, RunState, Task
from core.store import Store, due_member_for_run

if TYPE_CHECKING:
    import redis

    from core.dispatch import Dispatcher
    from core.store import Batch


def new_id() -> str:
    """A short, unique, URL-safe id for tasks and runs."""
    return uuid.uuid4().hex[:16]


def new_run(task: Task, trigger: str, now: float, *, scheduled_for: float | None = None,
            overrides: dict | None = None) -> Run:
    """A task's first attempt, queued at ``now`` (``trigger``: now, manual, cron or delay); ``overrides``:
    the arguments or request body this run gets instead of the task's (``core.models.check_overrides``)."""
    return Run(id=new_id(), task_id=task.id, state=RunState.QUEUED, attempt=1,
               max_attempts=task.spec.max_retries + 1, trigger=trigger, queued_at=now, scheduled_for=scheduled_for,
               overrides=overrides or None)


def next_attempt(run: Run, task: Task | None, now: float) -> Run:
    """The attempt that follows a failed ``run``, due when its exponential backoff ends."""
    backoff = (task.spec.retry_backoff if task else 1.0) * (2 ** (run.attempt - 1))
    return Run(id=new_id(), task_id=run.task_id, state=RunState.QUEUED, attempt=run.attempt + 1,
               max_attempts=run.max_attempts, trigger="retry", queued_at=now, scheduled_for=now + backoff,
               series=run.series or run.id, overrides=run.overrides)


def run_event(kind: str, run: Run, **extra: object) -> dict:
    """The events-stream entry for something that happened to a run."""
    return {"type": kind, "task_id": run.task_id, "run_id": run.id, "ts": time.time(), **extra}


class Launcher:
    """Writes send guards, sends runs' messages, and fails runs whose message could not be sent."""

    def __init__(self, store: Store, dispatcher: Dispatcher, lease: float) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.lease = lease

    def guard(self, run: Run, now: float, pipe: redis.client.Pipeline | Batch) -> None:
        """Queue, in the caller's transaction, the entry that sends ``run`` again if it is never sent."""
        self.store.set_due(due_member_for_run(run.id), now + self.lease, pipe)

    def send(self, task: Task, run: Run, fence: int = 0) -> None:
        """Send ``run``'s message and drop its guard; raises (leaving the guard) if the send fails."""
        self.dispatcher.send(task, run, fence=fence)
        self.store.remove_due(due_member_for_run(run.id))

    def send_or_fail(self, batch: list[tuple[Task, Run]]) -> None:
        """Send every run of ``batch`` (its messages pipelined) and drop their guards; if sending raises,
        fail every run of the batch that is still queued, then raise. (A message that did leave before the
        error is refused on arrival: its run is no longer queued.)"""
        try:
            self.dispatcher.send_many(batch)
        except Exception as exc:
            self._fail_unsent(batch, exc)
            raise
        self.store.remove_due(*(due_member_for_run(run.id) for _, run in batch))

    def _fail_unsent(self, batch: list[tuple[Task, Run]], exc: Exception) -> None:
        now = time.time()
        pipe = self.store.pipeline()
        for _, run in batch:
            self.store.transition(run.id, (RunState.QUEUED,), RunState.FAILED,
                                  event=run_event(EventType.RUN_FAILED, run, state="failed"),
                                  fields={"error": f"could not queue the run: {exc}", "finished_at": now}, pipe=pipe)
            self.store.remove_due(due_member_for_run(run.id), pipe=pipe)
        pipe.execute()
