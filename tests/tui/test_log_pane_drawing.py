"""The log pane's batched drawing makes the lines a ``RichLog`` written a line at a time makes, and a new find
redraws only what it highlights yet leaves the pane as a full redraw would. No Redis: entries are handed in."""

from __future__ import annotations

import time

import pytest
from textual.app import App, ComposeResult
from textual.widgets import RichLog

from tui.widgets.log_pane import LogPane

TASK = "0123456789abcdef"


def entries(count: int) -> list[dict]:
    now = time.time()
    return [{"ts": now + i, "task": TASK, "level": ("print", "error", "info")[i % 3],
             "msg": f"line {i} says {'héllo 世界 ' * (i % 7)}\tand {'more ' * (i % 13)}"}
            for i in range(count)]


class Both(App):
    def compose(self) -> ComposeResult:
        pane = LogPane(id="pane")
        pane.names = {TASK: "nightly"}
        yield pane
        yield RichLog(id="plain", wrap=True, markup=False, highlight=False)


def texts(lines) -> list[str]:
    return [line.text for line in lines]


def styled(lines) -> list[list[tuple[str, object]]]:
    return [[(segment.text, segment.style) for segment in line] for line in lines]


@pytest.mark.parametrize("wrap", [True, False])
async def test_a_batch_draws_the_lines_a_line_at_a_time_richlog_draws(wrap):
    app = Both()
    async with app.run_test(size=(70, 40)) as pilot:
        pane, plain = app.query_one("#pane", LogPane), app.query_one("#plain", RichLog)
        await pilot.pause()
        pane.wrap = plain.wrap = wrap
        batch = entries(60)
        pane.add(batch[:5])  # a few, then a larger batch after them
        pane.add(batch[5:])
        for entry in batch:
            plain.write(pane._line(entry), scroll_end=True)
        await pilot.pause()
        assert styled(pane.lines) == styled(plain.lines)
        assert pane.virtual_size == plain.virtual_size
        assert len(pane.starts) == len(pane.shown) == 60
        assert pane.scroll_y == pane.max_scroll_y > 0  # following: the newest line in view


async def test_a_new_find_leaves_the_lines_a_full_redraw_leaves():
    app = Both()
    async with app.run_test(size=(70, 40)) as pilot:
        pane = app.query_one("#pane", LogPane)
        await pilot.pause()
        pane.add(entries(80))
        for query in ("h", "hé", "héllo 世", "and more", "absent", "", "line 1"):
            pane.find(query, jump=False)
            drawn, matches = styled(pane.lines), list(pane.matches)
            pane._render_all()
            assert drawn == styled(pane.lines), query
            assert matches == pane.matches, query
            highlighted = [i for i, line in enumerate(pane.lines)
                           if any(segment.style and segment.style.reverse for segment in line)]
            assert bool(highlighted) == bool(matches), query
