"""The console at 80x24: every part still usable (issue 12, "Small terminals and large ones").

Driven by keystrokes against a fixed namespace (the snapshot tests' data), nothing running.
"""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Input, Sparkline, Static, TextArea
from textual.widgets._footer import FooterKey

from tests.tui.test_console import until
from tests.tui.test_snapshots import _loaded, app_for, finished, fixed, pinned_clock, steady, text_of  # noqa: F401
from tui.screens.detail import DetailScreen
from tui.screens.help import HelpScreen
from tui.screens.new_task import NewTaskScreen
from tui.widgets.status_bar import StatusBar

SMALL = (80, 24)


async def test_the_help_dialog_fits_80x24_and_scrolls_by_keyboard(fixed):  # noqa: F811
    service, _ = fixed
    async with app_for(service).run_test(size=SMALL) as pilot:
        await _loaded(pilot)
        await pilot.press("question_mark")
        screen = await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen) and pilot.app.screen)
        await steady(pilot)
        box = screen.query_one("#help", VerticalScroll)
        table = screen.query_one("#keys", DataTable)
        # the dialog and the table's text lie within the screen: nothing runs past the right edge
        assert box.region.right <= SMALL[0] and box.region.bottom <= SMALL[1]
        assert table.virtual_size.width <= table.content_region.width
        assert table.content_region.right <= box.content_region.right
        # the keys are more than the dialog shows; the keyboard scrolls to the last of them
        assert box.max_scroll_y > 0 and box.scroll_y == 0
        await pilot.press("end")
        await until(pilot, lambda: box.scroll_y == box.max_scroll_y, message="scrolled to the end")
        await pilot.press("pageup")
        await until(pilot, lambda: box.scroll_y < box.max_scroll_y, message="scrolled back up")
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(pilot.app.screen, HelpScreen), message="closed")


async def test_a_refusal_in_the_form_shows_at_80x24(fixed):  # noqa: F811
    service, _ = fixed
    async with app_for(service).run_test(size=SMALL) as pilot:
        await _loaded(pilot)
        await pilot.press("n")
        form = await until(pilot, lambda: isinstance(pilot.app.screen, NewTaskScreen) and pilot.app.screen)
        form.query_one("#name", Input).value = "shown-refusal"
        form.query_one("#code", TextArea).load_text("def main(:\n    pass")
        await pilot.press("ctrl+s")
        error = form.query_one("#form-error", Static)
        await until(pilot, lambda: "function_code" in str(error.render()), message="the refusal")
        await steady(pilot)
        # on screen, above the footer, and what the screen shows at that place
        footer = form.query_one(Footer)
        assert error.region.height > 0 and error.region.bottom <= footer.region.y <= SMALL[1]
        x, y = error.content_region.x, error.content_region.y
        assert form.get_widget_at(x, y)[0] is error
        assert isinstance(pilot.app.screen, NewTaskScreen)


async def test_the_status_line_at_80_columns_keeps_runs_per_minute_and_failures(fixed):  # noqa: F811
    service, _ = fixed
    async with app_for(service).run_test(size=SMALL) as pilot:
        await _loaded(pilot)
        bar = pilot.app.screen.query_one(StatusBar)
        rates = bar.query_one("#rate-text", Static)
        facts = bar.query_one("#facts", Static)
        # the sparkline made way first; the rates are drawn whole, within the line
        assert not bar.query_one("#rate", Sparkline).display
        assert "runs/min" in text_of(rates) and "failed/h" in text_of(rates)
        assert rates.region.width >= len(text_of(rates).strip()) and rates.region.right <= SMALL[0]
        assert "workers 0" in text_of(facts) and facts.region.right <= rates.region.x
        # the facts are drawn whole too (a missing scheduler reads "beat ○"), a space before the rates
        assert "beat ○" in text_of(facts)
        assert facts.region.width >= len(text_of(facts).strip()) and text_of(rates).startswith(" ")


async def test_the_footer_at_80_columns_keeps_logs_follow_and_keys(fixed):  # noqa: F811
    service, _ = fixed
    async with app_for(service).run_test(size=SMALL) as pilot:
        await _loaded(pilot)
        shown = {key.key: key for key in pilot.app.screen.query(FooterKey)}
        for name in ("l", "f", "question_mark", "n", "slash"):
            key = shown[name]
            # drawn whole, within the screen, and not under another key (the palette's docks right)
            assert key.region.width > 0 and key.region.right <= SMALL[0], (name, key.region)
            assert pilot.app.screen.get_widget_at(key.region.x, key.region.y)[0] is key, name
            assert pilot.app.screen.get_widget_at(key.region.right - 1, key.region.y)[0] is key, name


async def test_the_detail_view_at_80_columns_keeps_the_duration_column(fixed):  # noqa: F811
    service, _ = fixed
    async with app_for(service).run_test(size=SMALL) as pilot:
        await _loaded(pilot)
        await pilot.press("enter")
        screen = await until(pilot, lambda: isinstance(pilot.app.screen, DetailScreen) and pilot.app.screen)
        runs = screen.query_one("#runs", DataTable)
        await until(pilot, lambda: runs.row_count == 3 and finished(pilot, "detail-load"), message="three runs")
        await steady(pilot)
        # every column, DURATION the last, lies within the table's visible width: nothing to scroll to
        assert [str(column.label) for column in runs.ordered_columns][-1] == "DURATION"
        assert runs.virtual_size.width <= runs.scrollable_content_region.width, runs.virtual_size
        assert runs.get_cell_at((0, runs.get_column_index("duration"))) == "12 ms"
        assert runs.region.right <= SMALL[0]
