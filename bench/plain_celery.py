"""Plain Celery with its default configuration, for issue 13's baseline: a no-op task, results stored.

``BENCH_PLAIN_REDIS`` is the Redis it uses as broker and result backend (``bench/runs.py`` sets it to its
private server, on a database of its own). Nothing of taskman is imported.
"""

import os

from celery import Celery

url = os.environ["BENCH_PLAIN_REDIS"]
app = Celery("plain", broker=url, backend=url)


@app.task(name="plain.noop")
def noop() -> None:
    """Do nothing; the sender collects the (empty) result."""
