"""The many-runs storm: thousands of runs submitted while pool processes are killed and a worker restarted.

One scenario, two readers: ``tests/faults/test_many_runs.py`` asserts its invariants on a count the
suite can afford, ``bench/faults.py`` prints its figures for the full 10,000. Both hand it a private
namespace (and ``Processes`` to start its workers and scheduler in), so nothing it kills was started
by anyone else.

The runs are the registered task ``ops.mark`` (``tests/e2e/operator_tasks.py``), which logs every
execution to a file and creates its run's mark with ``O_EXCL``. The storm reads both afterwards:
which runs executed how often, whether two executions of one run overlapped in time, and whether
every succeeded run left its mark exactly once. An execution cut short by a kill has no ``end``
line; it ended when its process died, which the storm records for every process it kills.

Pool processes are found as the children of the worker main processes the storm started
(``/proc/<pid>/task/*/children``), and only those are signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from core.config import Settings
from core.service import MAX_BATCH, Service
from core.store import Store
from tests.conftest import Processes, wait_for
from tests.faults.conftest import BEAT

WORKERS = ("stormA", "stormB")
"""Two prefork workers on the ``registered`` queue: one keeps serving while the other is restarted."""
CONCURRENCY = 2
GRACE = 4.0
"""Dead-worker grace of the storm's namespace (the fault suite's short one)."""
VISIBILITY = 16.0
"""The broker's redelivery window for unacknowledged messages in the storm's namespace: max_timeout
(10) + kill_grace (1) + redelivery_margin (5). A SIGKILLed worker's messages come back after it."""
LOST_THRICE = "worker lost 3 times"
MARK_SECONDS = 0.004
"""How long ``ops.mark`` sleeps by default (half before its effect, half after)."""
FINAL = ("succeeded", "failed", "timed_out", "stopped")


def namespace(prefix: str) -> str:
    """A fresh namespace, so the storm's queues and keys are its own."""
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def storm_env(base: dict[str, str], name: str) -> dict[str, str]:
    """``base`` (a Redis, a data folder) in namespace ``name``, with ``ops.mark`` registered and short windows."""
    return {**base, "TASKMAN_NAMESPACE": name, "TASKMAN_DEAD_WORKER_GRACE": f"{GRACE:g}",
            "TASKMAN_SCHEDULER_LOCK_TTL": "3", "TASKMAN_SCHEDULER_INTERVAL": "0.05", "TASKMAN_KILL_GRACE": "1",
            "TASKMAN_DEFAULT_TIMEOUT": "10", "TASKMAN_MAX_TIMEOUT": "10", "TASKMAN_REDELIVERY_MARGIN": "5",
            "TASKMAN_CLAIM_LEASE": "10",  # a message lost on the way to a killed worker is sent again within ~10 s
            "TASKMAN_IMPORTS": "tests.e2e.operator_tasks"}


def service_for(env: dict[str, str]) -> Service:
    """A service on the Redis and namespace of ``env`` (its ``TASKMAN_*`` variables)."""
    values = {key.removeprefix("TASKMAN_").lower(): value for key, value in env.items() if key.startswith("TASKMAN_")}
    return Service.from_settings(Settings(**values))


def worker_args(name: str, queues: str = "registered", concurrency: int = CONCURRENCY) -> tuple[str, ...]:
    """``celery worker`` arguments of a prefork worker named ``name@host``."""
    return ("worker", "-Q", queues, "-P", "prefork", "-c", str(concurrency), "-n", f"{name}@%h", "-l", "INFO",
            "--without-mingle", "--without-gossip")


def workers_serving(service: Service, task_name: str) -> set[str]:
    """Names (before the ``@``) of the workers that reported ``task_name`` as registered."""
    return {worker.split("@")[0] for worker in service.registered_tasks().get(task_name, {}).get("workers", [])}


def pool_pids(main_pid: int) -> list[int]:
    """The pool processes of a worker: the children of its main process (none if it is gone)."""
    children: list[int] = []
    for thread in Path(f"/proc/{main_pid}/task").glob("*"):
        try:
            children += [int(pid) for pid in (thread / "children").read_text().split()]
        except OSError:
            continue
    return sorted(set(children))


def is_dead(pid: int) -> bool:
    """Whether ``pid`` has exited (gone, or a zombie its parent has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def wait_dead(pids: list[int], timeout: float = 10.0) -> float:
    """Wait until every one of ``pids`` has exited; the time (``time.time``) when the last one was seen dead."""
    wait_for(lambda: all(map(is_dead, pids)), timeout=timeout, interval=0.002, message=f"processes {pids} to die")
    return time.time()


@dataclass
class Execution:
    """One execution of a run by ``ops.mark``: its process, when it started, and how it ended."""

    run_id: str
    pid: int
    started: float
    ended: float | None = None
    outcome: str = ""
    """``effect`` (it created the mark), ``already`` (it found the mark), or empty (cut short)."""


def read_executions(path: Path) -> list[Execution]:
    """Every execution ``ops.mark`` logged to ``path``, matched start to end by (run, pid, start time)."""
    executions: dict[tuple[str, int, str], Execution] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        kind, run_id, pid, started, *rest = line.split()
        key = (run_id, int(pid), started)
        execution = executions.setdefault(key, Execution(run_id, int(pid), float(started)))
        if kind == "end":
            execution.ended, execution.outcome = float(rest[0]), rest[1]
    return list(executions.values())


def just_started(path: Path, within: float, tail: int = 8192) -> set[int]:
    """Processes whose latest line in the executions log is a ``start`` logged less than ``within`` s ago."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - tail))
            lines = log.read().decode(errors="replace").splitlines()[1:]
    except OSError:
        return set()
    latest: dict[int, tuple[str, float]] = {}
    for line in lines:
        parts = line.split()
        if len(parts) >= 4 and parts[2].isdigit():
            latest[int(parts[2])] = (parts[0], float(parts[3]))
    now = time.time()
    return {pid for pid, (kind, started) in latest.items() if kind == "start" and now - started < within}


@dataclass
class Figures:
    """What one storm did and what came of it."""

    runs: int
    seconds: float = 0.0
    states: Counter[str] = field(default_factory=Counter)
    lost_thrice: int = 0
    """Runs failed with "worker lost 3 times" (their pool process was killed under them three times)."""
    other_failures: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """Submitted runs with no record, or not final when the storm ended."""
    pool_kills: int = 0
    kills_mid_run: int = 0
    """Pool kills that cut an execution short (its ``start`` logged, its ``end`` never)."""
    worker_restarts: int = 0
    orphans: int = 0
    """Executions the whole-worker SIGKILL cut short."""
    orphans_recovered_after: float = 0.0
    """Seconds from the worker's SIGKILL until the last of its orphaned runs reached a final state."""
    handed_over: int = 0
    """Runs the scheduler's dead-worker watch handed to another worker (their fence moved on)."""
    redelivered: int = 0
    """Runs whose record counts a redelivery after their worker was lost (``deliveries`` above 0)."""
    redeliveries: int = 0
    """Redeliveries the run records count in all."""
    executions: int = 0
    repeated_executions: int = 0
    """Executions of a run beyond its first (redeliveries, and messages run after the run had ended)."""
    after_final: int = 0
    """Executions that started after their run's record was already final (the body ran again anyway)."""
    overlapping: list[tuple[str, int, int]] = field(default_factory=list)
    """(run, pid, pid) of two executions of one run that were running at the same moment."""
    effects: int = 0
    duplicate_effects: int = 0
    """Marks beyond one per submitted run: marks of run ids nobody submitted, or ``effect`` twice."""
    succeeded_without_effect: list[str] = field(default_factory=list)
    refused_by_mark: int = 0
    """Executions that reached the effect and found the run's mark already there."""

    @property
    def runs_per_second(self) -> float:
        return self.runs / self.seconds if self.seconds else 0.0

    @property
    def lost(self) -> int:
        return len(self.missing) + len(self.succeeded_without_effect)


class Storm:
    """Submits ``runs`` runs of ``ops.mark`` in batches while it kills pool processes ``kills`` times and,
    a quarter of the way through, SIGKILLs one whole worker and starts it again under the same name (as a
    supervisor would)."""

    def __init__(self, service: Service, procs: Processes, directory: Path, runs: int, kills: int,
                 timeout: float = 200.0) -> None:
        self.service = service
        self.store: Store = service.store
        self.procs = procs
        self.directory = directory
        self.marks = directory / "marks"
        self.log = directory / "executions"
        self.runs = runs
        self.kills = kills
        self.timeout = timeout
        self.workers: dict[str, subprocess.Popen] = {}
        self.deaths: dict[int, float] = {}
        """Pid → when the storm saw it dead, for every process it killed."""
        self.run_ids: list[str] = []
        self.figures = Figures(runs)
        self._submit_error: BaseException | None = None
        self._restart_pids: list[int] = []
        self._restarted_at = 0.0

    def start_stack(self) -> None:
        """Start the scheduler and the two workers; return once both workers report ``ops.mark``."""
        self.marks.mkdir(parents=True, exist_ok=True)
        self.procs.start("beat", *BEAT)
        for name in WORKERS:
            self.workers[name] = self.procs.start(f"worker-{name}", *worker_args(name))
        wait_for(lambda: workers_serving(self.service, "ops.mark") >= set(WORKERS), timeout=60,
                 message="the storm's workers to report ops.mark")
        wait_for(lambda: self.store.redis.get(self.store.keys.scheduler_lock), timeout=30,
                 message="the scheduler to take its lock")

    def run(self) -> Figures:
        """The whole storm: submit, kill, restart, wait for every run to end, then read back what happened."""
        self.start_stack()
        started = time.monotonic()
        submitter = threading.Thread(target=self._submit, name="storm-submit", daemon=True)
        submitter.start()
        kill_at = [self.runs * (index + 1) // (self.kills + 2) for index in range(self.kills)]
        restart_at = self.runs // 4
        deadline = time.monotonic() + self.timeout
        pending: set[str] = set()
        next_look = 0.0
        while True:
            if self._submit_error is not None:
                raise self._submit_error
            done = len(os.listdir(self.marks))
            if kill_at and done >= kill_at[0]:
                kill_at.pop(0)
                self._kill_a_pool_process()
            elif restart_at and done >= restart_at:
                restart_at = 0
                self._restart_a_worker()
            elif not submitter.is_alive() and (done >= self.runs or time.monotonic() >= next_look):
                next_look = time.monotonic() + 5
                pending = self._unfinished(pending or set(self.run_ids))
                if not pending:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"the storm did not end within {self.timeout:g} s: {done} marks, "
                                     f"{len(pending)} runs not final, e.g. {sorted(pending)[:5]}")
            time.sleep(0.1)
        self.figures.seconds = time.monotonic() - started
        self._read_back()
        return self.figures

    def _submit(self) -> None:
        try:
            for first in range(0, self.runs, MAX_BATCH):
                specs = [{"name": f"mark-{index}", "task_name": "ops.mark", "args": [str(self.directory)]}
                         for index in range(first, min(self.runs, first + MAX_BATCH))]
                self.run_ids += [task.runs[0].id for task in self.service.create_many(specs)]
        except BaseException as exc:
            self._submit_error = exc

    def _busy(self, candidates: set[int], wait: float = 2.0) -> int | None:
        """One of ``candidates`` that started an execution within the last millisecond, looked for during
        ``wait`` seconds (None if none did)."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            busy = sorted(candidates & just_started(self.log, within=0.001))
            if busy:
                return busy[0]
            time.sleep(0.0005)
        return None

    def _kill_a_pool_process(self) -> None:
        """SIGKILL one pool process of the storm's workers, one that just started an execution if any does:
        every other kill a few milliseconds later, after ``ops.mark`` did its effect and before it returned."""
        pools = {pid for worker in self.workers.values() if worker.poll() is None for pid in pool_pids(worker.pid)}
        if not pools:
            return
        pid = self._busy(pools) or min(pools)
        if self.figures.pool_kills % 2:
            time.sleep(MARK_SECONDS * 0.6)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.deaths[pid] = wait_dead([pid])
        self.figures.pool_kills += 1

    def _restart_a_worker(self) -> None:
        """SIGKILL the first worker's whole process group (as one of its pool processes just started an
        execution), then start it again under the same name, as ``taskman up`` or a service manager would."""
        name = WORKERS[0]
        worker = self.workers[name]
        pids = pool_pids(worker.pid)
        self._busy(set(pids))
        self.procs.stop(worker, signal.SIGKILL)
        dead_at = wait_dead(pids)
        self._restarted_at = dead_at
        self._restart_pids = pids
        self.deaths.update({pid: dead_at for pid in pids})
        self.workers[name] = self.procs.start(f"worker-{name}", *worker_args(name))
        self.figures.worker_restarts += 1

    def _states(self, run_ids: list[str] | None = None) -> dict[str, tuple[str, str, float | None, int, int]]:
        """Run id → (state, error, finished_at, deliveries, fence) of ``run_ids`` (all submitted runs), pipelined."""
        answers: dict[str, tuple[str, str, float | None, int, int]] = {}
        ids = list(self.run_ids) if run_ids is None else run_ids
        for first in range(0, len(ids), 2000):
            pipe = self.store.redis.pipeline(transaction=False)
            chunk = ids[first:first + 2000]
            for run_id in chunk:
                pipe.hmget(self.store.keys.run(run_id), "state", "error", "finished_at", "deliveries", "fence")
            for run_id, (state, error, finished, deliveries, fence) in zip(chunk, pipe.execute(), strict=True):
                answers[run_id] = (state or "", error or "", float(finished) if finished else None,
                                   int(deliveries or 0), int(fence or 0))
        return answers

    def _unfinished(self, run_ids: set[str]) -> set[str]:
        """Those of ``run_ids`` whose run is not final yet (or has no record)."""
        return {run_id for run_id, (state, *_) in self._states(sorted(run_ids)).items() if state not in FINAL}

    def _read_back(self) -> None:
        """Fill in the figures from the run records, the marks and the executions log."""
        states = self._states()
        self._count_records(states)
        self._count_executions(states, read_executions(self.log))

    def _count_records(self, states: dict[str, tuple[str, str, float | None, int, int]]) -> None:
        figures = self.figures
        for run_id, (state, error, _, deliveries, fence) in states.items():
            figures.states[state or "missing"] += 1
            if state not in FINAL:
                figures.missing.append(run_id)
            elif state == "failed" and LOST_THRICE in error:
                figures.lost_thrice += 1
            elif state != "succeeded":
                figures.other_failures.append(f"{run_id} {state}: {error}")
            figures.redelivered += deliveries > 0
            figures.redeliveries += deliveries
            figures.handed_over += fence > 0
        marks = set(os.listdir(self.marks))
        figures.effects = len(marks & states.keys())
        figures.duplicate_effects = len(marks - states.keys())
        figures.succeeded_without_effect = sorted(run_id for run_id, (state, *_) in states.items()
                                                  if state == "succeeded" and run_id not in marks)

    def _count_executions(self, states: dict[str, tuple[str, str, float | None, int, int]],
                          executions: list[Execution]) -> None:
        figures = self.figures
        now = time.time()
        by_run: dict[str, list[Execution]] = defaultdict(list)
        for execution in executions:
            by_run[execution.run_id].append(execution)
        figures.executions = len(executions)
        figures.repeated_executions = len(executions) - len(by_run)
        effect_lines = Counter(execution.run_id for execution in executions if execution.outcome == "effect")
        figures.duplicate_effects += sum(count - 1 for count in effect_lines.values())
        figures.refused_by_mark = sum(1 for execution in executions if execution.outcome == "already")
        figures.after_final = sum(1 for execution in executions
                                  if (finished := states[execution.run_id][2]) is not None
                                  and execution.started > finished)
        cut_short = [execution for execution in executions if execution.ended is None]
        figures.kills_mid_run = sum(1 for execution in cut_short if execution.pid in self.deaths
                                    and execution.pid not in self._restart_pids)
        orphans = [execution for execution in cut_short if execution.pid in self._restart_pids]
        figures.orphans = len(orphans)
        if orphans:
            figures.orphans_recovered_after = max((states[execution.run_id][2] or now) - self._restarted_at
                                                  for execution in orphans)
        for run_id, runs in by_run.items():
            spans = sorted((execution.started, self._end_of(execution, now), execution.pid) for execution in runs)
            figures.overlapping += [(run_id, pid, other) for index, (_, end, pid) in enumerate(spans)
                                    for start, _, other in spans[index + 1:] if start < end]

    def _end_of(self, execution: Execution, now: float) -> float:
        """When an execution stopped: its ``end`` line, else its process's death (still alive: now)."""
        if execution.ended is not None:
            return execution.ended
        died = self.deaths.get(execution.pid)
        return died if died is not None and died >= execution.started else now

