"""The console at 200x50: the task list uses the width (issue 12, "Small terminals and large ones").

A list wide enough shows when each task's latest run started, and the success rate and p95 duration of its
recent finished runs; a narrower one keeps its six columns. Driven by keystrokes and resizes against the
snapshot tests' fixed history (the list's clock pinned), and once against real workers.
"""

from __future__ import annotations

import time

import pytest

import tui.widgets.task_table as task_table_module
from tests.tui.test_console import until
from tests.tui.test_snapshots import NOW, _loaded, app_for, fixed, history  # noqa: F401  (fixtures)
from tui.app import TaskmanApp
from tui.widgets.task_table import COLUMNS, WIDE_COLUMNS, TaskTable

LARGE = (200, 50)


@pytest.fixture
def list_clock(monkeypatch):
    """The list's "now", pinned to the history's NOW; ``set`` moves it."""

    class Clock:
        now = NOW

        def set(self, now: float) -> None:
            self.now = now

    clock = Clock()
    monkeypatch.setattr(task_table_module, "clock", lambda: clock.now)
    return clock


def labels(table: TaskTable) -> tuple[str, ...]:
    return tuple(str(column.label) for column in table.ordered_columns)


def rows(table: TaskTable) -> dict[str, dict[str, str]]:
    """Each shown task's cells as text, by name and column."""
    shown = {}
    for index in range(table.row_count):
        cells = [str(cell) for cell in table.get_row_at(index)]
        shown[cells[0]] = dict(zip(labels(table), cells, strict=True))
    return shown


async def wide_and_drawn(pilot) -> TaskTable:
    await _loaded(pilot)
    table = pilot.app.screen.query_one(TaskTable)
    await until(pilot, lambda: table.wide and rows(table).get("ping-billing", {}).get("SUCCESS") == "95% of 20",
                message="the wide list with the history")
    return table


async def test_at_200x50_the_list_shows_the_runs_history(history, list_clock):  # noqa: F811
    service, _ = history
    async with app_for(service).run_test(size=LARGE) as pilot:
        table = await wide_and_drawn(pilot)
        assert labels(table) == WIDE_COLUMNS
        shown = rows(table)
        assert {name: (cells["NEXT"], cells["STARTED"], cells["LAST"], cells["SUCCESS"], cells["P95"])
                for name, cells in shown.items()} == {
            "ping-billing": ("+4m", "1m ago", "✔ 193 ms", "95% of 20", "186 ms"),
            "nightly-export": ("–", "1d ago", "⏱ 5.0 s", "0% of 1", "5.0 s"),
            "daily_report": ("–", "2h ago", "✘ 14 ms", "50% of 2", "14 ms"),
        }
        # all of it within the list's box, and wider than the six columns were
        narrow = sum(column.get_render_width(table) for column in table.ordered_columns
                     if str(column.label) in COLUMNS)
        assert narrow + 30 < table.virtual_size.width <= table.scrollable_content_region.width
        # the time since a run started moves with the clock (no read needed)
        list_clock.set(NOW + 3600)
        await until(pilot, lambda: rows(table)["ping-billing"]["STARTED"] == "1h ago", message="the start an hour on")
        assert rows(table)["ping-billing"]["NEXT"] == "due"


@pytest.mark.parametrize("size", [(80, 24), (120, 32), (150, 40)], ids=["80x24", "120x32", "150x40"])
async def test_narrower_terminals_keep_the_six_columns(history, list_clock, size):  # noqa: F811
    service, _ = history
    async with app_for(service).run_test(size=size) as pilot:
        await _loaded(pilot)
        table = pilot.app.screen.query_one(TaskTable)
        assert not table.wide and labels(table) == COLUMNS
        assert rows(table)["ping-billing"]["LAST"] == "✔ 193 ms"
        assert table.virtual_size.width <= table.scrollable_content_region.width


async def test_the_columns_follow_the_terminal_and_the_cursor_stays(history, list_clock):  # noqa: F811
    service, _ = history
    async with app_for(service).run_test(size=LARGE) as pilot:
        table = await wide_and_drawn(pilot)
        await pilot.press("G")
        chosen = table.selected
        assert chosen is not None and table.cursor_row == 2
        await pilot.resize_terminal(80, 24)
        await until(pilot, lambda: not table.wide and labels(table) == COLUMNS, message="the six columns")
        assert table.selected is chosen and table.row_count == 3
        await pilot.resize_terminal(*LARGE)
        await until(pilot, lambda: table.wide and labels(table) == WIDE_COLUMNS, message="the wide columns again")
        assert table.selected is chosen and rows(table)["ping-billing"]["SUCCESS"] == "95% of 20"


async def test_a_run_reaches_its_row_in_the_wide_list(stack):
    """Against real workers: a run's end arrives from the events stream with its start, rate and p95."""
    name = f"wide-{time.time_ns() % 10**9}"
    task = stack.create({"name": name, "cron_expression": "0 0 1 1 *", "function_name": "f",
                         "function_code": "def f():\n    return 1"})
    async with TaskmanApp(stack).run_test(size=LARGE) as pilot:
        table = pilot.app.screen.query_one(TaskTable)
        await until(pilot, lambda: task.id in table.rows and table.wide, message="the task in the wide list")
        cells = lambda: dict(zip(labels(table), map(str, table.get_row(task.id)), strict=True))  # noqa: E731
        assert (cells()["STARTED"], cells()["SUCCESS"], cells()["P95"]) == ("–", "–", "–")
        stack.run_now(task.id)
        await until(pilot, lambda: cells()["SUCCESS"] == "100% of 1", timeout=60, message="the run's outcome")
        shown = cells()
        assert shown["LAST"].startswith("✔") and shown["P95"].endswith(("ms", "s"))
        assert shown["STARTED"] == "just now" or shown["STARTED"].endswith("s ago")
    stack.delete(task.id)
