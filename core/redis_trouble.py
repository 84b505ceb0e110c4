"""Redis's ways of saying it cannot serve now, as redis-py raises them, in one place.

Redis answers ``MISCONF`` to every write (and to PING) once it cannot save to its disk: the disk holding its
append-only file is full or read-only. redis-py raises that as a plain ``ResponseError``, as if the command
were wrong. It is not: like ``LOADING`` (``BusyLoadingError``), it is the server unable to serve until
something outside it changes, and Redis takes writes again by itself once it can save. Mapped here to a
``ConnectionError`` (as ``LOADING`` is), every part of taskman and of kombu that waits out an unreachable
Redis waits this out too: the scheduler backs off and says so once, workers reconnect instead of dying and
being restarted in a loop, front ends say what Redis said.
"""

from __future__ import annotations

import redis


class RedisCannotSave(redis.exceptions.ConnectionError):
    """Redis refuses writes because it cannot save to its disk (``MISCONF``): full or read-only."""

    def __init__(self, message: str = "", *, status_code: str | None = None) -> None:
        super().__init__(f"Redis cannot save to its disk, so it refuses writes until it can: {message}")
        self.status_code = status_code


def _register() -> None:
    """Add MISCONF to redis-py's table of error codes, which both its parsers (Python, hiredis) read."""
    try:  # tests/core/test_redis_trouble.py checks it is still where it was
        from redis._parsers.base import BaseParser
    except ImportError:  # pragma: no cover - a redis-py that moved it: MISCONF stays a ResponseError
        return
    BaseParser.EXCEPTION_CLASSES.setdefault("MISCONF", RedisCannotSave)


_register()

INFO_SECTIONS = ("persistence", "memory")
"""The ``INFO`` sections :func:`refusal` reads (one command: ``INFO persistence memory``)."""


def refusal(info: dict) -> str | None:
    """Why Redis refuses writes now, from its ``INFO`` of :data:`INFO_SECTIONS`; None if it takes them.
    (A failed snapshot stops writes only where ``stop-writes-on-bgsave-error`` is on, as it is by default.)"""
    if info.get("aof_last_write_status") == "err":
        return "it cannot write its append-only file (is its disk full?)"
    if info.get("rdb_last_bgsave_status") == "err":
        return "its last snapshot failed (is its disk full?)"
    limit = int(info.get("maxmemory") or 0)
    if limit and int(info.get("used_memory") or 0) >= limit:
        return "it is at its maxmemory"
    return None


FULL = (redis.exceptions.OutOfMemoryError,)
"""Redis at its ``maxmemory`` (taskman wants ``noeviction``: it must not drop keys) refuses writes that would
grow it; reads and pops go on. An operator frees memory or raises the limit; meanwhile writers wait."""

REFUSING = (RedisCannotSave, *FULL)
"""A Redis that answers but refuses writes until an operator acts (its disk or its memory full)."""
