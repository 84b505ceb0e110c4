"""An operator's own Celery tasks, imported by the test workers through ``TASKMAN_IMPORTS``.

This is how a team that already runs Celery hands its jobs to taskman as registered tasks.
"""

from worker import app


@app.task(name="ops.add")
def add(x, y):
    return x + y


@app.task(name="ops.fail")
def fail(message="boom"):
    raise RuntimeError(message)
