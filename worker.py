"""The Celery app and its tasks — thin: each task calls into ``core.runner``.

``celery -A worker worker`` and ``taskman worker`` both start it. Code runs go to the ``code``
queue (prefork: killable, memory-limited), API runs to ``http`` (threads: many requests at once),
registered tasks to ``registered`` or the queue their spec names. Registered tasks are the
operator's own Celery tasks: ``GuardedTask`` lets a run begin (or drops its message), Celery's
signals record how it ended.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid

from celery import Task, signals
from celery.exceptions import Ignore

from core import builtins, http
from core.config import WORKER_LIFE_VARIABLE, Settings
from core.dispatch import CODE_QUEUE, CODE_TASK, FENCE_HEADER, HTTP_TASK, OWN_TASKS, TASK_HEADER, make_celery
from core.embedded import resolve_redis_url
from core.jail import Jail
from core.models import RunState
from core.runner import Runner, format_exception
from core.store import LIFE_ID, Store


class GuardedTask(Task):
    """The base of every task this worker runs: a registered task's body runs only if its run may begin.

    A Celery signal cannot stop a task, so the guard sits in ``__call__`` (Celery's tracer calls it when a
    task class defines one): a message whose run was stopped, has finished, was handed to another worker
    (its fence moved on) or was given up after 3 deliveries is acknowledged and dropped (``Ignore``), and
    the operator's code never sees it. taskman's own tasks guard their runs in ``core.runner``. A message
    taskman did not send (no fence header: the operator's own ``.delay()``) is none of its business and runs.
    """

    def __call__(self, *args, **kwargs):
        request = self.request
        if request.called_directly:  # called as a function, not from a message: nothing to guard
            return super().__call__(*args, **kwargs)
        fence = _fence(request)
        if self.name not in OWN_TASKS and fence is not None and runner().registered_started(
                request.id, fence, _life(request.hostname), task_id=_task_of(request)) is None:
            raise Ignore()
        return self.run(*args, **kwargs)


settings = Settings()
app = make_celery(settings, resolve_redis_url(settings), task_cls=GuardedTask)
_runners: dict[int, Runner] = {}
UNRESTRICTED_CODE = os.environ.get("TASKMAN_TEST_UNRESTRICTED_CODE") == "1"
"""Test-only: run code tasks as plain Python inside the jail, to prove the jail holds without the language wall."""


def runner() -> Runner:
    """This process's runner (a forked pool child builds its own Redis connection)."""
    pid = os.getpid()
    if pid not in _runners:
        store = Store.from_settings(settings, resolve_redis_url(settings))
        _runners.clear()
        _runners[pid] = Runner(store, settings, f"{socket.gethostname()}:{pid}", unrestricted_code=UNRESTRICTED_CODE)
    return _runners[pid]


def _this_life() -> str:
    given = os.environ.get(WORKER_LIFE_VARIABLE, "")
    return given if LIFE_ID.fullmatch(given) else uuid.uuid4().hex[:12]


LIFE = _this_life()
"""This start of the worker (its pool processes, forked from it, share it): runs record ``node#life`` and the
heartbeat beats for it, so a worker restarted under the same node name does not vouch for its predecessor's
runs, which the dead-worker watch then hands over after the grace -- or at once if the supervisor that gave
this id (``taskman up``) saw the worker exit."""


def _life(node: str | None) -> str:
    return f"{node or socket.gethostname()}#{LIFE}"


def _task_of(request) -> str | None:
    """The run's task as its message names it (a header; None for messages from before it)."""
    value = getattr(request, TASK_HEADER, None)
    return value if isinstance(value, str) and value.isalnum() and len(value) <= 64 else None


def _fence(request) -> int | None:
    """The fence a run's message was sent with (a header; None for messages from before fences)."""
    value = getattr(request, FENCE_HEADER, None)
    return int(value) if isinstance(value, (int, str)) and str(value).isdigit() else None


@app.task(name=CODE_TASK, bind=True)
def run_code(self, run_id: str, task_id: str) -> None:
    """Run a code task's function in the jail."""
    runner().run_code(run_id, task_id, _fence(self.request), _life(self.request.hostname))


@app.task(name=HTTP_TASK, bind=True)
def run_http(self, run_id: str, task_id: str) -> None:
    """Send an API task's request."""
    runner().run_http(run_id, task_id, _fence(self.request), _life(self.request.hostname))


@app.task(name="taskman.echo")
def echo(*args, **kwargs):
    return builtins.echo(*args, **kwargs)


@app.task(name="taskman.sleep")
def sleep(seconds: float = 1.0):
    return builtins.sleep(seconds)


@app.task(name="taskman.prune_history")
def prune_history():
    return builtins.prune_history(runner().store)


@signals.task_success.connect
def _registered_succeeded(sender=None, result=None, **_):
    if sender is not None and sender.name not in OWN_TASKS:
        runner().registered_finished(sender.request.id, RunState.SUCCEEDED, result=result,
                                     fence=_fence(sender.request))


@signals.task_failure.connect
def _failed(sender=None, task_id=None, exception=None, einfo=None, **_):
    """A registered task raised, or any run was killed by its hard time limit."""
    name = type(exception).__name__
    hard = exception.args[0] if name == "TimeLimitExceeded" and exception.args else None
    if isinstance(hard, (int, float)):  # Celery's hard limit: timeout + kill_grace, sent by the pool's parent
        state, error = RunState.TIMED_OUT, (
            f"limit {hard - settings.kill_grace:g} s; it did not stop, and its process was killed at the hard "
            f"time limit ({settings.kill_grace:g} s later)")
    elif name in ("TimeLimitExceeded", "SoftTimeLimitExceeded"):
        state, error = RunState.TIMED_OUT, "its limit passed; its process was killed"
    else:
        state, error = RunState.FAILED, f"{name}: {exception}"
    trace = str(einfo) if einfo is not None else format_exception(exception)
    runner().registered_finished(task_id, state, error=error, traceback=trace)


@signals.worker_init.connect
def _limit_http_memory(sender=None, **_):
    """A threads pool runs its API requests in this very process: cap its data memory. (A prefork parent
    is left alone: its code-run children would inherit the limit.)"""
    if "thread" in str(getattr(sender, "pool_cls", "")).lower():
        http.limit_memory(settings.http_memory_limit_mb)


@signals.worker_process_init.connect
def _warm_jail(**_):
    """Each pool process starts its jail template now (without waiting), so the first code run need not."""
    if CODE_QUEUE in _served_queues(app):
        runner().jail.spawn()


@signals.worker_ready.connect
def _report_registered(sender=None, **_):
    queues = _served_queues(sender.app) if sender else []
    names = [name for name in app.tasks if not name.startswith("celery.") and name not in OWN_TASKS]
    runner().store.record_registered(names, sender.hostname if sender else socket.gethostname(), queues,
                                     isolation=_isolation() if CODE_QUEUE in queues else None)


def _served_queues(celery_app) -> list[str]:
    return [queue.name for queue in celery_app.amqp.queues.consume_from.values()]


def _isolation() -> dict:
    """The walls this worker's code runs get (probed once by a throwaway jail template)."""
    probe = Jail(jail_uid=settings.jail_uid, accept_weak=settings.jail_accept_weak, grace=settings.kill_grace)
    try:
        report = probe.start()
    except Exception as exc:
        return {"up": {}, "why": {"jail": str(exc)}, "missing": ["fresh_process"],
                "accept_weak": settings.jail_accept_weak, "unrestricted_test_mode": UNRESTRICTED_CODE}
    finally:
        probe.close()
    return {**report.to_dict(), "missing": report.missing(), "accept_weak": settings.jail_accept_weak,
            "unrestricted_test_mode": UNRESTRICTED_CODE}


HEARTBEAT_SECONDS = 2.0
_beating = threading.Event()


def _beat_forever(node: str, facts: dict) -> None:
    """Mark this worker alive in Redis every 2 s, whether or not Celery's own events are on: the
    scheduler hands a silent worker's runs, running or prefetched, to another worker after ``dead_worker_grace``.
    Each beat carries a few numbers for the workers view (``_stats``)."""
    store = runner().store
    while not _beating.wait(HEARTBEAT_SECONDS):
        try:
            store.heartbeat(node, stats=_stats(facts), life=_life(node), holds=_holds())
        except Exception:  # a missed beat only makes the worker look late; never let it disturb the consumer
            pass


HOLDS_MOST = 5000
"""Most message ids a heartbeat lists; a worker holding more says nothing (taken to hold everything)."""


def _holds() -> list[str] | None:
    """The ids of the messages this worker has taken and not finished: prefetched or running (a dict copied
    whole, under the GIL, while the consumer thread changes it); None if there are too many to list."""
    from celery.worker import state

    held = list(state.requests.copy())
    return held if len(held) <= HOLDS_MOST else None


def _stats(facts: dict) -> dict:
    """This worker's facts with its runs active and messages taken so far (Celery's own counters, kept in
    this main process whatever the pool)."""
    from celery.worker import state

    return {**facts, "active": len(state.active_requests), "processed": state.all_total_count[0]}


def _facts(consumer) -> dict:
    """What does not change while this worker runs: host, pid, pool, concurrency, messages taken ahead per
    process or thread (Celery's prefetch multiplier)."""
    pool = getattr(consumer, "pool", None)
    name = type(pool).__module__.rpartition(".")[2] if pool is not None else "?"
    concurrency = getattr(getattr(consumer, "controller", None), "concurrency", None)
    prefetch = getattr(consumer, "prefetch_multiplier", None)
    return {"host": socket.gethostname(), "pid": os.getpid(), "pool": {"thread": "threads"}.get(name, name),
            "concurrency": concurrency if isinstance(concurrency, int) else None,
            "prefetch": prefetch if isinstance(prefetch, int) else None}


@signals.worker_ready.connect
def _start_heartbeat(sender=None, **_):
    node = sender.hostname if sender is not None else socket.gethostname()
    facts = _facts(sender)
    try:
        runner().store.heartbeat(node, stats=_stats(facts), life=_life(node), holds=_holds())
    except Exception:
        pass
    threading.Thread(target=_beat_forever, args=(node, facts), name="taskman-heartbeat", daemon=True).start()


@signals.worker_shutdown.connect
def _worker_gone(sender=None, **_):
    """A worker that stops cleanly stops counting as alive at once (a killed one ages out)."""
    _beating.set()
    try:
        node = getattr(sender, "hostname", None) or socket.gethostname()
        runner().store.worker_gone(node, _life(node))
    except Exception:
        pass
