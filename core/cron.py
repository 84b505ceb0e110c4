"""Cron expressions: validation and fire times, with Vixie/Debian cron's daylight-saving rules.

An expression has 5 fields (minute hour day-of-month month day-of-week) or 6, where the 6th is
*seconds* (croniter's convention: ``"* * * * * */2"`` fires every 2 seconds). The aliases
``@yearly @annually @monthly @weekly @daily @midnight @hourly`` are accepted; ``@reboot`` is not,
since a task runs by the clock and has no boot to run at. An expression is always read in the
task's timezone (an IANA name such as ``Europe/Berlin``).

How fire times are found
------------------------
Candidates are the wall-clock times the expression names, produced by croniter on *naive*
datetimes in the task's timezone. Each wall time is then mapped to real instants, which is where
daylight saving matters. Following Vixie cron (the cron of Debian and most Linux systems), a job is a
*wildcard* job when its minute or its hour field starts with ``*`` (``@hourly`` is one), and a
*fixed-time* job otherwise (``@daily``, ``@weekly``, ``@monthly``, ``@yearly`` are). The seconds
field of a 6-field expression plays no part in that choice.

* A wall time that exists once is that instant.
* A wall time that happens twice (clocks go back, e.g. 01:30 on 2026-11-01 in New York): a
  fixed-time job fires once, at the first occurrence; a wildcard job follows real time and fires at
  both occurrences.
* A wall time that never happens (clocks go forward, e.g. 02:30 on 2026-03-08 in New York): a
  fixed-time job is not lost but runs immediately after the change, at the transition instant
  (03:00 EDT); several such skipped times collapse into that one fire. A wildcard job simply has no
  fire at the missing times.

The transition instant is found by bisection between the two readings of the missing wall time
(before and after the change), down to the exact second where the UTC offset changes.

``next_fire`` returns the earliest such instant strictly after the given one, in UTC; ``next_fires``
returns a run of them in the task's timezone, for display. Both assume, like every real timezone
today, that two offset changes are never less than a few hours apart.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.errors import InvalidSpec

if TYPE_CHECKING:  # croniter (and dateutil under it) loads when an expression is first checked or stepped:
    from croniter import croniter  # reading a stored task, as `taskman show` and `list` do, needs neither

__all__ = ["check_timezone", "check_expression", "next_fire", "next_fires", "MAX_EXPRESSION_LENGTH"]

MAX_EXPRESSION_LENGTH = 200
"""Longest cron expression accepted, in characters."""

ALIASES: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
"""The ``@`` shorthands accepted, and the 5-field expressions they stand for."""

_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week", "second")
_ALLOWED = (
    "0-59",
    "0-23",
    "1-31 (or L, or nW for the weekday nearest day n)",
    "1-12 or jan-dec",
    "0-7 or sun-sat (0 and 7 are Sunday; also d#n, Ld)",
    "0-59",
)
_FIELD_CHARS = str.maketrans({c: " " for c in ",-/#()"})

_LOOKAHEAD = timedelta(hours=3)
"""Largest backward clock change allowed for: how far ahead to look for one when searching."""

_UTC = UTC
_ONE_SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class _Spec:
    """A validated expression: what croniter is given, and how daylight saving treats it."""

    expr: str
    fixed: bool


# -- validation ------------------------------------------------------------------------------------


def check_timezone(tz: str) -> ZoneInfo:
    """Return the ``ZoneInfo`` for IANA name ``tz``; ``InvalidSpec("timezone")`` if there is none."""
    if not isinstance(tz, str) or not tz.strip():
        raise InvalidSpec("timezone", f"unknown timezone {tz!r}: give an IANA name such as 'UTC' or 'Europe/Berlin'")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidSpec(
            "timezone", f"unknown timezone {tz!r}: give an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None


def check_expression(expr: str, tz: str = "UTC") -> None:
    """Refuse with ``InvalidSpec("cron_expression")`` an expression that is malformed or never fires.

    ``tz`` is checked too (``InvalidSpec("timezone")``), since the first fire is computed in it.
    """
    _check_fires(_spec(expr), tz)


@lru_cache(maxsize=1024)
def _check_fires(spec: _Spec, tz: str) -> None:
    """Whether an expression ever fires does not depend on when it is asked (cron has no year field), so
    the answer is cached: a batch of a thousand specs with one expression asks croniter once."""
    _next_instant(spec, check_timezone(tz), datetime.now(_UTC))


def _spec(expr: str) -> _Spec:
    if not isinstance(expr, str):
        raise InvalidSpec("cron_expression", f"must be a string such as '*/5 * * * *', not {type(expr).__name__}")
    return _parse(expr)


@lru_cache(maxsize=1024)
def _parse(expr: str) -> _Spec:
    """Validate ``expr`` (anything but 'never fires') and normalise it; errors are not cached."""
    text = expr.strip()
    if not text:
        raise InvalidSpec("cron_expression",
                          "is empty; give 5 fields such as '*/5 * * * *' or an alias such as '@daily'")
    if len(expr) > MAX_EXPRESSION_LENGTH:
        raise InvalidSpec(
            "cron_expression", f"is too long ({len(expr)} characters; at most {MAX_EXPRESSION_LENGTH})"
        )
    if not text.isascii():
        raise InvalidSpec("cron_expression", f"{text!r} contains non-ASCII characters")
    if text.startswith("@"):
        alias = text.lower()
        if alias == "@reboot":
            raise InvalidSpec(
                "cron_expression",
                "'@reboot' is not supported: tasks run by the clock, not when a machine starts; "
                "use a time such as '@daily' or '0 3 * * *'",
            )
        if alias not in ALIASES:
            raise InvalidSpec(
                "cron_expression", f"unknown alias {text!r}; use one of {', '.join(sorted(ALIASES))}"
            )
        text = ALIASES[alias]
    fields = text.split()
    if len(fields) not in (5, 6):
        raise InvalidSpec(
            "cron_expression",
            f"{text!r} has {len(fields)} field{'s' if len(fields) != 1 else ''}; expected 5 "
            "(minute hour day-of-month month day-of-week) or 6 (the same, then seconds)",
        )
    for index, value in enumerate(fields):
        _check_field(index, value, len(fields))
    normalised = " ".join(fields)
    from croniter import CroniterError, croniter

    try:
        croniter.expand(normalised)
    except CroniterError as exc:  # each field was fine alone; say what croniter says of the whole
        raise InvalidSpec("cron_expression", f"{text!r} is not valid: {exc}") from None
    fixed = not (fields[0].startswith("*") or fields[1].startswith("*"))
    return _Spec(normalised, fixed)


def _check_field(index: int, value: str, count: int) -> None:
    """Refuse one field on its own, naming it and the values it takes."""
    name = _FIELDS[index]
    tokens = value.lower().translate(_FIELD_CHARS).split()
    if "h" in tokens or "r" in tokens:
        raise InvalidSpec(
            "cron_expression", f"{name} field {value!r}: hashed (H) and random (R) values are not supported"
        )
    probe = ["*"] * count
    probe[index] = value
    from croniter import CroniterError, croniter

    try:
        croniter.expand(" ".join(probe))
    except CroniterError as exc:
        detail = str(exc)
        if "step" in detail:
            reason = "a step (/n) must be at least 1"
        elif "out of range" in detail:
            reason = f"out of range; allowed: {_ALLOWED[index]}"
        else:
            reason = f"allowed: {_ALLOWED[index]}"
        raise InvalidSpec("cron_expression", f"{name} field {value!r} is not valid: {reason}") from None


# -- fire times ------------------------------------------------------------------------------------


def next_fire(expr: str, tz: str, after: datetime) -> datetime:
    """The first fire of ``expr`` (read in ``tz``) strictly after aware ``after``, as aware UTC."""
    spec = _spec(expr)
    zone = check_timezone(tz)
    return _next_instant(spec, zone, _as_utc(after))


def next_fires(expr: str, tz: str, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` fires strictly after ``after``, as aware datetimes in ``tz``, increasing."""
    spec = _spec(expr)
    zone = check_timezone(tz)
    current = _as_utc(after)
    fires: list[datetime] = []
    for _ in range(max(0, count)):
        current = _next_instant(spec, zone, current)
        fires.append(current.astimezone(zone))
    return fires


def _as_utc(after: datetime) -> datetime:
    if not isinstance(after, datetime) or after.utcoffset() is None:
        raise ValueError(f"'after' must be a timezone-aware datetime, not {after!r}")
    return after.astimezone(_UTC)


_local = threading.local()


def _croniter(expr: str) -> croniter:
    """One croniter per expression and thread, reused: building one costs more than stepping it."""
    cache: dict[str, croniter] | None = getattr(_local, "cache", None)
    if cache is None or len(cache) > 256:
        cache = _local.cache = {}
    it = cache.get(expr)
    if it is None:
        from croniter import croniter

        it = cache[expr] = croniter(expr, datetime(2000, 1, 1))
    return it


def _next_wall(spec: _Spec, wall: datetime) -> datetime:
    """The first naive wall time the expression names strictly after naive ``wall``."""
    from croniter import CroniterBadDateError

    try:
        return _croniter(spec.expr).get_next(datetime, start_time=wall)
    except CroniterBadDateError:
        raise InvalidSpec(
            "cron_expression",
            f"{spec.expr!r} never fires: no calendar date matches it (such as 30 February or 31 April)",
        ) from None


def _next_instant(spec: _Spec, zone: ZoneInfo, after: datetime) -> datetime:
    """The earliest fire instant strictly after aware-UTC ``after`` (see the module docstring).

    Wall times are walked in increasing order. The smallest instant a wall time can yield never
    decreases along the walk, so the walk stops once it reaches the best instant found so far; in
    a timezone with no change nearby that is after the first wall time (the fast path).
    """
    offset_now = after.astimezone(zone).utcoffset()
    offset_soon = (after + _LOOKAHEAD).astimezone(zone).utcoffset()
    assert offset_now is not None and offset_soon is not None
    # A wall time at or before this one cannot fall after ``after``, even if the clock goes back
    # soon. Whole seconds: croniter's results are whole seconds, and floats lose microseconds.
    wall = after.replace(tzinfo=None, microsecond=0) + min(offset_now, offset_soon)
    best: datetime | None = None
    while True:
        wall = _next_wall(spec, wall)
        instants, floor, resume = _resolve(spec, zone, wall)
        for instant in instants:
            if instant > after and (best is None or instant < best):
                best = instant
        if best is not None and floor >= best:
            return best
        wall = resume


def _resolve(spec: _Spec, zone: ZoneInfo, wall: datetime) -> tuple[list[datetime], datetime, datetime]:
    """Map one naive wall time to its fire instants (UTC).

    Also returns a lower bound for the instants of this and every later wall time, and the wall
    time to continue the walk from (past the gap, when ``wall`` falls in one).
    """
    first = wall.replace(tzinfo=zone).astimezone(_UTC)  # fold=0: the reading before a change
    second = wall.replace(tzinfo=zone, fold=1).astimezone(_UTC)  # fold=1: the reading after it
    if first == second:  # exists once
        return [first], first, wall
    if first < second:  # happens twice: clocks went back
        return ([first] if spec.fixed else [first, second]), first, wall
    # Never happens: clocks went forward. ``second`` is before the change, ``first`` after it.
    change = _transition(zone, second, first)
    end_of_gap = change.astimezone(zone).replace(tzinfo=None)
    return ([change] if spec.fixed else []), change, end_of_gap - _ONE_SECOND


def _transition(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The exact instant (UTC, whole seconds) in ``(before, after]`` where ``zone``'s offset changes."""
    new_offset = after.astimezone(zone).utcoffset()
    low, high = math.floor(before.timestamp()), math.ceil(after.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == new_offset:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, _UTC)
