"""The new-task form's cron preview at 80x24, and where the import dialog leaves the list's cursor (issue 12).

Driven by keystrokes against a fixed namespace (the snapshot tests' data, their clock pinned), nothing running.
"""

from __future__ import annotations

import json
import re

import pytest
from textual.geometry import Region
from textual.widgets import Input, Select, Static

from tests.tui.test_console import until
from tests.tui.test_snapshots import _loaded, app_for, fixed, pinned_clock, steady  # noqa: F401  (fixtures)
from tui.screens.detail import DetailScreen
from tui.screens.import_file import ImportScreen
from tui.screens.main import MainScreen
from tui.screens.new_task import CronPreview, NewTaskScreen, join_fires
from tui.widgets.task_table import TaskTable

SMALL = (80, 24)
FIRE = r"\w{3} \d{2} \w{3} \d{2}:\d{2}:\d{2}"
FIRES = ["Thu 28 May 20:30:00", "Thu 28 May 20:35:00", "Thu 28 May 20:40:00", "Thu 28 May 20:45:00",
         "Thu 28 May 20:50:00"]
"""The next five fires of ``*/5 * * * *`` after the pinned clock (T0, 2026-05-28 20:26:40 UTC)."""


def shown_lines(widget: Static) -> list[str]:
    """The lines ``widget`` draws in its region, as text (its padding left out)."""
    region = widget.region
    strips = widget.render_lines(Region(0, 0, region.width, region.height))
    return [strip.text[widget.styles.padding.left:].rstrip() for strip in strips]


@pytest.mark.parametrize("width", [0, 20, 40, 69, 70, 76, 200])
def test_a_line_of_the_preview_breaks_only_between_fires(width):
    text = join_fires(FIRES, width)
    lines = text.split("\n")
    assert re.sub(r"\s+", " ", text) == "next: " + ", ".join(FIRES)
    for line in lines:
        assert re.fullmatch(rf"(next: | {{6}})({FIRE}, )*{FIRE},?", line), line
        assert len(line) <= width or not width or re.fullmatch(rf"(next: | {{6}}){FIRE},?", line)
    assert len(lines) == (1 if width in (0, 200) else 2 if width >= 69 else 5)


async def test_the_cron_preview_shows_whole_fires_at_80x24(fixed):  # noqa: F811
    service, _ = fixed
    async with app_for(service).run_test(size=SMALL) as pilot:
        await _loaded(pilot)
        await pilot.press("n")
        form = await until(pilot, lambda: isinstance(pilot.app.screen, NewTaskScreen) and pilot.app.screen)
        form.query_one("#mode", Select).value = "scheduled"
        preview = form.query_one("#cron-preview", CronPreview)
        await until(pilot, lambda: preview.size.width > 0 and preview.fires == FIRES, message="the preview laid out")
        form.query_one("#form").scroll_to_widget(preview, animate=False)
        await steady(pilot)
        # within the screen, and drawn there: two lines, each breaking between two fires
        assert preview.region.right <= SMALL[0] and preview.region.bottom <= SMALL[1]
        assert form.get_widget_at(preview.content_region.x, preview.content_region.y)[0] is preview
        assert shown_lines(preview) == ["next: " + ", ".join(FIRES[:3]) + ",", "      " + ", ".join(FIRES[3:])]
        # a refusal replaces it, and a new expression brings fires back
        cron = form.query_one("#cron", Input)
        cron.value = "0 0 30 2 *"
        await until(pilot, lambda: "never" in " ".join(shown_lines(preview)) and preview.has_class("error"),
                    message="the refusal")
        cron.value = "*/5 * * * *"
        await until(pilot, lambda: shown_lines(preview)[0].startswith("next: Thu 28 May 20:30:00,"),
                    message="the fires again")


async def test_after_an_import_the_cursor_is_on_the_first_imported_task(fixed, tmp_path):  # noqa: F811
    service, _ = fixed
    names = ["imported-first", "imported-second"]
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([{"name": name, "task_type": "scheduled", "cron_expression": "0 0 1 1 *",
                                 "function_code": "def f():\n    return 1", "function_name": "f"}
                                for name in names]))
    async with app_for(service).run_test(size=SMALL) as pilot:
        await _loaded(pilot)
        table = pilot.app.screen.query_one(TaskTable)
        assert table.selected is not None and table.selected.name == "daily_report"
        await pilot.press("i")  # esc cancels: nothing moves
        await until(pilot, lambda: isinstance(pilot.app.screen, ImportScreen), message="the dialog")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="the dialog cancelled")
        assert table.selected.name == "daily_report" and table.row_count == 3
        await pilot.press("i")
        dialog = await until(pilot, lambda: isinstance(pilot.app.screen, ImportScreen) and pilot.app.screen)
        dialog.query_one("#path", Input).value = str(path)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="the dialog to close")
        # the first of the file's tasks, which the list (newest first) shows below the second
        await until(pilot, lambda: table.selected is not None and table.selected.name == "imported-first",
                    message="the cursor on the first imported task")
        assert table.cursor_row == 1 and table.get_row_at(0)[0].plain == "imported-second"
        assert table.has_focus
        # the next key acts on it
        await pilot.press("enter")
        detail = await until(pilot, lambda: isinstance(pilot.app.screen, DetailScreen) and pilot.app.screen,
                             message="the detail view")
        assert detail.task_id == table.selected.id


async def test_an_import_behind_a_filter_clears_it_to_show_the_imported_task(fixed, tmp_path):  # noqa: F811
    service, _ = fixed
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"name": "behind-the-filter", "cron_expression": "0 0 1 1 *",
                                "function_code": "def f():\n    return 1", "function_name": "f"}))
    async with app_for(service).run_test(size=SMALL) as pilot:
        await _loaded(pilot)
        table = pilot.app.screen.query_one(TaskTable)
        await pilot.press("slash", *"ping", "enter")
        await until(pilot, lambda: table.row_count == 1, message="the filter")
        await pilot.press("i")
        dialog = await until(pilot, lambda: isinstance(pilot.app.screen, ImportScreen) and pilot.app.screen)
        dialog.query_one("#path", Input).value = str(path)
        await pilot.press("enter")
        await until(pilot, lambda: table.selected is not None and table.selected.name == "behind-the-filter",
                    message="the imported task selected")
        assert not table.filtered and table.row_count == 4
