"""An operator's own Celery tasks, imported by the test workers through ``TASKMAN_IMPORTS``.

This is how a team that already runs Celery hands its jobs to taskman as registered tasks.
"""

import os
import time

from worker import app


@app.task(name="ops.add")
def add(x, y):
    return x + y


@app.task(name="ops.fail")
def fail(message="boom"):
    raise RuntimeError(message)


@app.task(name="ops.mark", bind=True)
def mark(self, directory: str, seconds: float = 0.004) -> str:
    """An effect done once per run however often the run executes (the fault suite's many-runs storm).

    The effect is creating ``marks/<run id>`` (the Celery task id is the run id) with ``O_EXCL``: an
    execution that finds the mark does nothing. Every execution appends a ``start`` and an ``end``
    line, with its pid and times, to ``executions`` (``O_APPEND``: whole lines from many processes),
    so the test can tell redeliveries apart and check that no two executions of a run overlapped.
    Half the sleep comes before the effect and half after, so a kill lands on either side of it.
    """
    run_id, pid, started = self.request.id, os.getpid(), time.time()
    _append_line(directory, f"start {run_id} {pid} {started:.6f}")
    time.sleep(seconds / 2)
    try:
        os.close(os.open(os.path.join(directory, "marks", run_id), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        outcome = "effect"
    except FileExistsError:
        outcome = "already"
    time.sleep(seconds / 2)
    _append_line(directory, f"end {run_id} {pid} {started:.6f} {time.time():.6f} {outcome}")
    return outcome


def _append_line(directory: str, line: str) -> None:
    descriptor = os.open(os.path.join(directory, "executions"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, f"{line}\n".encode())
    finally:
        os.close(descriptor)
