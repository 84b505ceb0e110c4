"""The scheduler: turns due-set entries into runs, one claim at a time, under a lock.

Each tick claims the entries whose time has come (a Lua script leases them, so nothing is read
and then written by two actors), records a run for each with one more script that re-checks the
task is still active, sends the Celery message, and for a cron task puts the next fire back —
computed by ``core.cron`` in the task's timezone. A cron task whose scheduler was down fires once
to catch up, not once per missed slot. Only the holder of the lock acts; another scheduler idles
until the lock expires.

Redis trouble is weather, not a crash: a tick that cannot reach Redis (refused, reset, timed out,
loading, read-only) logs one line when the outage starts and one when it ends, backs off, and
leaves leadership to be proven again. Nothing is lost meanwhile: claimed entries come back after
their lease, and a fired run carries a send guard (its own due entry at the end of the lease), so
a run whose message was never sent is sent again then.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import cast

import redis
from kombu.exceptions import OperationalError

from core import cron, metrics
from core.dispatch import Dispatcher
from core.events import EventType
from core.lifecycle import Launcher, new_run, run_event
from core.models import Mode, Run, RunState, Task
from core.store import Fire, Store, due_member_for_run

log = logging.getLogger("taskman.scheduler")

REDIS_TROUBLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError,
                 redis.exceptions.ReadOnlyError, redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError,
                 OperationalError, ConnectionError, TimeoutError, OSError)
"""Errors that mean Redis is unreachable or not ready (not a bug in taskman): wait and try again."""
MAX_BACKOFF = 5.0
FIRE_BATCH = 100
"""Tasks' due entries fired together (one pipeline of scripts, one batch of messages): big enough that a
burst costs few round trips, small enough that the first runs of a burst go out without waiting for all."""


class Scheduler:
    """Claims due entries and sends their runs; ``tick`` returns how long to sleep."""

    def __init__(self, store: Store, dispatcher: Dispatcher, *, interval: float = 0.25, lock_ttl: float = 10.0,
                 lease: float = 60.0, dead_worker_grace: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.dispatcher = dispatcher
        self.interval = interval
        self.lock_ttl = lock_ttl
        self.lease = lease
        self.token = uuid.uuid4().hex
        self.is_leader = False
        self.last_lag: float = 0.0
        self.outage_since: float | None = None
        self.backoff = 0.0
        self.dead_worker_grace = dead_worker_grace
        self.next_watch = 0.0
        self.epoch: str | None = None
        self.launcher = Launcher(store, dispatcher, lease)

    def tick(self, now: float | None = None) -> float:
        """Do one round of work if this scheduler holds the lock; return seconds until the next look.

        Never raises for Redis trouble: it is logged once per outage and the next look is backed off.
        """
        try:
            wait = self._tick(now)
        except REDIS_TROUBLE as exc:
            return self._in_outage(exc)
        if self.outage_since is not None:
            log.warning("Redis is reachable again after %.1f s; scheduling resumes (missed fires are caught up)",
                        time.monotonic() - self.outage_since)
            self.outage_since = None
            self.backoff = 0.0
        return wait

    def _in_outage(self, exc: BaseException) -> float:
        if self.outage_since is None:
            self.outage_since = time.monotonic()
            log.warning("Redis is unreachable (%s: %s); the scheduler keeps trying", type(exc).__name__, exc)
        if self.is_leader:
            self.is_leader = False  # the lock may have expired meanwhile: prove it again
        self.backoff = min(MAX_BACKOFF, max(self.interval, self.backoff * 2 or 0.1))
        return self.backoff

    def _check_epoch(self) -> None:
        """Notice a Redis that came back without its data (restarted with no AOF, or another one)."""
        epoch, verdict = self.store.check_epoch(self.epoch)
        if verdict == "lost":
            log.error("Redis lost its data: taskman's keys are gone (epoch %s, now %s). Definitions, schedules and "
                      "runs stored before are lost; was Redis restarted without its append-only file?",
                      self.epoch, epoch)
        self.epoch = epoch

    def _tick(self, now: float | None) -> float:
        leader = self.store.acquire_lock(self.token, self.lock_ttl)
        if leader != self.is_leader:
            log.info("scheduler %s %s the lock", self.token[:8], "took" if leader else "lost")
            self.is_leader = leader
        if not leader:
            return min(self.lock_ttl / 3, 1.0)
        started = self.clock()
        now = started if now is None else now
        claimed = self.store.claim_due(now, self.lease, self.token)
        lags: list[float] = []  # lateness as sent: due time to the moment its message left, not to the claim

        def fire_batch(entries: list[tuple[str, float]]) -> None:
            self.fire_tasks(entries, now)
            elapsed = self.clock() - started
            lags.extend(now - due_at + elapsed for _, due_at in entries)

        tasks_due: list[tuple[str, float]] = []
        for member, due_at in claimed:  # in due order: tasks' entries in batches, a run's entry on its own
            if member.startswith("t:"):
                tasks_due.append((member, due_at))
                if len(tasks_due) == FIRE_BATCH:
                    fire_batch(tasks_due)
                    tasks_due = []
            else:
                fire_batch(tasks_due)
                tasks_due = []
                self._fire_one(member, due_at, now)
                lags.append(now - due_at + self.clock() - started)
        fire_batch(tasks_due)
        if time.monotonic() >= self.next_watch:
            self.next_watch = time.monotonic() + min(2.0, self.dead_worker_grace / 4)
            self._check_epoch()
            self.hand_over_silent_workers_runs(self.store.server_time())
        try:
            metrics.record_lags(self.store, lags)
        except Exception:
            log.exception("could not record the scheduler's lag")
        next_due = self.store.next_due()
        wait = self.interval if next_due is None else max(0.0, min(self.interval, next_due - self.clock()))
        return wait

    def _fire_one(self, member: str, due_at: float, now: float) -> None:
        try:
            self.fire(member, due_at, now)
        except REDIS_TROUBLE:
            raise
        except Exception:
            log.exception("could not fire %s; it is retried after the lease", member)

    def fire(self, member: str, due_at: float, now: float) -> None:
        """Send what one due entry stands for: a task's fire (``t:``) or a retry's run (``r:``)."""
        kind, _, ident = member.partition(":")
        self.last_lag = max(0.0, now - due_at)
        if kind == "r":
            self._send_queued(member, ident)
            return
        task = self.store.get_task(ident)
        if task is None:
            self.store.remove_due(member)
            return
        fire = self._prepare(task, due_at, now)
        if self.store.fire(fire.task, fire.run, fire.next_due, now, fire.event, token=self.token,
                           leased_to=fire.leased_to, due_at=due_at, send_guard_at=fire.send_guard_at):
            self.launcher.send(task, fire.run)

    def _prepare(self, task: Task, due_at: float, now: float) -> Fire:
        """The run a task's due entry makes, its next due time (cron) and its event, ready for ``FIRE``."""
        run = new_run(task, "cron" if task.mode is Mode.SCHEDULED else "delay", now, scheduled_for=due_at)
        next_due = None
        if task.mode is Mode.SCHEDULED:
            after = datetime.fromtimestamp(max(now, due_at), tz=UTC)
            next_due = cron.next_fire(task.spec.cron_expression or "", task.spec.timezone, after).timestamp()
        lag = max(0.0, now - due_at)
        event = run_event(EventType.RUN_QUEUED, run, trigger=run.trigger, lag_ms=round(lag * 1000, 3))
        return Fire(task, run, next_due, event, leased_to=now + self.lease, due_at=due_at,
                    send_guard_at=now + self.lease)

    def fire_tasks(self, entries: list[tuple[str, float]], now: float) -> None:
        """:meth:`fire` for many tasks' due entries (``t:``) in a few round trips, not a few per entry: one
        read of their definitions, one pipeline of ``FIRE`` scripts, one batch of messages, one removal of
        their send guards. A burst of thousands of fires is bound by Python, not by round trips.

        Whatever goes wrong with one entry stays with it: should the batched read or send fail for a
        reason other than Redis trouble (a definition that no longer reads, a message the dispatcher
        refuses), the entries go one at a time through :meth:`fire`; one that fails waits for its lease
        (a recorded run, for its send guard), as it would alone.
        """
        if not entries:
            return
        self.last_lag = max(0.0, now - max(due_at for _, due_at in entries))
        fires: list[Fire] | None = None
        try:
            found = {task.id: task for task in self.store.get_tasks(member[2:] for member, _ in entries)}
            fires = [self._prepare(found[member[2:]], due_at, now) for member, due_at in entries
                     if member[2:] in found]
        except REDIS_TROUBLE:
            raise
        except Exception:
            pass  # one of them is at fault: find out which below, one at a time
        if fires is None:
            for member, due_at in entries:
                self._fire_one(member, due_at, now)
            return
        gone = [member for member, _ in entries if member[2:] not in found]
        if gone:
            self.store.remove_due(*gone)
        batch: list[tuple[Task, Run]] = []
        for fire, created in zip(fires, self.store.fire_many(fires, now, token=self.token), strict=True):
            if isinstance(created, Exception):
                log.error("could not fire t:%s (%s); it is retried after the lease", fire.task.id, created)
            elif created:
                batch.append((fire.task, fire.run))
        self._send_fired(batch)

    def _send_fired(self, batch: list[tuple[Task, Run]]) -> None:
        """Send fired runs' messages in one batch and drop their send guards; if the batch is refused for a
        reason other than Redis trouble, send them one by one, so only a run whose own send fails keeps
        its guard (and is sent again when the guard comes up). No message of a refused batch was sent
        (kombu discards an unflushed batch); one sent twice is refused on arrival, its run no longer queued."""
        if not batch:
            return
        try:
            self.dispatcher.send_many(batch)
        except REDIS_TROUBLE:
            raise
        except Exception:
            pass  # one of them is refused: find out which below, one at a time
        else:
            self.store.remove_due(*(due_member_for_run(run.id) for _, run in batch))
            return
        for task, run in batch:
            try:
                self.launcher.send(task, run)
            except REDIS_TROUBLE:
                raise
            except Exception:
                log.exception("could not send run %s of task %s; it is sent again after the lease", run.id, task.id)

    def hand_over_silent_workers_runs(self, now: float) -> int:
        """Requeue, under a new fence, every running run whose worker has sent no heartbeat for the grace.

        ``now`` is Redis's clock, as are the heartbeats and run starts it is compared with (so a jump of
        this host's clock hands nothing over). A run names the life of the worker that runs it (one per
        start, ``node#id``), so a worker restarted under the same name does not keep the old one's runs
        looking alive.

        The fence makes the dead worker's message (redelivered by the broker much later) and a slow
        worker's late finish refused, so a run is never carried on by two workers at once.
        """
        beats = self.store.signs_of_life()  # a run records its worker's life (node#id)
        handed = 0
        running = self.store.running_runs()
        owners = self.store.run_owners([run_id for run_id, _ in running])
        for (run_id, started_at), (state, node, fence) in zip(running, owners, strict=True):
            last_sign = beats.get(node, started_at) if node else started_at
            if state == RunState.RUNNING.value and now - max(last_sign, started_at) < self.dead_worker_grace:
                continue
            event = {"type": EventType.RUN_REQUEUED, "run_id": run_id, "ts": now, "state": "queued",
                     "reason": f"worker {node or '?'} silent for {now - last_sign:.0f} s"}
            new_fence = self.store.requeue(run_id, fence, event, send_guard_at=self.clock() + self.lease)
            if new_fence is None:
                continue
            run = self.store.get_run(run_id)
            task = self.store.get_task(run.task_id) if run else None
            if run is None or task is None:
                continue  # the send guard's turn stops it (task deleted) or finds it gone
            self.launcher.send(task, run, fence=new_fence)
            self.store.add_logs([{"ts": repr(now), "task": run.task_id, "run": run_id, "level": "warning",
                                  "msg": f"run {run_id}: worker {node or '?'} silent for {now - last_sign:.0f} s; "
                                         "handed to another worker"}])
            log.warning("run %s: worker %s silent for %.0f s; handed to another worker", run_id, node, now - last_sign)
            handed += 1
        return handed

    def _send_queued(self, member: str, run_id: str) -> None:
        """Send a queued run whose due entry came up: a retry's backoff ended, or a send guard's lease did.

        The run's fence moves on first, so if an earlier message for it does exist (its sender died
        before dropping the guard), that one is refused on arrival and the run runs once.
        """
        run = self.store.get_run(run_id)
        if run is None or run.state is not RunState.QUEUED:
            self.store.remove_due(member)
            return
        task = self.store.get_task(run.task_id)
        if task is None:
            self.store.transition(run.id, (RunState.QUEUED,), RunState.STOPPED,
                                  fields={"error": "the task was deleted", "finished_at": self.clock()})
            self.store.remove_due(member)
            return
        fence = self.store.refence_queued(run_id, self.token)
        if fence == -1:
            self.store.remove_due(member)
        elif fence >= 0:
            self.launcher.send(task, run, fence=fence)  # a failed send leaves the entry to come back

    def close(self) -> None:
        """Give up the lock so a standby scheduler takes over at once."""
        if self.is_leader:
            self.store.release_lock(self.token)
            self.is_leader = False


def refuse_evicting_redis(store: Store) -> None:
    """Raise if Redis may evict keys: a schedule that can silently vanish is not a schedule."""
    try:
        config = cast(dict[str, str], store.redis.config_get("maxmemory-policy"))  # decoded: see core.store
        policy = config.get("maxmemory-policy", "noeviction")
    except Exception:
        return
    if policy.startswith("allkeys"):
        raise RuntimeError(f"Redis maxmemory-policy is {policy!r}: it may evict taskman's schedule. "
                           "Set it to 'noeviction' (or a volatile-* policy).")
