"""Durations as people read them (``core.text.human_duration``), the one way every front end writes them."""

from __future__ import annotations

import pytest

from core.text import human_duration


@pytest.mark.parametrize("seconds, shown", [
    (0, "0 ms"),
    (0.0123, "12 ms"),
    (0.85, "850 ms"),
    (0.9994, "999 ms"),
    (0.9996, "1.0 s"),
    (12.34, "12.3 s"),
    (59.94, "59.9 s"),
    (59.97, "1 m 00 s"),
    (245, "4 m 05 s"),
    (3599.4, "59 m 59 s"),
    (3599.6, "1 h 00 m"),
    (7620, "2 h 07 m"),
    (90000, "1 d 01 h"),
    (-3, "0 ms"),
])
def test_each_unit_until_the_next_reads_better(seconds, shown):
    assert human_duration(seconds) == shown
