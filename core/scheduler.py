"""The scheduler: turns due-set entries into runs, one claim at a time, under a lock.

Each tick claims the entries whose time has come (a Lua script leases them, so nothing is read
and then written by two actors), records a run for each with one more script that re-checks the
task is still active, sends the Celery message, and for a cron task puts the next fire back —
computed by ``core.cron`` in the task's timezone. A cron task whose scheduler was down fires once
to catch up, not once per missed slot. Only the holder of the lock acts; another scheduler idles
until the lock expires.

**Look-ahead.** A burst of thousands of fires due in the same second cannot be recorded and sent in a few
milliseconds, so the work is done before the due time: each tick also claims the tasks' entries due
within ``lookahead`` seconds (leased to their due time plus the look-ahead and the lock's TTL), reads
their tasks, writes their runs and stages them (``Store.stage``: nothing points at those runs yet), and
holds them with their Celery messages. At the due time the next tick (it sleeps until then) only
*publishes* them: one transaction per batch of up to ``PUBLISH_BATCH`` pushes the messages onto the
queues' lists and runs ``PUBLISH``, which checks that each entry still holds its claim's lease and the
lock is still held, moves the entries on, and takes back the messages of fires that do not happen,
atomically; then ``COMMIT`` records the rest (send guard, history, the task's latest run, a one-shot's
end, the event). Every guarantee of the plain fire holds: an edit, pause, stop or delete made while a
fire was held changes or removes its entry, so the fire does not happen (and its staged run is undone); a
scheduler that lost the lock publishes nothing and hands the entries back; one that dies holding fires
leaves their entries to come back soon after they were due, and the batch's ``p:`` entry to commit what
was published and undo what was not. A fire is published exactly when its entry moves on, in one
transaction. A message can still be lost after it was pushed (a worker killed between taking it off the
list and kombu recording it): the run's send guard, written when it is recorded (or by its batch's ``p:``
entry, should this scheduler die first) and kept until the run starts, sends it again then
(``core.lifecycle``).

Redis trouble is weather, not a crash: a tick that cannot reach Redis (refused, reset, timed out,
loading, read-only) logs one line when the outage starts and one when it ends, backs off, and
leaves leadership to be proven again. Nothing is lost meanwhile: claimed entries come back after
their lease, and a fired run carries a send guard (its own due entry at the end of the lease, kept until
the run starts), so a run whose message was never sent, or was lost after it was, is sent again then.
"""

from __future__ import annotations

import bisect
import gc
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import cast

import redis
from kombu.exceptions import OperationalError

from core import cron, metrics, redis_trouble
from core.dispatch import Dispatcher
from core.events import EventType
from core.lifecycle import Launcher, new_run, run_event
from core.models import Mode, Run, RunState, Task
from core.store import Armed, Fire, Prepared, Store, lock_token

log = logging.getLogger("taskman.scheduler")

REDIS_TROUBLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError,
                 redis.exceptions.ReadOnlyError, redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError,
                 *redis_trouble.FULL, OperationalError, ConnectionError, TimeoutError, OSError)
"""Errors that mean Redis is unreachable or not ready (not a bug in taskman): wait and try again. A Redis that
cannot save to its disk is one (``core.redis_trouble.RedisCannotSave``, a ``ConnectionError``), as is a full one."""
MAX_BACKOFF = 5.0
FIRE_BATCH = 100
"""Tasks' due entries fired together (one pipeline of scripts, one batch of messages): big enough that a
burst costs few round trips, small enough that the first runs of a burst go out without waiting for all."""
LOOKAHEAD = 2.0
"""Seconds ahead of their due time that tasks' fires are claimed, prepared and held (see the module's doc)."""
CLAIM_LIMIT = 1000
"""Entries one claim takes; a tick claims again while claims come back full (up to ``MAX_HELD`` held)."""
MAX_HELD = 50_000
"""Prepared fires held at most: beyond it a tick claims only what is due."""
PUBLISH_BATCH = 1000
"""Prepared fires published by one ``PUBLISH`` script."""
ARM_AT_LEAST = 100
"""Prepared fires of one batch due together from which their transaction is opened ahead (``Store.arm``)."""
MAX_ARMED = 16
"""Transactions open ahead at most (a connection each)."""
COMMIT_BATCH = 250
"""Published fires recorded by one ``COMMIT`` script (Redis serves nothing else while it runs)."""
GUARD_BATCH = 500
"""Send guards looked at together (``Store.check_sent``: two round trips for the lot)."""
PREPARE_GUESS = 0.25e-3
"""Seconds to prepare one fire, until this scheduler has measured it (a burst's size decides how early it is
claimed: ``CLAIM``)."""
QUIET_BEFORE_DUE = 0.25
"""Seconds before a held fire's due time from which a tick neither records published fires nor prepares
more (each costs up to a few hundred milliseconds for a batch), so the due instant finds it free."""
RECORD_WITHIN = 2.0
"""Seconds after which published fires are recorded even if held fires keep falling due."""


LOST_WHY = {
    "lost": "was sent but never reached a worker (lost by a worker that died taking it)",
    "orphaned": "was taken by a worker that fell silent before starting it",
}
"""What became of a run's earlier message, by ``CHECK_SENT``'s verdict, as its log says it."""


class Scheduler:
    """Claims due entries and sends their runs; ``tick`` returns how long to sleep."""

    def __init__(self, store: Store, dispatcher: Dispatcher, *, interval: float = 0.25, lock_ttl: float = 10.0,
                 lease: float = 60.0, dead_worker_grace: float = 30.0,
                 clock: Callable[[], float] = time.time, lookahead: float = LOOKAHEAD) -> None:
        self.store = store
        self.clock = clock
        self.dispatcher = dispatcher
        self.interval = interval
        self.lock_ttl = lock_ttl
        self.lease = lease
        self.token = lock_token()
        self.is_leader = False
        self.last_lag: float = 0.0
        self.outage_since: float | None = None
        self.backoff = 0.0
        self.dead_worker_grace = dead_worker_grace
        self.next_watch = 0.0
        self.epoch: str | None = None
        self.launcher = Launcher(store, dispatcher, lease)
        self.lookahead = lookahead
        self.held: list[Prepared] = []
        """Fires prepared ahead of their due time, in due order, waiting to be published."""
        self.armed: list[Armed] = []
        """Transactions opened ahead for some of the held fires (``Store.arm``), each used up when they are due."""
        self.unrecorded: list[list[Prepared]] = []
        """Published fires whose ``COMMIT`` is still to do (oldest first, each list of one batch)."""
        self.unrecorded_since = 0.0
        self.prepare_seconds = 0.0
        """How long preparing the last full batch took (``_due_soon`` leaves room for one more)."""
        self.held_by_dead: dict[str, float] = {}
        """Runs whose messages a dead worker had taken ahead, whose guards ``hasten_held`` brought forward (run
        id → when, by the monotonic clock: one whose guard never comes up, its run started meanwhile, is
        forgotten after a lease)."""
        self.held_plain: list[tuple[str, float, float]] = []
        """Entries claimed ahead whose message could not be prepared (member, due time, leased score): fired
        the plain way (``fire``) when due, so a refused message keeps its send guard as it would alone."""

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
        lags: list[float] = []  # lateness as sent: due time to the moment its message left, not to the claim
        if self.held or self.held_plain:  # the due instant of what was prepared: before anything else
            self._publish_held(now, lags)
        leader = self.store.acquire_lock(self.token, self.lock_ttl)
        if leader != self.is_leader:
            log.info("scheduler %s %s the lock", self.token[:8], "took" if leader else "lost")
            self.is_leader = leader
        if not leader:
            self._hand_back()
            return min(self.lock_ttl / 3, 1.0)
        given = now
        started = self.clock()
        now = started if now is None else now
        if self.dispatcher.builds_messages:
            self._claim_and_prepare(now, given, lags)
        else:
            self._claim_and_fire(now, started, lags)
        if time.monotonic() >= self.next_watch:
            self.next_watch = time.monotonic() + min(2.0, self.dead_worker_grace / 4)
            self._check_epoch()
            # What a dead worker had taken ahead first, then its running runs: a running run has no send guard for
            # hasten_held to bring forward, and it then forgets what that worker held, so a run just handed over
            # (its message sent again) is not looked for again at once and sent a third time.
            moment = time.monotonic()
            self.held_by_dead = {run_id: at for run_id, at in self.held_by_dead.items() if moment - at < self.lease}
            self.held_by_dead.update(dict.fromkeys(self.store.hasten_held(self.dead_worker_grace, self.clock()),
                                                   moment))
            self.hand_over_silent_workers_runs(self.store.server_time())
        self._record()
        try:
            metrics.record_lags(self.store, lags)
        except REDIS_TROUBLE:
            raise  # an outage: the tick's caller says so once, without a traceback
        except Exception:
            log.exception("could not record the scheduler's lag")
        return self._wait()

    @property
    def _hold(self) -> float:
        """How long past its due time an entry claimed ahead stays leased: the look-ahead and the lock's TTL."""
        return self.lookahead + self.lock_ttl

    def _wait(self) -> float:
        """Seconds until the next look: the first held fire's due time, or the next entry's minus the look-ahead."""
        wait = self.interval
        clock = self.clock()
        if self.held:
            wait = min(wait, self.held[0].due_at - clock)
            if self._due_soon():  # nothing else is claimed before it is published
                return max(0.0, wait)
        if self.held_plain:
            wait = min(wait, self.held_plain[0][1] - clock)
        next_due = self.store.next_due()
        if next_due is not None:
            # A task's entry is claimed a look-ahead before its time (a hold before, in a burst); one already within
            # it was claimed by this tick, unless it is not a task's (a retry's, a batch's): due at its time.
            looks = (self._hold, self.lookahead, 0.0) if self.dispatcher.builds_messages else (0.0,)
            wait = min(wait, next(next_due - ahead for ahead in looks if next_due - ahead > clock or not ahead) - clock)
        return max(0.0, wait)

    def _claim_and_prepare(self, now: float, given: float | None, lags: list[float]) -> None:
        """Claim what is due and what falls due within the look-ahead; prepare the tasks' fires and hold them
        (publishing, between claims, any that came due); fire retries' and guards' entries at once."""
        give_up = time.monotonic() + self.lock_ttl / 3  # claim again while claims come back full, for so long
        while not self._due_soon():
            ahead = self.lookahead if len(self.held) < MAX_HELD else 0.0
            # An entry claimed ahead stays leased past its due time by the look-ahead and the lock's TTL: never
            # within this scheduler's next look-ahead (it would claim its own held entries again), and back
            # soon after its due time if this scheduler dies holding it.
            # A burst too big to prepare within the look-ahead is claimed earlier, up to that hold.
            per_fire = (self.prepare_seconds or PREPARE_GUESS * PUBLISH_BATCH) / PUBLISH_BATCH
            claimed = self.store.claim_ahead(now, self.lease, self.token, CLAIM_LIMIT, ahead,
                                             self._hold, per_fire)
            tasks_due: list[tuple[str, float, float]] = []
            guarded: list[str] = []
            for member, due_at, leased_to in claimed:
                kind = member[:2]
                if kind == "t:":
                    tasks_due.append((member, due_at, leased_to))
                elif kind == "p:":
                    self._finish_batch(member[2:])
                elif kind == "r:":
                    guarded.append(member)
                    lags.append(max(0.0, now - due_at))
                else:
                    self._fire_one(member, due_at, now)
            self._check_guards(guarded)
            for start in range(0, len(tasks_due), PUBLISH_BATCH):
                began = time.monotonic()
                chunk = tasks_due[start:start + PUBLISH_BATCH]
                self._prepare_batch(chunk, now)
                if len(chunk) >= PUBLISH_BATCH // 2:
                    self.prepare_seconds = (time.monotonic() - began) * PUBLISH_BATCH / len(chunk)
                self._publish_held(given, lags)
            if len(claimed) < CLAIM_LIMIT or time.monotonic() > give_up:
                break
        self._publish_held(given, lags)

    def _claim_and_fire(self, now: float, started: float, lags: list[float]) -> None:
        """Without prepared messages (Celery's task events on: ``send_task`` sends them): claim what is due and
        fire it at once, tasks' entries in batches."""
        claimed = self.store.claim_due(now, self.lease, self.token)

        def fire_batch(entries: list[tuple[str, float]]) -> None:
            self.fire_tasks(entries, now)
            elapsed = self.clock() - started
            lags.extend(now - due_at + elapsed for _, due_at in entries)

        tasks_due: list[tuple[str, float]] = []
        guarded: list[str] = []
        for member, due_at in claimed:  # in due order: tasks' entries in batches, runs' guards after them
            if member.startswith("t:"):
                tasks_due.append((member, due_at))
                if len(tasks_due) == FIRE_BATCH:
                    fire_batch(tasks_due)
                    tasks_due = []
            elif member.startswith("p:"):
                self._finish_batch(member[2:])
            elif member.startswith("r:"):
                guarded.append(member)
                lags.append(now - due_at + self.clock() - started)
            else:
                self._fire_one(member, due_at, now)
        fire_batch(tasks_due)
        self._check_guards(guarded)

    def _read_tasks(self, task_ids: list[str]) -> tuple[dict[str, Task], set[str]]:
        """The tasks of ``task_ids`` that exist, in one round trip; if one no longer reads, the others one at a
        time. (found, ids that failed to read: their entries wait for their lease.)"""
        try:
            return {task.id: task for task in self.store.get_tasks(task_ids)}, set()
        except REDIS_TROUBLE:
            raise
        except Exception:
            pass  # one of them is at fault: find out which
        found: dict[str, Task] = {}
        bad: set[str] = set()
        for task_id in task_ids:
            try:
                task = self.store.get_task(task_id)
            except REDIS_TROUBLE:
                raise
            except Exception:
                log.exception("could not read task %s; its entry is retried after the lease", task_id)
                bad.add(task_id)
                continue
            if task is not None:
                found[task_id] = task
        return found, bad

    def _prepare_batch(self, entries: list[tuple[str, float, float]], now: float) -> None:
        """Make the runs and messages of claimed tasks' entries, write the runs and stage the messages
        (``Store.stage``), and hold them until due. An entry whose message cannot be made (a definition
        the dispatcher refuses) is held to be fired the plain way; a deleted task's entry goes."""
        found, bad = self._read_tasks([member[2:] for member, _, _ in entries])
        gone = [member for member, _, _ in entries if member[2:] not in found and member[2:] not in bad]
        if gone:
            self.store.remove_due(*gone)
        batch = uuid.uuid4().hex[:16]
        prepared: list[Prepared] = []
        for member, due_at, leased_to in entries:
            task = found.get(member[2:])
            if task is None:
                continue
            at = max(now, due_at)
            run = new_run(task, "cron" if task.mode is Mode.SCHEDULED else "delay", at, scheduled_for=due_at)
            try:
                queue, message = self.dispatcher.message(task, run)
                next_due = self._next_due(task, at)
            except REDIS_TROUBLE:
                raise
            except Exception:
                self.held_plain.append((member, due_at, leased_to))
                continue
            prepared.append(Prepared(member, due_at, leased_to, task, run, queue, message, next_due, batch))
        if prepared:
            recover_at = max(now + self.lease, max(fire.leased_to for fire in prepared)) + self.lock_ttl
            self.store.stage(batch, prepared, recover_at)
            self.held.extend(prepared)
            self.held.sort(key=lambda fire: fire.due_at)
            self._arm(prepared)
        self.held_plain.sort(key=lambda entry: entry[1])

    def _arm(self, prepared: list[Prepared]) -> None:
        """Open the transactions of a batch's fires that fall due together, if there are many (``Store.arm``):
        a burst's messages then reach Redis before its due instant, not at it."""
        together: dict[float, list[Prepared]] = {}
        for fire in prepared:
            together.setdefault(fire.due_at, []).append(fire)
        for fires in together.values():
            if len(fires) >= ARM_AT_LEAST and len(self.armed) < MAX_ARMED:
                self.armed.append(self.store.arm(fires))

    def _disarm(self, armed: list[Armed]) -> None:
        for transaction in armed:
            self.store.disarm(transaction)

    @staticmethod
    def _next_due(task: Task, after: float) -> float | None:
        """A cron task's next fire after ``after`` (None for a one-shot)."""
        if task.mode is not Mode.SCHEDULED:
            return None
        return cron.next_fire(task.spec.cron_expression or "", task.spec.timezone,
                              datetime.fromtimestamp(after, tz=UTC)).timestamp()

    def _publish_held(self, now: float | None, lags: list[float]) -> None:
        """Publish the held fires that are due (``now``: the tick's given clock, else this scheduler's), then
        commit them; fire the held plain entries that are due."""
        clock = self.clock() if now is None else now
        if self.held_plain and self.held_plain[0][1] <= clock:
            while self.held_plain and self.held_plain[0][1] <= clock:
                member, due_at, leased_to = self.held_plain.pop(0)
                self._fire_one(member, due_at, clock, leased_to=leased_to)
                lags.append(max(0.0, clock - due_at))
        if not self.held or self.held[0].due_at > clock:
            return
        published: list[list[Prepared]] = []
        collecting = gc.isenabled()
        gc.disable()  # a full collection of a burst's objects takes tens of milliseconds: not at the due instant
        try:
            while self.held and self.held[0].due_at <= clock:  # again for those that fell due meanwhile
                count = bisect.bisect_right(self.held, clock, key=_due_at)
                due, self.held = self.held[:count], self.held[count:]
                self._publish_groups(self._groups(due, clock), now, lags, published)
                clock = self.clock() if now is None else now
        finally:
            if collecting:
                gc.enable()
            if not self.unrecorded:
                self.unrecorded_since = time.monotonic()
            self.unrecorded.extend(fires for fires in published if fires)
            self._record()

    def _publish_groups(self, groups: list[tuple[list[Prepared], Armed | None]], now: float | None,
                        lags: list[float], published: list[list[Prepared]]) -> None:
        """Publish each group (``now``: the tick's given clock, else this scheduler's), one right after the other;
        then note what each published in ``published`` and their lateness in ``lags``."""
        done: list[tuple[list[Prepared], list[bool], float]] = []
        try:
            for group, armed in groups:
                at = self.clock() if now is None else now
                for fire in group:  # a fire published past its next slot (the clock jumped) skips to after now
                    if fire.next_due is not None and fire.next_due <= at:
                        fire.next_due = self._next_due(fire.task, at)
                done.append((group, self.store.publish(group, at, token=self.token, armed=armed), at))
        except BaseException:
            # The group that raised may or may not have been published: tried again next tick (a fire already
            # published is not published twice: its message is no longer staged), as are the groups after it,
            # without their transactions opened ahead (dropped here unless ``publish`` had used one up already).
            back = [fire for group, _ in groups[len(done):] for fire in group]
            self._disarm([armed for _, armed in groups[len(done):] if armed is not None])
            for fire in back:
                fire.armed = False
            self.held[:0] = back
            raise
        finally:
            for group, flags, at in done:
                self.last_lag = max(0.0, at - group[-1].due_at)
                lags.extend(max(0.0, at - fire.due_at) for fire, sent in zip(group, flags, strict=True) if sent)
                published.append([fire for fire, sent in zip(group, flags, strict=True) if sent])

    def _groups(self, due: list[Prepared], clock: float) -> list[tuple[list[Prepared], Armed | None]]:
        """The due fires in groups to publish, in due order: each armed transaction that fell due with its
        own fires, the rest by batch."""
        ready = [armed for armed in self.armed if armed.fires[0].due_at <= clock]
        if not ready:
            return [(group, None) for group in _by_batch(due, PUBLISH_BATCH)]
        self.armed = [armed for armed in self.armed if armed.fires[0].due_at > clock]
        groups: list[tuple[list[Prepared], Armed | None]] = [(armed.fires, armed) for armed in ready]
        groups += [(group, None) for group in _by_batch([fire for fire in due if not fire.armed], PUBLISH_BATCH)]
        groups.sort(key=lambda group: group[0][0].due_at)
        return groups

    def _due_soon(self) -> bool:
        """Whether a held fire falls due before a batch could be prepared (``QUIET_BEFORE_DUE`` at least): leave
        the time to publishing it."""
        quiet = max(QUIET_BEFORE_DUE, 1.5 * self.prepare_seconds)
        return bool(self.held) and self.held[0].due_at - self.clock() < quiet

    def _record(self, *, now: bool = False) -> None:
        """Record published fires (``COMMIT``), oldest first, a chunk at a time, unless a held fire falls due
        soon (they then wait, at most ``RECORD_WITHIN``; ``now``: do not wait). Should a chunk fail, the batch's
        ``p:`` entry records it later."""
        give_up = time.monotonic() + self.lock_ttl / 3  # the rest in the next tick, after the lock is renewed
        while self.unrecorded:
            if not now and (time.monotonic() > give_up or self._due_soon()
                            and time.monotonic() - self.unrecorded_since < RECORD_WITHIN):
                return
            group = self.unrecorded[0]
            chunk, rest = group[:COMMIT_BATCH], group[COMMIT_BATCH:]
            if rest:
                self.unrecorded[0] = rest
            else:
                self.unrecorded.pop(0)
            try:
                self.store.commit(chunk[0].batch, [(fire.run.id, fire.task.id) for fire in chunk], self.lease)
            except REDIS_TROUBLE:
                raise  # an outage, said once by the tick's caller; the batch's entry records these runs later
            except Exception:
                log.exception("could not record %d published runs; they are recorded when their batch's entry "
                              "comes up", len(chunk))
        self.unrecorded_since = time.monotonic()

    def _hand_back(self) -> None:
        """Give every held fire's entry back at its due time (the lock is lost, or this scheduler closes)."""
        armed, self.armed = self.armed, []
        self._disarm(armed)
        held, self.held = self.held, []
        plain, self.held_plain = self.held_plain, []
        for group in _by_batch(held, PUBLISH_BATCH):
            self.store.publish(group, self.clock(), token=self.token, hand_back=True)
        for member, due_at, leased_to in plain:
            self.store.hand_back(member, due_at, leased_to)

    def _finish_batch(self, batch: str) -> None:
        """A batch's ``p:`` entry came up: commit what it published, undo what it never did."""
        committed, undone = self.store.finish_batch(batch, self.lease)
        if committed or undone:
            log.warning("fires prepared by a scheduler that stopped short: %d published runs recorded, %d "
                        "unpublished runs undone (their entries fire anew)", committed, undone)

    def _fire_one(self, member: str, due_at: float, now: float, leased_to: float | None = None) -> None:
        try:
            self.fire(member, due_at, now, leased_to)
        except REDIS_TROUBLE:
            raise
        except Exception:
            log.exception("could not fire %s; it is retried after the lease", member)

    def fire(self, member: str, due_at: float, now: float, leased_to: float | None = None) -> None:
        """Send what one due entry stands for: a task's fire (``t:``) or a retry's run (``r:``). ``leased_to``:
        the score its claim leased it to, if not ``now`` plus the lease."""
        kind, _, ident = member.partition(":")
        self.last_lag = max(0.0, now - due_at)
        if kind == "r":
            self._check_guards([member])
            return
        task = self.store.get_task(ident)
        if task is None:
            self.store.remove_due(member)
            return
        fire = self._prepare(task, due_at, now, leased_to)
        if self.store.fire(fire.task, fire.run, fire.next_due, now, fire.event, token=self.token,
                           leased_to=fire.leased_to, due_at=due_at, send_guard_at=fire.send_guard_at):
            self.launcher.send(task, fire.run)

    def _prepare(self, task: Task, due_at: float, now: float, leased_to: float | None = None) -> Fire:
        """The run a task's due entry makes, its next due time (cron) and its event, ready for ``FIRE``."""
        run = new_run(task, "cron" if task.mode is Mode.SCHEDULED else "delay", now, scheduled_for=due_at)
        next_due = None
        if task.mode is Mode.SCHEDULED:
            after = datetime.fromtimestamp(max(now, due_at), tz=UTC)
            next_due = cron.next_fire(task.spec.cron_expression or "", task.spec.timezone, after).timestamp()
        lag = max(0.0, now - due_at)
        event = run_event(EventType.RUN_QUEUED, run, trigger=run.trigger, lag_ms=round(lag * 1000, 3))
        return Fire(task, run, next_due, event, leased_to=now + self.lease if leased_to is None else leased_to,
                    due_at=due_at, send_guard_at=now + self.lease)

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
        """Send fired runs' messages in one batch (their send guards stay until they start); if the batch is
        refused for a reason other than Redis trouble, send them one by one, so only a run whose own send
        fails is left unsent (and is sent when its guard comes up). No message of a refused batch was sent
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
            return
        for task, run in batch:
            try:
                self.launcher.send(task, run)
            except REDIS_TROUBLE:
                raise
            except Exception:
                log.exception("could not send run %s of task %s; it is sent again after the lease", run.id, task.id)

    def hand_over_silent_workers_runs(self, now: float) -> int:
        """Requeue, under a new fence, every running run whose worker has sent no heartbeat for the grace, or
        whose worker its supervisor saw exit (``Store.end_life``: ``taskman up`` killed what was left of it).

        ``now`` is Redis's clock, as are the heartbeats and run starts it is compared with (so a jump of
        this host's clock hands nothing over). A run names the life of the worker that runs it (one per
        start, ``node#id``), so a worker restarted under the same name does not keep the old one's runs
        looking alive.

        The fence makes the dead worker's message (redelivered by the broker much later) and a slow
        worker's late finish refused, so a run is never carried on by two workers at once.
        """
        beats = self.store.signs_of_life()  # a run records its worker's life (node#id)
        ended = self.store.ended_lives()
        handed = 0
        running = self.store.running_runs()
        owners = self.store.run_owners([run_id for run_id, _ in running])
        for (run_id, started_at), (state, node, fence) in zip(running, owners, strict=True):
            last_sign = beats.get(node, started_at) if node else started_at
            exited = node.rpartition("#")[2] in ended
            if (state == RunState.RUNNING.value and not exited
                    and now - max(last_sign, started_at) < self.dead_worker_grace):
                continue
            what = "exited" if exited else f"silent for {now - last_sign:.0f} s"
            event = {"type": EventType.RUN_REQUEUED, "run_id": run_id, "ts": now, "state": "queued",
                     "reason": f"worker {node or '?'} {what}"}
            new_fence = self.store.requeue(run_id, fence, event, send_guard_at=self.clock() + self.lease)
            if new_fence is None:
                continue
            run = self.store.get_run(run_id)
            task = self.store.get_task(run.task_id) if run else None
            if run is None or task is None:
                continue  # the send guard's turn stops it (task deleted) or finds it gone
            self.launcher.send(task, run, fence=new_fence)
            self.store.add_logs([{"ts": repr(now), "task": run.task_id, "run": run_id, "level": "warning",
                                  "msg": f"run {run_id}: worker {node or '?'} {what}; handed to another worker"}])
            log.warning("run %s: worker %s %s; handed to another worker", run_id, node, what)
            handed += 1
        return handed

    def _check_guards(self, members: list[str]) -> None:
        """Queued runs' send guards (``r:`` entries) came up: a retry's backoff ended, or a run sent (or meant
        to be) a lease ago has not started. Sends each run never sent under its fence; leaves one whose message
        may still be waiting (its claim already moved the guard a lease on); sends again, under a new fence and
        with a warning, one whose message was lost after it was sent (``core.store.CHECK_SENT``)."""
        for start in range(0, len(members), GUARD_BATCH):
            chunk = members[start:start + GUARD_BATCH]
            run_ids = [member[2:] for member in chunk]
            verdicts = self.store.check_sent(run_ids, self.token, dead_after=self.dead_worker_grace,
                                             held_by_dead=frozenset(self.held_by_dead.keys() & set(run_ids)))
            for run_id in run_ids:
                self.held_by_dead.pop(run_id, None)
            for member, (verdict, fence) in zip(chunk, verdicts, strict=True):
                if verdict in ("unsent", "lost", "orphaned"):
                    try:
                        self._send_queued(member, member[2:], fence, why=LOST_WHY.get(verdict))
                    except REDIS_TROUBLE:
                        raise
                    except Exception:
                        log.exception("could not send run %s; it is sent again after the lease", member[2:])

    def _send_queued(self, member: str, run_id: str, fence: int, *, why: str | None = None) -> None:
        """Send a queued run whose guard came up under ``fence``, which ``CHECK_SENT`` just moved on: if an
        earlier message for it does exist after all, that one is refused on arrival and the run runs once.
        ``why``: what became of its earlier message, which was sent (said in the run's log)."""
        run = self.store.get_run(run_id)
        if run is None or run.state is not RunState.QUEUED:
            return  # gone, or started or stopped meanwhile (a start or stop removes the guard)
        task = self.store.get_task(run.task_id)
        if task is None:
            self.store.transition(run.id, (RunState.QUEUED,), RunState.STOPPED,
                                  fields={"error": "the task was deleted", "finished_at": self.clock()})
            self.store.remove_due(member)
            return
        self.launcher.send(task, run, fence=fence)  # a failed send leaves the guard to come back
        if why:
            msg = f"run {run_id}: its message {why}; sent again"
            self.store.add_logs([{"ts": repr(self.clock()), "task": run.task_id, "run": run_id, "level": "warning",
                                  "msg": msg}])
            log.warning("%s", msg)

    def close(self) -> None:
        """Give up the lock so a standby scheduler takes over at once (held fires' entries go back first)."""
        armed, self.armed = self.armed, []
        self._disarm(armed)  # first: closing their connections needs no Redis
        try:
            self._record(now=True)
            self._hand_back()
        except REDIS_TROUBLE:
            log.warning("could not hand back %d held fires; their entries come back after their lease",
                        len(self.held))
        if self.is_leader:
            self.store.release_lock(self.token)
            self.is_leader = False


def _due_at(fire: Prepared) -> float:
    return fire.due_at


def _by_batch(fires: list[Prepared], size: int) -> list[list[Prepared]]:
    """``fires`` in groups of one batch each and at most ``size``, keeping their order within a batch."""
    groups: dict[str, list[list[Prepared]]] = {}
    for fire in fires:
        chunks = groups.setdefault(fire.batch, [[]])
        if len(chunks[-1]) == size:
            chunks.append([])
        chunks[-1].append(fire)
    return [chunk for chunks in groups.values() for chunk in chunks]


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
