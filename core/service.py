"""What every front end calls: create, list, get, update, run now, stop, pause, resume, delete.

The command line, the console and the REST API hold no logic of their own; they call a
``Service`` and render what it returns. Each method validates first and writes once: a refused
input leaves Redis exactly as it was.

A service acts for someone: ``acting_as("cli:alice")`` (or ``with_token(secret)`` for an API token's
holder, with its role) returns a copy that checks the role against ``core.auth``'s policy before each
change and appends an audit entry in the change's own pipeline. A service with no role (the local
command line, the console, the scheduler) may do everything; it is still audited.

It is the only thing front ends call: tasks and runs, but also tokens, the audit trail, the monitoring
numbers, the events and log streams (a batch per read, with the cursor to read on from), a ping and
where its Redis is. Every public method turns redis-py's ways of saying Redis is away into taskman's
``NoRedis`` (:func:`reaching_redis`), so no front end needs to know redis-py.
"""

from __future__ import annotations

import copy
import inspect
import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import redis

from core import audit, auth, builtins, cron, events, filters, metrics, redact, redis_trouble
from core.config import Settings
from core.dispatch import Dispatcher
from core.embedded import resolve_redis_url
from core.errors import Conflict, InvalidSpec, NoRedis, NotFound
from core.events import EventType
from core.lifecycle import Launcher, new_id, new_run, run_event
from core.models import CODE_QUEUE, HTTP_QUEUE, REGISTERED_QUEUE, Kind, Mode, Run, RunState, Task, TaskState
from core.store import Store, due_member_for_run, due_member_for_task

if TYPE_CHECKING:  # the workers view loads it (and the walls' ctypes under it): reads need neither
    from core.spec import TaskSpec  # and what validates specs loads pydantic: reads do without it too
    from core.workers import Overview

MAX_BATCH = 1000


def _well_formed_id(value: object) -> bool:
    """Could ``value`` be a task or run id? (``abc:runs`` would address another key of the task.)"""
    return isinstance(value, str) and 0 < len(value) <= 64 and value.replace("-", "").replace("_", "").isalnum() \
        and value.isascii()


AUDITED_OVERRIDES = 2000
"""Characters of a run's (masked) overrides the audit entry quotes; longer ones are described by size."""


def _audited(overrides: dict[str, Any]) -> dict[str, Any]:
    """A run's masked overrides as its audit entry records them: as they are, or each field's size."""
    if len(json.dumps(overrides, ensure_ascii=False)) <= AUDITED_OVERRIDES:
        return overrides
    return {key: f"<{len(json.dumps(value, ensure_ascii=False).encode())} bytes of JSON>"
            for key, value in overrides.items()}


UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError,
               redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError, *redis_trouble.FULL)
"""redis-py's ways of saying Redis cannot serve now: the connection refused, dropped or timed out, a password
refused, the server still loading its data (``BusyLoadingError`` is a ``ConnectionError``) or unable to save to
its disk (``RedisCannotSave``, one too), a replica that takes no writes, a cluster that is down, a Redis at its
``maxmemory``."""


@contextmanager
def reaching_redis() -> Iterator[None]:
    """Raise taskman's ``NoRedis`` for redis-py's :data:`UNREACHABLE` errors (also a function decorator)."""
    try:
        yield
    except UNREACHABLE as exc:
        raise NoRedis.unreachable(exc, answering=isinstance(exc, redis_trouble.REFUSING)) from exc


_Class = TypeVar("_Class", bound=type)


def _reaching_redis_everywhere(cls: _Class) -> _Class:
    """Wrap every public method of ``cls`` (static and class methods too) in :func:`reaching_redis`, so a
    method added later cannot forget it."""
    for name, member in list(vars(cls).items()):
        if name.startswith("_"):
            continue
        if isinstance(member, staticmethod | classmethod):
            setattr(cls, name, type(member)(reaching_redis()(member.__func__)))
        elif inspect.isfunction(member):
            setattr(cls, name, reaching_redis()(member))
    return cls


def _check_page(limit: int, offset: int) -> None:
    """Refuse a page that cannot be: ``limit`` below 1, ``offset`` below 0."""
    if limit < 1:
        raise InvalidSpec("limit", "must be at least 1")
    if offset < 0:
        raise InvalidSpec("offset", "must not be negative")


@_reaching_redis_everywhere
class Service:
    """The service layer over one Redis namespace."""

    def __init__(self, store: Store, dispatcher: Dispatcher, settings: Settings, *, actor: str = "system",
                 role: auth.Role | None = None) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.settings = settings
        self.actor = actor
        self.role = role
        self.principal: auth.Principal | None = None
        """The API token this service acts for (:meth:`with_token`); its changes count against its rate."""
        self.launcher = Launcher(store, dispatcher, settings.claim_lease)
        self._known_queues: set[str] = set()
        """Queues the workers have reported serving, learnt by :meth:`status` as it goes."""

    def acting_as(self, actor: str, role: auth.Role | None = None) -> Service:
        """A shallow copy that audits its changes as ``actor`` and, given a ``role``, enforces it."""
        clone = copy.copy(self)
        clone.actor, clone.role, clone.principal = actor, role, None
        return clone

    def _allow(self, action: str, *kinds: Kind | None, what: str = "") -> None:
        for kind in kinds:
            auth.require(self.role, action, kind, what)

    def _audit(self, action: str, target: str, detail: dict | None, pipe) -> None:
        self.store.add_audit(audit.entry(self.actor, action, target, detail), pipe)

    @classmethod
    def from_settings(cls, settings: Settings) -> Service:
        """Connect to the configured (or embedded) Redis and build the service on it."""
        url = resolve_redis_url(settings)
        store = Store.from_settings(settings, url)
        return cls(store, Dispatcher(None, settings, redis_url=url), settings)

    # -- validation ----------------------------------------------------------------------------

    def validate(self, data: Any, *, registry: dict[str, dict] | None = None) -> TaskSpec:
        """Check a spec without storing anything; raises ``InvalidSpec`` naming the field.

        ``registry``: what ``store.registered()`` returned, when the caller already read it.
        """
        from core.spec import parse_spec

        spec = parse_spec(data, bounds=self.settings.task_limit_bounds())
        if spec.kind is Kind.REGISTERED:
            self._check_registered(spec, self.store.registered() if registry is None else registry)
        return spec

    @staticmethod
    def _check_registered(spec: TaskSpec, known: dict[str, dict]) -> None:
        """A registered task names a task some worker registered and a queue some worker serves.

        Never fails open: with no worker reported yet only the built-ins are known, and the queue may
        only be the default one or a queue that a worker running this task consumes from (taskman's
        own ``code`` and ``http`` queues and the broker's keys are refused by ``core.spec`` already).
        """
        name = spec.task_name or ""
        if not known:
            if name not in builtins.NAMES:
                raise InvalidSpec("task_name", f"no worker has reported its registered tasks yet, so {name!r} "
                                               "is not known; start a worker (`taskman worker`) and try again "
                                               f"(the built-ins are always there: {', '.join(builtins.NAMES)})")
        elif name not in known:
            names = ", ".join(sorted(known)[:10])
            raise InvalidSpec("task_name", f"no worker has registered {name!r}; known tasks: {names}")
        queue = spec.queue or REGISTERED_QUEUE
        if queue != REGISTERED_QUEUE:
            served = sorted(set(known.get(name, {}).get("queues", ())) - {CODE_QUEUE, HTTP_QUEUE})
            if queue not in served:
                raise InvalidSpec("queue", f"no worker that runs {name!r} serves {queue!r}; "
                                           f"queues it can go to: {', '.join(served) or REGISTERED_QUEUE}")

    # -- create --------------------------------------------------------------------------------

    def create(self, data: Any) -> Task:
        """Validate and store one task, then run or schedule it as its mode says."""
        return self.create_many([data])[0]

    def create_many(self, items: Iterable[Any], *, only: Mode | None = None) -> list[Task]:
        """Validate every spec first; then create all of them (or, on a refusal, none).

        ``only``: refuse specs of any other mode (``POST /api/scheduled-tasks`` creates scheduled ones);
        a spec that names no mode is read as that mode.
        """
        items = list(items)
        if len(items) > MAX_BATCH:
            raise InvalidSpec("", f"at most {MAX_BATCH} specs can be submitted at once, got {len(items)}")
        specs = []
        registry: dict[str, dict] | None = None
        for index, item in enumerate(items):
            try:
                if only is not None and isinstance(item, dict) and "task_type" not in item and "mode" not in item:
                    item = {**item, "task_type": only.value}
                if registry is None and isinstance(item, dict) and "task_name" in item:
                    registry = self.store.registered()
                spec = self.validate(item, registry=registry)
                if only is not None and spec.task_type is not only:
                    raise InvalidSpec("task_type", f"only {only.value} tasks can be created here, "
                                                   f"this one is {spec.task_type.value!r}")
                specs.append(spec)
            except InvalidSpec as exc:
                if len(items) == 1:
                    raise
                raise InvalidSpec(f"[{index}].{exc.field}" if exc.field else f"[{index}]", exc.reason) from None
        for index, spec in enumerate(specs):
            where = f" (spec [{index}])" if len(specs) > 1 else ""
            assert spec.kind is not None  # validation always infers it
            self._allow("create", spec.kind, what=f"{spec.kind.value} tasks{where}")
        now = time.time()
        tasks = [Task.from_spec(spec, id=new_id(), state=TaskState.ACTIVE, created_at=now + index * 1e-6,
                                updated_at=now) for index, spec in enumerate(specs)]
        pipe = self.store.batch()  # every write of the batch in one command (one JSON document), at once
        to_send: list[tuple[Task, Run]] = []
        first_due: dict[tuple, float] = {}
        for task in tasks:
            if task.mode is Mode.IMMEDIATE:
                task.state = TaskState.DONE
                run = new_run(task, "now", now)
                task.runs = [run]
                self.store.add_task_with_run(task, run, pipe)
                self.launcher.guard(run, now, pipe)
                to_send.append((task, run))
            else:
                when = (task.spec.task_type, task.spec.cron_expression, task.spec.timezone, task.spec.delay_seconds)
                if when not in first_due:  # a batch often shares one schedule: compute each once
                    first_due[when] = self._first_due(task.spec, now)
                task.next_run_at = first_due[when]
                self.store.add_task(task, pipe)
                self.store.set_due(due_member_for_task(task.id), task.next_run_at, pipe)
            self.store.add_event({"type": EventType.TASK_CREATED, "task_id": task.id, "ts": now}, pipe)
            self._audit("create", task.id, {"name": task.name, "kind": task.kind.value, "mode": task.mode.value}, pipe)
        to_send = self.launcher.push_with(to_send, pipe)
        pipe.execute()
        self.launcher.send_or_fail(to_send)
        return tasks

    @staticmethod
    def _first_due(spec: TaskSpec, now: float) -> float:
        if spec.task_type is Mode.DELAYED:
            return now + (spec.delay_seconds or 0.0)
        return cron.next_fire(spec.cron_expression or "", spec.timezone,
                              datetime.fromtimestamp(now, tz=UTC)).timestamp()

    # -- read ----------------------------------------------------------------------------------

    def list_tasks(self, *, state: str | None = None, kind: str | None = None, mode: str | None = None,
                   name: str | None = None, last: str | None = None, limit: int = 100,
                   offset: int = 0) -> list[Task]:
        """Tasks newest first, filtered by the words ``core.filters`` reads: a task state or the state of
        the last run (``state``, ``last``), a kind, a mode (as the spec or the list spells it), a piece of
        the name. A task whose latest run is running says so (:meth:`with_running`)."""
        query = filters.from_options(state=state, kind=kind, mode=mode, last=last, name=name)
        _check_page(limit, offset)
        if not query:
            return self.with_running(self.store.get_tasks(self.store.task_ids(offset, offset + limit - 1)))
        return self.matching_tasks(query, limit=limit, offset=offset)

    def matching_tasks(self, query: filters.TaskFilter, *, limit: int, offset: int = 0, older_than: int = 0,
                       cancelled: Callable[[], bool] = lambda: False) -> list[Task]:
        """The tasks ``query`` picks, newest first: ``limit`` of them after skipping ``offset`` matches, among
        the tasks past the newest ``older_than`` (the console searches what it does not hold). Reads every
        task's record in pages of 500 until enough match; ``cancelled`` is asked between pages."""
        matches: list[Task] = []
        skipped = 0
        page = 500
        start = older_than
        running = self._running_ids()
        while len(matches) < limit and not cancelled():
            ids = self.store.task_ids(start, start + page - 1)
            if not ids:
                break
            start += page
            for task in self.with_running(self.store.get_tasks(ids), running):
                if not query.matches(task):
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                matches.append(task)
                if len(matches) == limit:
                    break
        return matches

    def tasks(self, task_ids: Iterable[str]) -> list[Task]:
        """The tasks with these ids that exist (as :meth:`list_tasks` shows them), in no set order."""
        return self.with_running(self.store.get_tasks(task_ids))

    def _running_ids(self) -> set[str]:
        return {run_id for run_id, _ in self.store.running_runs()}

    def with_running(self, tasks: list[Task], running: set[str] | None = None) -> list[Task]:
        """Mark the tasks whose latest run is running as such, with when it started (``last_started_at``).

        The task's own summary of its latest run says ``queued`` until the run ends; the run record and
        the running set (which the run enters in the same step as it starts) say otherwise. ``running``:
        the running set's ids, when the caller read them already.
        """
        waiting = [task for task in tasks if task.last_run_id and task.last_run_state == RunState.QUEUED.value]
        if not waiting:
            return tasks
        running = self._running_ids() if running is None else running
        for task in waiting:
            if task.last_run_id not in running:
                continue
            run = self.store.get_run(task.last_run_id or "")
            if run is not None and run.state is RunState.RUNNING:
                task.last_run_state, task.last_started_at = RunState.RUNNING.value, run.started_at
        return tasks

    def get(self, task_id: str, *, runs: int = 20) -> Task:
        """One task with its latest ``runs`` runs, newest first."""
        task = self.store.get_task(task_id) if _well_formed_id(task_id) else None
        if task is None:
            raise NotFound(f"no task with id {task_id!r}")
        task.runs = self.store.recent_runs(task_id, runs)
        return self.with_running([task])[0]

    def runs(self, task_id: str, *, limit: int = 50, offset: int = 0, state: str | None = None) -> list[Run]:
        """A page of the task's run history, newest first (kept after a delete until it expires)."""
        if state is not None and state not in {item.value for item in RunState}:
            raise InvalidSpec("state", f"must be one of {', '.join(item.value for item in RunState)}")
        _check_page(limit, offset)
        if not _well_formed_id(task_id):
            raise NotFound(f"no task with id {task_id!r}")
        runs = self.store.recent_runs(task_id, self.store.history_per_task if state else offset + limit)
        if not runs and self.store.get_task(task_id) is None:
            raise NotFound(f"no task with id {task_id!r}")
        if state:
            runs = [run for run in runs if run.state.value == state]
        return runs[offset:offset + limit]

    def get_run(self, run_id: str) -> Run:
        run = self.store.get_run(run_id) if _well_formed_id(run_id) else None
        if run is None:
            raise NotFound(f"no run with id {run_id!r}")
        return run

    def export(self) -> list[dict]:
        """Every definition as a spec list that ``create_many`` accepts (export → submit round-trips).

        The one read that returns secrets unmasked, so it needs the admin role."""
        self._allow("export", None)
        return [dict(task.stored_spec) for task in reversed(self.store.get_tasks(self.store.task_ids()))]

    def registered_tasks(self) -> dict[str, dict]:
        """Celery task names the workers have registered, with the worker and queues that reported them."""
        return self.store.registered()

    def workers(self) -> Overview:
        """Workers (host, pool, concurrency, runs active, messages processed, last heartbeat, isolation
        walls), queues (waiting and unacknowledged messages) and registered task names (``core.workers``)."""
        from core.workers import overview

        return overview(self.store, self.settings.heartbeat_ttl)

    def worker_exited(self, life_id: str) -> int:
        """A supervisor saw the start of a worker it named ``life_id`` exit and killed what was left of it: that
        worker's runs go to another worker now, not after ``dead_worker_grace`` (``Store.end_life``)."""
        return self.store.end_life(life_id)

    def scheduler_exited(self, pid: int) -> bool:
        """A supervisor on this host saw the scheduler process ``pid`` exit: if it held the lock, the lock is freed,
        so the next scheduler leads at once rather than after ``scheduler_lock_ttl`` (``Store.free_lock_of``)."""
        return self.store.free_lock_of(pid)

    def data_loss(self) -> dict | None:
        """When the scheduler found that Redis had come back without its data (``at``), or None."""
        return self.store.data_loss()

    def isolation(self) -> dict[str, dict]:
        """Each live code worker → the walls its code runs get: ``up`` (wall → bool), ``why`` (reasons),
        ``missing`` (required walls down), ``accept_weak`` (whether it runs code anyway)."""
        beats = self.store.heartbeats()
        alive_after = time.time() - max(self.settings.heartbeat_ttl, 3 * 2.0)
        return {worker: detail["isolation"] for worker, detail in self.store.worker_reports().items()
                if detail.get("isolation") and beats.get(worker, 0) >= alive_after}

    def isolation_summary(self, reports: dict[str, dict] | None = None) -> tuple[bool, str]:
        """(every live code worker has all its walls up, one line that says so or names what is down);
        ``reports`` is :meth:`isolation`'s answer when the caller has it already."""
        reports = self.isolation() if reports is None else reports
        if not reports:
            return True, "no code worker is up"
        weak = {worker: report for worker, report in reports.items() if report.get("missing")}
        if not weak:
            return True, f"code runs jailed: every wall up on {len(reports)} code worker{'s' * (len(reports) > 1)}"
        parts = []
        for worker, report in sorted(weak.items()):
            verdict = ("runs code anyway (TASKMAN_JAIL_ACCEPT_WEAK)" if report.get("accept_weak")
                       else "refuses code runs")
            parts.append(f"{worker}: {', '.join(report['missing'])} down, {verdict}")
        return False, "isolation walls down - " + "; ".join(parts)

    # -- change --------------------------------------------------------------------------------

    def update(self, task_id: str, changes: dict[str, Any]) -> Task:
        """Edit fields of a task; takes effect from its next run, without restarting anything."""
        if not isinstance(changes, dict):
            raise InvalidSpec("", "changes must be a JSON object of spec fields")
        task = self.get(task_id, runs=0)
        self._allow("edit", task.kind)
        changes = redact.restore_spec(changes, task.spec.to_dict())  # a masked secret sent back stays as it was
        from core.spec import merge_changes

        merged = merge_changes(task.spec, changes)
        spec = self.validate(merged)
        self._allow("edit", spec.kind)
        now = time.time()
        old = task.spec
        task.spec = spec
        task.updated_at = now
        pipe = self.store.pipeline()
        schedule_changed = (spec.task_type, spec.cron_expression, spec.timezone, spec.delay_seconds) != (
            old.task_type, old.cron_expression, old.timezone, old.delay_seconds)
        if schedule_changed and task.state is TaskState.ACTIVE:
            if spec.task_type is Mode.IMMEDIATE:
                task.state, task.next_run_at = TaskState.DONE, None
                self.store.remove_due(due_member_for_task(task.id), pipe=pipe)
            else:
                task.next_run_at = self._first_due(spec, now)
                self.store.set_due(due_member_for_task(task.id), task.next_run_at, pipe)
        self.store.save_task(task, pipe)
        self.store.add_event({"type": EventType.TASK_UPDATED, "task_id": task.id, "ts": now}, pipe)
        self._audit("edit", task.id, {"name": task.name, "fields": sorted(changes)}, pipe)
        pipe.execute()
        return task

    def run_now(self, task_id: str, overrides: dict[str, Any] | None = None) -> Run:
        """Queue a run of the task at once, whatever its mode or state.

        ``overrides``: other arguments for this run only (``args``, ``kwargs``; ``data`` or ``json`` for an
        API task's request body), checked as a spec's fields are (``core.spec.check_overrides``); the
        task is not changed. A masked secret sent back unchanged (``***``) stands for the stored one.
        """
        task = self.get(task_id, runs=0)
        self._allow("run", task.kind)
        if overrides is not None:
            if isinstance(overrides, dict):
                overrides = redact.restore_spec(overrides, task.spec.to_dict())
            from core.spec import check_overrides

            overrides = check_overrides(task.spec, overrides, bounds=self.settings.task_limit_bounds())
        now = time.time()
        run = new_run(task, "manual", now, overrides=overrides)
        pipe = self.store.pipeline()
        self.store.add_run(run, pipe)
        self.launcher.guard(run, now, pipe)
        self.store.add_event(run_event(EventType.RUN_QUEUED, run), pipe)
        detail: dict[str, Any] = {"name": task.name, "run_id": run.id}
        if run.overrides:
            detail["overrides"] = _audited(run.to_dict()["overrides"])
        self._audit("run", task.id, detail, pipe)
        to_send = self.launcher.push_with([(task, run)], pipe)
        pipe.execute()
        self.launcher.send_or_fail(to_send)
        return run

    def pause(self, task_id: str) -> Task:
        """Stop future fires of a delayed or cron task; runs already going carry on."""
        task = self.get(task_id, runs=0)
        self._allow("pause", task.kind)
        if task.mode is Mode.IMMEDIATE:
            raise Conflict(f"task {task_id} runs once, immediately; it has no schedule to pause (use stop)")
        if task.state is TaskState.DONE:
            raise Conflict(f"task {task_id} already ran; nothing left to pause")
        pipe = self.store.pipeline()
        self.store.remove_due(due_member_for_task(task.id), pipe=pipe)
        self.store.set_task_state(task.id, TaskState.PAUSED, None, pipe)
        self.store.add_event({"type": EventType.TASK_PAUSED, "task_id": task.id, "ts": time.time()}, pipe)
        self._audit("pause", task.id, {"name": task.name}, pipe)
        pipe.execute()
        task.state, task.next_run_at = TaskState.PAUSED, None
        return task

    def resume(self, task_id: str) -> Task:
        """Let a paused task fire again: a cron task from its next fire, a delayed one when due (or now)."""
        task = self.get(task_id, runs=0)
        self._allow("resume", task.kind)
        if task.state is not TaskState.PAUSED:
            raise Conflict(f"task {task_id} is {task.state.value}, not paused")
        now = time.time()
        if task.mode is Mode.IMMEDIATE:
            task.state, task.next_run_at = TaskState.DONE, None
        elif task.mode is Mode.DELAYED:
            task.state, task.next_run_at = TaskState.ACTIVE, max(now, task.created_at + (task.spec.delay_seconds or 0))
        else:
            task.state, task.next_run_at = TaskState.ACTIVE, self._first_due(task.spec, now)
        pipe = self.store.pipeline()
        if task.next_run_at is not None:
            self.store.set_due(due_member_for_task(task.id), task.next_run_at, pipe)
        self.store.set_task_state(task.id, task.state, task.next_run_at, pipe)
        self.store.add_event({"type": EventType.TASK_RESUMED, "task_id": task.id, "ts": now}, pipe)
        self._audit("resume", task.id, {"name": task.name}, pipe)
        pipe.execute()
        return task

    def stop(self, task_id: str) -> Task:
        """Stop a task: queued runs never start, running ones are killed, its schedule is paused."""
        task = self.get(task_id, runs=0)
        self._allow("stop", task.kind)
        now = time.time()
        if task.state is TaskState.ACTIVE and task.mode is not Mode.IMMEDIATE:
            pipe = self.store.pipeline()
            self.store.remove_due(due_member_for_task(task.id), pipe=pipe)
            self.store.set_task_state(task.id, TaskState.PAUSED, None, pipe)
            pipe.execute()
            task.state, task.next_run_at = TaskState.PAUSED, None
        stopped = self._stop_runs(task, now)
        pipe = self.store.pipeline()
        self.store.add_event({"type": EventType.TASK_STOPPED, "task_id": task.id, "ts": now, "runs": stopped}, pipe)
        self._audit("stop", task.id, {"name": task.name, "runs": stopped}, pipe)
        pipe.execute()
        return task

    def _stop_runs(self, task: Task, now: float) -> list[str]:
        stopped = []
        for run in self.store.open_runs(task.id):
            previous = self.store.transition(
                run.id, (RunState.QUEUED, RunState.RUNNING), RunState.STOPPED,
                event=run_event(EventType.RUN_STOPPED, run, state="stopped"),
                fields={"finished_at": now, "error": "stopped by an operator",
                        "duration_ms": round((now - run.started_at) * 1000, 3) if run.started_at else 0.0},
                running="rem",
            )
            if previous is None:
                continue
            stopped.append(run.id)
            pipe = self.store.pipeline()
            self.store.remove_due(due_member_for_run(run.id), pipe=pipe)
            self.store.set_last_run(task.id, run.id, RunState.STOPPED, None, pipe)
            self.store.expire_run(run.id, pipe)
            self.store.add_logs([{"ts": repr(now), "task": task.id, "run": run.id, "level": "warning",
                                  "msg": f"run {run.id} stopped by an operator (was {previous})"}], pipe)
            self.store.add_metrics(*metrics.run_increments(task.kind.value, RunState.STOPPED, None), pipe=pipe)
            pipe.execute()
            if previous == RunState.RUNNING.value:
                # An API run's thread cannot be killed; its request sees the revoke (the http worker's
                # revoked set) within core.http.STOP_POLL and abandons itself, freeing the thread.
                self.dispatcher.revoke(run.id, terminate=task.kind is not Kind.API)
            elif task.kind is Kind.REGISTERED:
                self.dispatcher.revoke(run.id, terminate=False)
        return stopped

    def delete(self, task_id: str) -> None:
        """Stop the task, then remove its definition and schedule; its run history expires later."""
        task = self.get(task_id, runs=0)
        self._allow("delete", task.kind)
        stopped = self._stop_runs(task, time.time())
        pipe = self.store.pipeline()
        self.store.remove_task(task.id, pipe)
        self.store.add_event({"type": EventType.TASK_DELETED, "task_id": task.id, "ts": time.time()}, pipe)
        self._audit("delete", task.id, {"name": task.name, "kind": task.kind.value, "runs_stopped": stopped}, pipe)
        pipe.execute()

    # -- who calls: API tokens -----------------------------------------------------------------

    def with_token(self, secret: str | None) -> Service:
        """A copy acting for the holder of the API token ``secret``: its role enforced, its name in the audit
        trail (``api:<name>``), its changes counted by :meth:`throttle`. ``Unauthorized`` for a missing,
        wrong or revoked token."""
        principal = auth.verify(self.store, secret)
        clone = self.acting_as(principal.actor, principal.role)
        clone.principal = principal
        return clone

    def verify_token(self, secret: str | None) -> auth.Principal:
        """Who holds ``secret``; ``Unauthorized`` for a missing, wrong or revoked token (a stream that
        outlives its request asks again now and then)."""
        return auth.verify(self.store, secret)

    def throttle(self, cost: int = 1) -> None:
        """Count ``cost`` changes against the allowance of the token this service acts for (``RateLimited``
        past ``api_rate_per_minute``, ``AuditFull`` when the audit trail is full); no token, no count."""
        if self.principal is not None:
            auth.throttle(self.store, self.principal, cost, self.settings.api_rate_per_minute)

    def require(self, action: str) -> None:
        """``Forbidden`` unless this service's role may do ``action`` (``core.auth.POLICY``): for a front end
        that must say no before it reads a request (each method below checks again)."""
        self._allow(action, None)

    def create_token(self, name: str, role: str) -> tuple[str, dict[str, Any]]:
        """Make an API token (admin); its secret, shown once and never stored, and its public record."""
        self._allow("tokens", None)
        return auth.create(self.store, name, role, actor=self.actor)

    def tokens(self) -> list[dict[str, Any]]:
        """Every API token, oldest first, without secrets (admin)."""
        self._allow("tokens", None)
        return auth.list_tokens(self.store)

    def revoke_token(self, name: str) -> dict[str, Any]:
        """Delete an API token at once (admin); its next request gets 401. Its public record."""
        self._allow("tokens", None)
        return auth.revoke(self.store, name, actor=self.actor)

    # -- the audit trail, monitoring, streams --------------------------------------------------

    def audit_entries(self, limit: int = 50, before: str | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` audit entries, newest first; ``before`` (an entry id) pages further back (admin)."""
        self._allow("audit", None)
        return audit.recent(self.store, limit, before)

    def audit_since(self, cursor: str, *, wait_ms: int | None = events.BLOCK_MS) -> events.Batch:
        """The audit entries after ``cursor``, oldest first, waiting up to ``wait_ms`` for one (admin)."""
        self._allow("audit", None)
        return audit.read_since(self.store, cursor, wait_ms)

    def status(self) -> dict[str, Any]:
        """What a status line shows, in one round trip (the console polls it): workers alive, their isolation
        reports (as :meth:`isolation`), due entries, queued messages, whether a scheduler acts, when Redis
        was found to have lost its data (as :meth:`data_loss`), and why it refuses writes if it does."""
        queues = set(metrics.BASE_QUEUES) | self._known_queues
        read = self.store.status_reads(sorted(queues))
        alive_after = time.time() - max(self.settings.heartbeat_ttl, 3 * 2.0)
        alive = {worker for worker, beat in read["beats"].items() if beat >= alive_after}
        for report in read["reports"].values():
            self._known_queues.update(report.get("queues") or ())
        return {"workers": len(alive), "due": read["due"], "queued": sum(read["queues"].values()),
                "scheduler": read["scheduler"], "data_lost": read["data_lost"],
                "refuses_writes": read["refuses_writes"],
                "isolation": {worker: report["isolation"] for worker, report in read["reports"].items()
                              if report.get("isolation") and worker in alive}}

    def metrics_snapshot(self) -> metrics.Snapshot:
        """Every monitoring number now (``GET /metrics``, the console's status line)."""
        return metrics.snapshot(self.store, self.settings.heartbeat_ttl)

    def count_tasks(self) -> int:
        """How many tasks are defined."""
        return self.store.count_tasks()

    def recent_activity(self) -> tuple[metrics.Activity, str]:
        """Runs finished per minute and failures of the last hour, read once from the events stream, and the
        cursor to follow it from (add each event :meth:`events_since` brings to keep the numbers current)."""
        cursor = events.newest_id(self.store, "events")
        activity = metrics.Activity()
        since = int((time.time() - 3600) * 1000)
        for _, fields in self.store.stream_range("events", f"{since}-0", cursor, 20_000):
            activity.add(json.loads(fields["event"]))
        return activity, cursor

    def events_cursor(self) -> str:
        """Where the events stream ends now: :meth:`events_since` from here brings only what comes next."""
        return events.newest_id(self.store, "events")

    def events_since(self, cursor: str, *, wait_ms: int | None = events.BLOCK_MS) -> events.Batch:
        """The events after ``cursor`` (``{"type", "task_id", "ts", ...}``), waiting up to ``wait_ms`` for one."""
        return events.read_events(self.store, cursor, wait_ms)

    def recent_logs(self, task_id: str | None, count: int) -> list[tuple[str, dict[str, Any]]]:
        """The last ``count`` log entries (of one task if given), oldest first, with their ids."""
        return events.recent_logs(self.store, task_id, count)

    def logs_cursor(self) -> str:
        """Where the log stream ends now: :meth:`logs_since` from here brings only what comes next."""
        return events.newest_id(self.store, "logs")

    def logs_since(self, cursor: str, task_id: str | None = None, *,
                   wait_ms: int | None = events.BLOCK_MS) -> events.Batch:
        """The log entries after ``cursor`` (of one task if given), waiting up to ``wait_ms`` for one."""
        return events.read_logs(self.store, cursor, task_id, wait_ms)

    # -- the Redis itself ----------------------------------------------------------------------

    def ping(self) -> None:
        """Check that Redis answers (``NoRedis`` if not)."""
        self.store.redis.ping()

    def redis_label(self) -> str:
        """Where this service's Redis is, for people: ``host:port``, or the socket's path."""
        kwargs = self.store.redis.connection_pool.connection_kwargs
        if kwargs.get("path"):
            return str(kwargs["path"])
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
