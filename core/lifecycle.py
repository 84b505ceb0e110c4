"""A run's life up to its Celery message: the one place runs are made, guarded, sent or failed.

Every run is written together with its *send guard*: its own due entry (``r:<run>``), due when the
claim lease ends, and kept until a worker **starts** the run (the start's transition removes it) or the run
ends or is stopped. Sending a message records on the run the fence it carries (``sent_fence``, in the
transaction that pushes it: ``core.store.MARK_SENT``). When a guard comes up, the scheduler
(``core.store.CHECK_SENT``) tells apart:

- *never sent* under the run's fence (its sender died before sending, its send raised, a retry's backoff
  ended): the fence moves on and the run is sent;
- *sent, not started yet*: its message may be waiting behind a backlog (its queue's list is not empty) or
  be reserved by a worker (kombu's ``unacked`` hash names the run): the guard waits another lease;
- *sent and lost*: neither — a worker took the message off the list and died before kombu recorded it in
  ``unacked`` (its Redis transport's ack emulation leaves that window). The fence moves on (a stray copy is
  refused on arrival), the run is sent again with a warning in its log, and the guard waits another lease.

So no path leaves a run ``queued`` with nothing behind it:

- a submit or "run now" writes the run, its guard and its message in one transaction (with Celery's task
  events on it sends after that transaction, and a send that raises fails the run at once -- someone is
  waiting for the answer -- and drops its guard);
- a scheduler fire prepared ahead (``core.scheduler``'s look-ahead) is staged with its ``sent_fence``, and
  ``PUBLISH`` pushes its message and writes its guard in the same script that moves its due entry on (a
  prepared run never published is undone by its batch's entry); a fire made the plain way (Celery's task
  events on, or a message that could not be prepared) writes the run and its guard in the ``FIRE`` script,
  and a send that raises leaves the run unsent, so it is sent when the guard comes up (the broker is likely
  in Redis's outage);
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
    the arguments or request body this run gets instead of the task's (``core.spec.check_overrides``)."""
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
        """Send ``run``'s message under ``fence`` (the run records it); its guard stays until the run starts.
        Raises if the send fails (the guard then sends it)."""
        self.dispatcher.send(task, run, fence=fence)

    def push_with(self, batch: list[tuple[Task, Run]], pipe: redis.client.Pipeline | Batch) -> list[tuple[Task, Run]]:
        """Queue in ``pipe``, the transaction that writes these new runs, the push of their messages, so a run
        and its message are stored at once; the runs left to :meth:`send_or_fail` after it (all of them when
        the dispatcher cannot build messages: Celery's task events on need ``send_task``)."""
        if not self.dispatcher.builds_messages:
            return batch
        for task, run in batch:
            queue, message = self.dispatcher.message(task, run)
            self.store.push_message(run.id, queue, message, 0, pipe)
        return []

    def send_or_fail(self, batch: list[tuple[Task, Run]]) -> None:
        """Send every run of ``batch`` (its messages pushed in one transaction); if sending raises, fail every
        run of the batch that is still queued, then raise. (A message that did leave before the error is
        refused on arrival: its run is no longer queued.)"""
        if not batch:
            return
        try:
            self.dispatcher.send_many(batch)
        except Exception as exc:
            self._fail_unsent(batch, exc)
            raise

    def _fail_unsent(self, batch: list[tuple[Task, Run]], exc: Exception) -> None:
        now = time.time()
        pipe = self.store.pipeline()
        for _, run in batch:
            self.store.transition(run.id, (RunState.QUEUED,), RunState.FAILED,
                                  event=run_event(EventType.RUN_FAILED, run, state="failed"),
                                  fields={"error": f"could not queue the run: {exc}", "finished_at": now}, pipe=pipe)
            self.store.remove_due(due_member_for_run(run.id), pipe=pipe)
        pipe.execute()
