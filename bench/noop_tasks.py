"""Registered tasks for the benchmark: a no-op that counts itself, for raw Celery's baseline."""

import redis

from core.embedded import resolve_redis_url
from worker import app, settings

_counter = None


@app.task(name="bench.noop")
def noop(key: str = "") -> None:
    """Do nothing but count (so the benchmark knows when raw Celery messages are all done)."""
    global _counter
    if key:
        if _counter is None:
            _counter = redis.Redis.from_url(resolve_redis_url(settings))
        _counter.incr(key)
