"""Executing one run inside a worker process: begin, execute, record — in few round trips.

A run's bookkeeping is two pipelined round trips: ``begin`` (a guarded transition to running that also
writes the run's start line, plus the read of the task's definition) and ``finish`` (a guarded transition
to the final state, the task's summary, the log lines and the event). The guards make a stop issued
meanwhile win: a run that was stopped never starts, and a run stopped while running is not overwritten by
its result. A failed attempt with retries left becomes ``retrying`` and its successor waits in the due set
for its backoff, never as a Celery countdown message.
"""

from __future__ import annotations

import json
import time
import traceback as tb
from dataclasses import dataclass
from typing import Any

import httpx

from core import http, jail, metrics, sandbox
from core.config import Settings
from core.events import EventType
from core.lifecycle import next_attempt, run_event
from core.models import Run, RunState, Task
from core.store import Store
from core.text import human_duration

MAX_DELIVERIES = 3
LOG_FLUSH_SECONDS = 0.2
LOG_FLUSH_LINES = 100


def log_entry(task_id: str, run_id: str, level: str, message: str) -> dict[str, str]:
    """One log-stream entry."""
    return {"ts": repr(time.time()), "task": task_id, "run": run_id, "level": level, "msg": message}


def json_safe(value: Any) -> Any:
    """A value as JSON and UTF-8 can carry it: anything else becomes its repr, lone surrogates U+FFFD."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = json.dumps(repr(value), ensure_ascii=False)
    return json.loads(text.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))


def text_safe(text: str | None) -> str:
    """``text`` with lone surrogates (which Redis's UTF-8 cannot carry) replaced by U+FFFD."""
    return (text or "").encode("utf-8", "surrogatepass").decode("utf-8", "replace")


class LogBuffer:
    """Collects a run's log lines and ships them in batches, so a print loop costs few round trips.

    The log stream is shared and capped by length, so one run printing 65,000 empty lines would push out
    every other task's lines. A run therefore adds at most ``cap`` + 1 lines: its first ``cap`` - 1, then,
    if it printed more, one line saying how many were dropped, and its closing summary (``last``). What is
    dropped is only dropped from the stream: the run's result and recorded output do not change.
    """

    def __init__(self, store: Store, task_id: str, run_id: str, cap: int = 2_000) -> None:
        self.store = store
        self.task_id = task_id
        self.run_id = run_id
        self.cap = max(2, cap)
        self.pending: list[dict[str, str]] = []
        self.last_flush = time.monotonic()
        self.kept = 0
        self.dropped = 0
        self.dropped_bytes = 0

    def add(self, level: str, message: str) -> None:
        """Queue one line, or count it as dropped once the run has used its share of the stream."""
        if self.kept >= self.cap - 1:
            self.dropped += 1
            self.dropped_bytes += len(message.encode("utf-8", "surrogatepass")) + 1
            return
        self.kept += 1
        self.pending.append(log_entry(self.task_id, self.run_id, level, message))
        if len(self.pending) >= LOG_FLUSH_LINES or time.monotonic() - self.last_flush > LOG_FLUSH_SECONDS \
                or self.kept == self.cap - 1:
            self.flush()

    def closing(self, level: str, message: str) -> dict[str, str]:
        """The run's closing line, always kept (written by its final transition, so only if that happens);
        queues before it one line saying what was dropped (if anything)."""
        if self.dropped:
            self.pending.append(log_entry(
                self.task_id, self.run_id, "warning",
                f"{self.dropped} more log lines ({self.dropped_bytes} bytes) of run {self.run_id} were dropped: "
                f"a run adds at most {self.cap} lines to the log stream (log_lines_cap); its output and result "
                "are kept in full"))
            self.dropped = self.dropped_bytes = 0
        return log_entry(self.task_id, self.run_id, level, message)

    def flush(self, pipe=None) -> None:
        if self.pending:
            self.store.add_logs(self.pending, pipe)
            self.pending = []
        self.last_flush = time.monotonic()


@dataclass
class Started:
    """A run that ``begin`` moved to running, with its task's current definition."""

    run: Run
    task: Task | None
    logs: LogBuffer
    fence: int | None = None
    """The fence the run was started under (None: unknown, so unchecked); its finish must match it."""


class Runner:
    """Carries out runs for one worker process and records what happened."""

    def __init__(self, store: Store, settings: Settings, worker_name: str, *, unrestricted_code: bool = False) -> None:
        self.store = store
        self.settings = settings
        self.worker_name = worker_name
        self._http_client: httpx.Client | None = None
        self._registered: dict[str, Started] = {}
        """Registered runs this process started, by run id, until their end is recorded."""
        self.jail = jail.Jail(jail_uid=settings.jail_uid, accept_weak=settings.jail_accept_weak,
                              grace=settings.kill_grace, unrestricted=unrestricted_code)

    @property
    def http_client(self) -> httpx.Client:
        if self._http_client is None:
            self._http_client = http.make_client(self.settings.http_allow)
        return self._http_client

    def begin(self, run_id: str, task_id: str | None = None, *, fence: int | None = None,
              node: str = "") -> Started | None:
        """Move the run to running; None if it was stopped, already finished, or the message's ``fence``
        is stale (the run was handed to another worker since). ``node`` is the Celery worker's name,
        whose heartbeat the dead-worker watch follows."""
        now = time.time()
        started_line = f"run {run_id} started on {self.worker_name} (attempt {{attempt}}/{{max_attempts}})"
        pipe = self.store.redis.pipeline(transaction=True)
        self.store.transition(run_id, (RunState.QUEUED, RunState.RUNNING), RunState.RUNNING,
                              event={"type": EventType.RUN_STARTED, "run_id": run_id, "ts": now,
                                     "worker": self.worker_name},
                              fields={"started_at": now, "worker": self.worker_name, "node": node}, pipe=pipe,
                              fence=fence, running="add",
                              log={**log_entry("", run_id, "info", started_line), "fresh": True})
        pipe.hgetall(self.store.keys.run(run_id))
        if task_id:
            pipe.hgetall(self.store.keys.task(task_id))
        answers = pipe.execute()
        previous = answers[0]
        if previous is None:
            return None
        run = self.store._run_from(answers[1])
        # The transition above found the run in an allowed state, so its hash, read in the same
        # transaction, exists.
        assert run is not None
        task = self.store._task_from(answers[2]) if task_id else None
        logs = LogBuffer(self.store, run.task_id, run.id, self.settings.log_lines_cap)
        if previous != RunState.RUNNING.value:
            logs.kept += 1  # its start line, written with the transition: shown as the run starts
            return Started(run, task, logs, fence)
        deliveries = self.store.redis.hincrby(self.store.keys.run(run_id), "deliveries", 1) + 1
        if deliveries > MAX_DELIVERIES:
            self.finish(Started(run, task, logs, fence), RunState.FAILED,
                        error=f"worker lost {MAX_DELIVERIES} times while running this run; giving up")
            return None
        logs.add("warning", f"run {run.id} redelivered after its worker was lost (delivery {deliveries})")
        logs.add("info", f"run {run.id} started on {self.worker_name} (attempt {run.attempt}/{run.max_attempts})")
        logs.flush()
        return Started(run, task, logs, fence)

    def _begin_task_run(self, run_id: str, task_id: str, fence: int | None,
                        node: str) -> tuple[Started, Task] | None:
        """``begin`` for runs that need their task's definition (returned with it); a deleted task fails
        the run."""
        started = self.begin(run_id, task_id, fence=fence, node=node)
        if started is None:
            return None
        if started.task is None:
            self.finish(started, RunState.FAILED, error="the task was deleted before this run started")
            return None
        return started, started.task

    def run_code(self, run_id: str, task_id: str, fence: int | None = None, node: str = "") -> None:
        """Execute a code task's function in a jailed process and record the outcome."""
        begun = self._begin_task_run(run_id, task_id, fence, node)
        if begun is None:
            return
        started, task = begun
        spec = task.spec.with_overrides(started.run.overrides)  # a run may be given other arguments
        limits = sandbox.Limits.for_task(self.settings, spec)
        timeout = self._timeout(task)
        try:
            outcome = self.jail.run(spec.function_code or "", spec.function_name or "", list(spec.args),
                                    dict(spec.kwargs), limits, timeout,
                                    on_output=lambda line: started.logs.add("print", line))
        except jail.JailError as exc:
            self.finish(started, RunState.FAILED, error=f"the jail could not run the code: {exc}", retryable=True)
            return
        except Exception as exc:
            if type(exc).__name__ == "SoftTimeLimitExceeded":
                self.finish(started, RunState.TIMED_OUT, retryable=True, error=f"limit {timeout:g} s")
                return
            raise
        self._record_outcome(started, outcome, timeout)

    def _record_outcome(self, started: Started, outcome: jail.Outcome, timeout: float) -> None:
        if outcome.status == "done":
            self.finish(started, RunState.SUCCEEDED, result=outcome.result, output=outcome.output)
        elif outcome.status == "error":
            self.finish(started, RunState.FAILED, error=outcome.message, traceback=outcome.traceback,
                        output=outcome.output, retryable=outcome.reason == "error")
        elif outcome.status == "timed_out":
            why = "CPU time limit" if outcome.signal_name == "SIGXCPU" else f"limit {timeout:g} s"
            self.finish(started, RunState.TIMED_OUT, retryable=True, output=outcome.output,
                        error=f"{why}; its process was killed")
        elif outcome.status == "crashed":
            self.finish(started, RunState.FAILED, output=outcome.output,
                        error=f"the run's process crashed: {outcome.signal_name}")
        else:  # refused (walls down) or broken (the process broke the jail's protocol)
            self.finish(started, RunState.FAILED, error=outcome.message, output=outcome.output)

    def run_http(self, run_id: str, task_id: str, fence: int | None = None, node: str = "") -> None:
        """Send an API task's request and record the response."""
        begun = self._begin_task_run(run_id, task_id, fence, node)
        if begun is None:
            return
        started, task = begun
        spec = task.spec.with_overrides(started.run.overrides)  # a run may be given other arguments
        try:
            response = http.execute(
                self.http_client, method=spec.method, url=spec.api_url or "", headers=dict(spec.headers),
                params=dict(spec.params), json=spec.json_body, data=spec.data, timeout=self._timeout(task),
                body_cap=self.settings.http_body_cap,
            )
        except http.HttpTaskError as exc:
            state = RunState.TIMED_OUT if "timed out" in exc.message.lower() else RunState.FAILED
            self.finish(started, state, error=exc.message, result=exc.response, retryable=exc.retryable)
        else:
            response["url"] = http.redact_url(response["url"])
            started.logs.add("info", f"{spec.method} {response['url']} → {response['status_code']} "
                                     f"in {human_duration(response['elapsed_ms'] / 1000)}")
            self.finish(started, RunState.SUCCEEDED, result=response)

    def _timeout(self, task: Task | None) -> float:
        timeout = (task.spec.timeout if task else None) or self.settings.default_timeout
        return min(timeout, self.settings.max_timeout)

    def finish(self, started: Started, state: RunState, *, result: Any = None, error: str | None = None,
               traceback: str | None = None, output: str = "", retryable: bool = False) -> RunState | None:
        """Record the end of an attempt; a retryable failure with attempts left becomes ``retrying``."""
        run = started.run
        now = time.time()
        if state is not RunState.SUCCEEDED and retryable and run.attempt < run.max_attempts:
            state = RunState.RETRYING
        duration_ms = round((now - run.started_at) * 1000, 3) if run.started_at else None
        if run.started_at is None:
            run.started_at = now
            duration_ms = 0.0
        result = json_safe(result)
        error, traceback, output = text_safe(error) or None, text_safe(traceback), text_safe(output)
        summary = self._summary(run, state, duration_ms, result, error)
        closing = started.logs.closing("error" if state is not RunState.SUCCEEDED else "info", summary)
        pipe = self.store.redis.pipeline(transaction=True)
        printed = len(started.logs.pending)
        started.logs.flush(pipe)  # what the run printed is shown whatever its end; its closing line only with it
        self.store.transition(
            run.id, (RunState.RUNNING, RunState.QUEUED), state,
            event=run_event(EventType.run_ended(state.value), run, state=state.value, duration_ms=duration_ms),
            fields={"finished_at": now, "duration_ms": duration_ms, "result": result, "error": error or "",
                    "traceback": traceback or "", "output": output},
            pipe=pipe, fence=started.fence, running="rem", log=closing,
        )
        self.store.set_last_run(run.task_id, run.id, state, duration_ms, pipe)
        self.store.count_finished(run.id, state, now, *metrics.run_increments(
            started.task.kind.value if started.task else "unknown", state, duration_ms), pipe=pipe)
        self.store.expire_run(run.id, pipe)
        if state is RunState.RETRYING:
            self._add_retry(started, now, pipe)
        previous = pipe.execute()[printed]
        if previous is None:
            return None
        return state

    @staticmethod
    def _summary(run: Run, state: RunState, duration_ms: float | None, result: Any, error: str | None) -> str:
        took = human_duration(duration_ms / 1000) if duration_ms is not None else "?"
        if state is RunState.SUCCEEDED:
            shown = json.dumps(result, ensure_ascii=False)
            return f"run {run.id} succeeded in {took} → {shown[:200]}"
        if state is RunState.RETRYING:
            return f"run {run.id} attempt {run.attempt} failed in {took}: {error}; retrying"
        if state is RunState.TIMED_OUT:  # said once: "timed out after 5.0 s (limit 5 s; ...)"
            if error and error.startswith("timed out"):
                return f"run {run.id} {error} ({took})"
            return f"run {run.id} timed out after {took}" + (f" ({error})" if error else "")
        return f"run {run.id} {state.value.replace('_', ' ')} after {took}: {error}"

    def _add_retry(self, started: Started, now: float, pipe) -> None:
        """Queue the next attempt in the finishing transaction: it exists exactly when this one is retrying."""
        retry = next_attempt(started.run, started.task, now)
        due_at = retry.scheduled_for or now
        self.store.add_retry(started.run.id, retry, due_at,
                             run_event(EventType.RUN_QUEUED, retry, attempt=retry.attempt, due_at=due_at), pipe)

    # -- registered tasks, observed through Celery's signals -------------------------------------

    def registered_started(self, run_id: str, fence: int | None = None, node: str = "", *,
                           task_id: str | None = None) -> Started | None:
        """``begin`` for a registered task's run; ``task_id`` (its message's header) reads the task's definition
        in the same round trip and keeps both for :meth:`registered_finished`."""
        started = self.begin(run_id, task_id, fence=fence, node=node)
        if started is not None and task_id and started.task is not None and started.task.id == started.run.task_id:
            if len(self._registered) >= 10_000:  # ends never recorded here (a pool process's lost signal)
                self._registered.clear()
            self._registered[run_id] = started
        return started

    def registered_finished(self, run_id: str, state: RunState, *, result: Any = None,
                            error: str | None = None, traceback: str | None = None,
                            fence: int | None = None) -> None:
        """Record the end of a registered task's run (or a run a hard time limit killed). A run this process
        started costs no read: its finishing transition is refused if the run was stopped meanwhile, and its
        closing line is written only with that transition."""
        started = self._registered.pop(run_id, None)
        if started is not None:
            run, task, logs = started.run, started.task, started.logs
        else:
            stored = self.store.get_run(run_id)
            if stored is None or stored.state.final:
                return
            run, task = stored, self.store.get_task(stored.task_id)
            logs = LogBuffer(self.store, run.task_id, run.id, self.settings.log_lines_cap)
        # The operator's task may echo its secret-named kwargs (an API key it was given) in its result or
        # error: those values are masked there, as everywhere a run is shown.
        kwargs = task.spec.with_overrides(run.overrides).kwargs if task else {}
        secrets = http.secret_values(None, body=dict(kwargs))
        self.finish(Started(run, task, logs, fence), state, result=http.scrub(json_safe(result), secrets),
                    error=http.scrub(error, secrets), traceback=http.scrub(traceback, secrets),
                    retryable=state is not RunState.SUCCEEDED)


def format_exception(exc: BaseException) -> str:
    return "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
