"""core.cron: validation, fire times, and Vixie cron's daylight-saving rules."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.cron import check_expression, check_timezone, next_fire, next_fires
from core.errors import InvalidSpec

NY = "America/New_York"
BERLIN = "Europe/Berlin"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(tz: str, *args: int, fold: int = 0) -> datetime:
    """The instant (in UTC) of a wall time in ``tz``."""
    return datetime(*args, tzinfo=ZoneInfo(tz), fold=fold).astimezone(UTC)


def fires_utc(expr: str, tz: str, after: datetime, count: int) -> list[datetime]:
    """``next_fires`` as UTC instants.

    Aware datetimes in one zone compare by wall time, and across zones a time in a fold never
    compares equal (PEP 495), so tests compare instants.
    """
    return [f.astimezone(UTC) for f in next_fires(expr, tz, after, count)]


def instant(moment: datetime) -> datetime:
    """The same moment in UTC: what to compare when two datetimes may be in different zones."""
    return moment.astimezone(UTC)


# -- plain schedules -------------------------------------------------------------------------------


def test_five_fields():
    assert next_fire("*/5 * * * *", "UTC", utc(2026, 5, 1, 10, 2)) == utc(2026, 5, 1, 10, 5)
    assert fires_utc("*/5 * * * *", "UTC", utc(2026, 5, 1, 10, 2), 3) == [
        utc(2026, 5, 1, 10, 5),
        utc(2026, 5, 1, 10, 10),
        utc(2026, 5, 1, 10, 15),
    ]
    assert next_fire("15 14 1 * *", "UTC", utc(2026, 5, 1, 15)) == utc(2026, 6, 1, 14, 15)
    assert next_fire("0 0 * * mon", "UTC", utc(2026, 5, 1)) == utc(2026, 5, 4)  # 1 May 2026 is a Friday


def test_next_fire_returns_aware_utc():
    fire = next_fire("0 12 * * *", BERLIN, local(BERLIN, 2026, 5, 1, 8))
    assert fire.tzinfo is UTC
    assert fire == utc(2026, 5, 1, 10)


def test_strictly_after():
    assert next_fire("*/5 * * * *", "UTC", utc(2026, 5, 1, 10, 5)) == utc(2026, 5, 1, 10, 10)
    just_before = utc(2026, 5, 1, 10, 5) - timedelta(microseconds=1)
    assert next_fire("*/5 * * * *", "UTC", just_before) == utc(2026, 5, 1, 10, 5)
    assert next_fire("* * * * * */2", "UTC", utc(2026, 5, 1, 10, 0, 4)) == utc(2026, 5, 1, 10, 0, 6)
    # ``after`` in another timezone means the same instant
    assert next_fire("*/5 * * * *", "UTC", local(BERLIN, 2026, 5, 1, 12, 5)) == utc(2026, 5, 1, 10, 10)


def test_six_fields_sixth_is_seconds():
    fires = fires_utc("* * * * * */2", "UTC", utc(2026, 5, 1, 10), 4)
    assert fires == [utc(2026, 5, 1, 10, 0, s) for s in (2, 4, 6, 8)]
    assert all(b - a == timedelta(seconds=2) for a, b in pairwise(fires))
    assert next_fire("30 * * * * 15", "UTC", utc(2026, 5, 1, 10)) == utc(2026, 5, 1, 10, 30, 15)


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("@hourly", utc(2026, 5, 1, 11)),
        ("@daily", utc(2026, 5, 2)),
        ("@midnight", utc(2026, 5, 2)),
        ("@weekly", utc(2026, 5, 3)),  # Sunday
        ("@monthly", utc(2026, 6, 1)),
        ("@yearly", utc(2027, 1, 1)),
        ("@annually", utc(2027, 1, 1)),
        ("@DAILY", utc(2026, 5, 2)),
    ],
)
def test_aliases(alias, expected):
    check_expression(alias)
    assert next_fire(alias, "UTC", utc(2026, 5, 1, 10, 30)) == expected


def test_next_fires_in_task_timezone():
    fires = next_fires("0 9 * * *", BERLIN, utc(2026, 5, 1), 2)
    assert [f.utcoffset() for f in fires] == [timedelta(hours=2)] * 2
    assert [(f.day, f.hour) for f in fires] == [(1, 9), (2, 9)]
    assert next_fires("0 9 * * *", BERLIN, utc(2026, 5, 1), 0) == []


@pytest.mark.parametrize(
    "expr",
    ["*/5 * * * *", "0 9 * * 1-5", "0 0 1,15 * *", "0 0 29 2 *", "0 0 L * *", "0 12 * * 1#2",
     "0 0 * JAN-MAR SUN", "0 0 30 2 1", "* * * * * */10", "  0 3 * * *  "],
)
def test_valid_expressions(expr):
    check_expression(expr)
    check_expression(expr, BERLIN)


def test_long_expression_limit():
    minutes = ",".join(str(m) for m in range(60))  # 169 characters
    check_expression(f"{minutes} * * * *")
    with pytest.raises(InvalidSpec, match="too long"):
        check_expression(f"{minutes},{minutes[:32]} * * * *")


# -- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (None, "string"),
        (5, "string"),
        ("* * * *", "4 fields"),
        ("* * * * * * *", "7 fields"),
        ("61 * * * *", "minute field '61'"),
        ("0 24 * * *", "hour field '24'"),
        ("0 0 0 * *", "day-of-month field '0'"),
        ("0 0 * 13 *", "month field '13'"),
        ("0 0 * * 8", "day-of-week field '8'"),
        ("* * * * * 60", "second field '60'"),
        ("*/0 * * * *", "step"),
        ("0 0 * foo *", "month field 'foo'"),
        ("H * * * *", "not supported"),
        ("R 0 * * *", "not supported"),
        ("@reboot", "@reboot"),
        ("@fortnightly", "unknown alias"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4 *", "never fires"),
        ("0 0 31 2,4,6 *", "never fires"),
        ("0 0 * * * *" + " " * 195, "too long"),
    ],
)
def test_refused(expr, fragment):
    with pytest.raises(InvalidSpec) as info:
        check_expression(expr)
    assert info.value.field == "cron_expression"
    assert fragment in info.value.reason


def test_reboot_message_is_clear():
    with pytest.raises(InvalidSpec, match="not supported"):
        check_expression("@reboot")


def test_next_fire_refuses_too():
    with pytest.raises(InvalidSpec, match="never fires"):
        next_fire("0 0 30 2 *", "UTC", utc(2026, 1, 1))
    with pytest.raises(InvalidSpec, match="minute field"):
        next_fires("61 * * * *", "UTC", utc(2026, 1, 1), 3)


@pytest.mark.parametrize("tz", ["Mars/Olympus_Mons", "", "../etc/passwd", "/etc/localtime", None])
def test_bad_timezone(tz):
    with pytest.raises(InvalidSpec) as info:
        check_timezone(tz)
    assert info.value.field == "timezone"
    assert "unknown timezone" in info.value.reason
    with pytest.raises(InvalidSpec, match="timezone"):
        check_expression("0 0 * * *", tz)
    with pytest.raises(InvalidSpec, match="timezone"):
        next_fire("0 0 * * *", tz, utc(2026, 1, 1))


def test_check_timezone_returns_zoneinfo():
    assert check_timezone(BERLIN) == ZoneInfo(BERLIN)


def test_naive_after_is_a_bug():
    with pytest.raises(ValueError):
        next_fire("* * * * *", "UTC", datetime(2026, 1, 1))


# -- timezones and daylight saving -----------------------------------------------------------------


def test_timezone_conversion_berlin():
    assert next_fire("0 9 * * 1-5", BERLIN, utc(2026, 1, 11)) == utc(2026, 1, 12, 8)  # CET
    assert next_fire("0 9 * * 1-5", BERLIN, utc(2026, 7, 12)) == utc(2026, 7, 13, 7)  # CEST


def test_fixed_job_in_spring_gap_runs_at_the_change_once():
    # New York, 2026-03-08: 02:00 EST -> 03:00 EDT; 02:30 does not exist.
    fires = next_fires("30 2 * * *", NY, utc(2026, 3, 7, 12), 3)
    assert [(f.day, f.hour, f.minute, f.utcoffset()) for f in fires[:2]] == [
        (8, 3, 0, timedelta(hours=-4)),  # run right after the change, 03:00 EDT
        (9, 2, 30, timedelta(hours=-4)),  # then the normal 02:30 EDT
    ]
    assert fires_utc("30 2 * * *", NY, utc(2026, 3, 7, 12), 3) == [
        utc(2026, 3, 8, 7), utc(2026, 3, 9, 6, 30), utc(2026, 3, 10, 6, 30)
    ]
    assert next_fire("30 2 * * *", NY, utc(2026, 3, 7, 12)) == utc(2026, 3, 8, 7)
    assert next_fire("30 2 * * *", NY, utc(2026, 3, 8, 7)) == utc(2026, 3, 9, 6, 30)  # once only


def test_fixed_job_several_skipped_times_collapse():
    assert fires_utc("0,15,30,45 2 * * *", NY, utc(2026, 3, 8), 2) == [
        local(NY, 2026, 3, 8, 3, 0), local(NY, 2026, 3, 9, 2, 0)
    ]
    # a fixed job due both in the gap and at 03:00 fires once at 03:00
    assert fires_utc("0 2,3 * * *", NY, utc(2026, 3, 8), 2) == [
        local(NY, 2026, 3, 8, 3), local(NY, 2026, 3, 9, 2)
    ]


def test_fixed_job_in_fall_fold_runs_once():
    # New York, 2026-11-01: 02:00 EDT -> 01:00 EST; 01:30 happens twice.
    fires = next_fires("30 1 * * *", NY, utc(2026, 10, 31, 12), 2)
    assert [(f.day, f.hour, f.minute, f.utcoffset()) for f in fires] == [
        (1, 1, 30, timedelta(hours=-4)), (2, 1, 30, timedelta(hours=-5))
    ]
    assert [f.astimezone(UTC) for f in fires] == [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]
    assert next_fire("30 1 * * *", NY, utc(2026, 11, 1, 5, 30)) == utc(2026, 11, 2, 6, 30)
    # asked between the two occurrences: the second is not a fire
    assert next_fire("30 1 * * *", NY, utc(2026, 11, 1, 5, 45)) == utc(2026, 11, 2, 6, 30)


def test_hourly_job_follows_real_time_across_the_fold():
    after = local(NY, 2026, 11, 1, 0, 30)
    assert fires_utc("0 * * * *", NY, after, 4) == [
        utc(2026, 11, 1, 5),  # 01:00 EDT
        utc(2026, 11, 1, 6),  # 01:00 EST
        utc(2026, 11, 1, 7),  # 02:00 EST
        utc(2026, 11, 1, 8),
    ]
    fires = next_fires("0 * * * *", NY, after, 2)
    assert [(f.hour, f.utcoffset()) for f in fires] == [(1, timedelta(hours=-4)), (1, timedelta(hours=-5))]
    assert next_fire("@hourly", NY, utc(2026, 11, 1, 5)) == utc(2026, 11, 1, 6)


def test_hourly_job_has_no_missing_hour_in_spring():
    fires = next_fires("0 * * * *", NY, local(NY, 2026, 3, 8, 0, 30), 3)
    assert [(f.hour, f.utcoffset()) for f in fires] == [
        (1, timedelta(hours=-5)), (3, timedelta(hours=-4)), (4, timedelta(hours=-4))
    ]
    instants = [f.astimezone(UTC) for f in fires]
    assert instants == [utc(2026, 3, 8, 6), utc(2026, 3, 8, 7), utc(2026, 3, 8, 8)]  # one real hour apart
    # a job whose minute field starts with '*' is a wildcard job: nothing in the gap
    assert next_fire("*/20 2 * * *", NY, utc(2026, 3, 8)) == local(NY, 2026, 3, 9, 2, 0)


def test_berlin_transitions():
    # Europe/Berlin 2026: forward 03-29 02:00 -> 03:00, back 10-25 03:00 -> 02:00.
    assert next_fire("30 2 * * *", BERLIN, utc(2026, 3, 28, 12)) == utc(2026, 3, 29, 1)  # 03:00 CEST
    assert fires_utc("30 2 * * *", BERLIN, utc(2026, 10, 24, 12), 2) == [
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first occurrence only
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
    ]
    assert fires_utc("30 * * * *", BERLIN, local(BERLIN, 2026, 10, 25, 1, 45), 3) == [
        utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30), utc(2026, 10, 25, 2, 30)
    ]


def test_seconds_field_does_not_make_a_wildcard_job():
    # minute and hour are fixed, so the gap's 4 fires collapse into one at the change
    assert fires_utc("30 2 * * * */15", NY, utc(2026, 3, 8), 2) == [
        local(NY, 2026, 3, 8, 3), local(NY, 2026, 3, 9, 2, 30)
    ]


def test_half_hour_shift_lord_howe():
    # Australia/Lord_Howe goes back 30 minutes: 02:00 +11:00 -> 01:30 +10:30 on 2026-04-05.
    tz = "Australia/Lord_Howe"
    fires = next_fires("*/30 * * * *", tz, local(tz, 2026, 4, 5, 1, 0), 3)
    assert [(f.hour, f.minute, f.utcoffset()) for f in fires] == [
        (1, 30, timedelta(hours=11)), (1, 30, timedelta(hours=10, minutes=30)), (2, 0, timedelta(hours=10, minutes=30))
    ]
    assert [f.day for f in next_fires("30 1 * * *", tz, local(tz, 2026, 4, 5, 1, 0), 2)] == [5, 6]


# -- an independent oracle around the transitions --------------------------------------------------


def _oracle(expr: str, tz: str, start: datetime, end: datetime) -> list[datetime]:
    """Vixie's rules, minute by minute over real time (plain 5-field expressions only)."""
    (minutes, hours, days, months, dows), _ = croniter.expand(expr)
    fields = expr.split()

    def matches(wall: datetime) -> bool:
        def has(values, value):
            return values == ["*"] or value in values

        day_ok, dow_ok = has(days, wall.day), has(dows, wall.isoweekday() % 7)
        day = (day_ok or dow_ok) if days != ["*"] and dows != ["*"] else (day_ok and dow_ok)
        return has(minutes, wall.minute) and has(hours, wall.hour) and has(months, wall.month) and day

    fixed = not (fields[0].startswith("*") or fields[1].startswith("*"))
    zone = ZoneInfo(tz)
    fires = []
    instant = start
    while instant <= end:
        now = instant.astimezone(zone)
        before = (instant - timedelta(minutes=1)).astimezone(zone)
        if not fixed:
            due = matches(now.replace(tzinfo=None))
        else:
            due = matches(now.replace(tzinfo=None)) and now.fold == 0
            jump = now.utcoffset() - before.utcoffset()
            if jump > timedelta(0):  # clocks just went forward: run what the gap skipped
                wall = before.replace(tzinfo=None) + timedelta(minutes=1)
                while wall < now.replace(tzinfo=None):
                    due = due or matches(wall)
                    wall += timedelta(minutes=1)
        if due:
            fires.append(instant)
        instant += timedelta(minutes=1)
    return fires


@pytest.mark.parametrize(
    ("tz", "day"),
    [(NY, datetime(2026, 3, 8)), (NY, datetime(2026, 11, 1)), (BERLIN, datetime(2026, 3, 29)),
     (BERLIN, datetime(2026, 10, 25)), ("Australia/Lord_Howe", datetime(2026, 4, 5))],
)
@pytest.mark.parametrize(
    "expr", ["30 2 * * *", "0 * * * *", "*/20 * * * *", "15,45 1-3 * * *", "*/10 2 * * *", "0 2 * * 0", "0 1 8 3 1"]
)
def test_matches_oracle_around_transitions(expr, tz, day):
    start = (day - timedelta(hours=6)).replace(tzinfo=ZoneInfo(tz)).astimezone(UTC)
    end = start + timedelta(hours=24)
    expected = _oracle(expr, tz, start, end)
    got = [f for f in fires_utc(expr, tz, start - timedelta(seconds=1), len(expected) + 1) if f <= end]
    assert got == expected


# -- properties ------------------------------------------------------------------------------------

EXPRESSIONS = [
    "* * * * *", "*/5 * * * *", "0 * * * *", "30 2 * * *", "30 1 * * *", "0 0 * * *", "0 9 * * 1-5",
    "15,45 1-3 * * *", "*/20 2 * * *", "0 0 29 2 *", "0 0 1 * *", "@weekly", "@hourly", "@yearly",
    "0 0 * * 1#1", "0 0 L * *", "30 * * * * */15", "0 12 13 * 5",
]
TIMEZONES = [
    "UTC", NY, BERLIN, "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Apia", "America/Sao_Paulo",
    "America/Havana", "Pacific/Chatham", "Africa/Casablanca", "Europe/London", "America/St_Johns",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    expr=st.sampled_from(EXPRESSIONS),
    tz=st.sampled_from(TIMEZONES),
    after=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2060, 1, 1), timezones=st.just(UTC)),
    count=st.integers(min_value=1, max_value=6),
)
# Casablanca's clocks go back 03:00 -> 02:00 at 2038-09-26 02:00 UTC: the first fire is 02:11
# +01:00 (fold=0) and then 02:11 +00:00 (fold=1), both ambiguous wall times, which never compare
# equal to a UTC datetime with ``==`` (PEP 495) although they are the same instant.
@example(expr="* * * * *", tz="Africa/Casablanca", after=utc(2038, 9, 26, 1, 10), count=2)
@example(expr="* * * * *", tz="Africa/Casablanca", after=utc(2038, 9, 26, 2, 10), count=2)
def test_fires_are_after_and_strictly_increasing(expr, tz, after, count):
    first = next_fire(expr, tz, after)
    assert first > after
    assert first.tzinfo is UTC
    fires = next_fires(expr, tz, after, count)
    assert len(fires) == count
    assert instant(fires[0]) == first
    assert all(f.tzinfo == ZoneInfo(tz) for f in fires)
    instants = [f.astimezone(UTC) for f in fires]
    assert all(a < b for a, b in pairwise(instants))
    assert len(set(instants)) == count
    # subtract in UTC: arithmetic on a zoned datetime is wall-clock, and across a gap it lands
    # an hour off (Hypothesis found 2010-03-14 03:00 EDT - 1 µs = a nonexistent 02:59:59 EST)
    assert next_fire(expr, tz, instants[0] - timedelta(microseconds=1)) == first


@settings(max_examples=60, deadline=None)
@given(
    tz=st.sampled_from(TIMEZONES),
    after=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)),
)
def test_every_minute_never_skips_a_real_minute(tz, after):
    fire = next_fire("* * * * *", tz, after)
    assert timedelta(0) < fire - after <= timedelta(minutes=1)
    assert fire.second == 0 and fire.microsecond == 0


# -- speed -----------------------------------------------------------------------------------------


def test_next_fire_is_fast_in_utc():
    after = utc(2026, 5, 1, 10, 2)
    next_fire("*/5 * * * *", "UTC", after)
    runs = 2000
    started = time.perf_counter()
    for _ in range(runs):
        next_fire("*/5 * * * *", "UTC", after)
    assert (time.perf_counter() - started) / runs < 0.001
