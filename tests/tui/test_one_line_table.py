"""OneLineTable draws what Textual's own DataTable draws, through adds, updates, removals, sorts and clears."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.widgets import DataTable

from tui.widgets.one_line_table import OneLineTable


class Both(App):
    CSS = "DataTable { height: 14; }"  # taller than the rows: the lines below them are drawn too

    def compose(self) -> ComposeResult:
        yield DataTable(id="plain")
        yield OneLineTable(id="fast")


def _lines(table: DataTable) -> list[str]:
    return [table.render_line(y).text for y in range(table.size.height)]


async def test_it_draws_as_datatable_does_through_every_kind_of_change():
    async with Both().run_test(size=(60, 30)) as pilot:
        tables = [pilot.app.query_one("#plain", DataTable), pilot.app.query_one("#fast", OneLineTable)]

        def on_both(step) -> None:
            for table in tables:
                step(table)

        def same() -> None:
            plain, fast = tables
            assert [row.key for row in fast.ordered_rows] == [row.key for row in plain.ordered_rows]
            assert fast.virtual_size == plain.virtual_size
            assert _lines(fast) == _lines(plain)

        def columns(table: DataTable) -> None:
            table.add_column("NAME", key="name", width=10)
            table.add_column("N", key="n", width=4)

        def rows(table: DataTable) -> None:
            for index in range(12):
                table.add_row(f"task-{index}", str(index % 5), key=f"t{index}", height=1)

        on_both(columns)
        on_both(rows)
        await pilot.pause()
        same()
        on_both(lambda table: table.update_cell("t3", "name", "renamed"))
        await pilot.pause()
        same()
        on_both(lambda table: table.move_cursor(row=5))
        await pilot.pause()
        for row in ("t5", "t6", "t11"):  # under the cursor, beside it, at the bottom: each drawn anew alone
            on_both(lambda table, row=row: table.update_cell(row, "n", f"u{row}"))
            await pilot.pause()
            same()
        assert "ut6" in _lines(tables[1])[7]
        order = tables[1].ordered_rows
        on_both(lambda table: table.update_cell("t4", "n", "9"))
        assert tables[1].ordered_rows is order  # a cell update does not rebuild the row order
        on_both(lambda table: table.sort("n"))
        await pilot.pause()
        same()
        on_both(lambda table: table.remove_row("t0"))
        on_both(lambda table: table.add_row("late", "1", key="late", height=1))
        await pilot.pause()
        same()
        assert len(tables[1].rows) == 12 and tables[1].ordered_rows[-1].key == "late"
        on_both(lambda table: table.clear())
        await pilot.pause()
        same()
        assert _lines(tables[1])[1:] == [" " * 60] * 13  # below the header: blank lines, no row drawn twice


async def test_rows_taller_than_one_line_are_refused():
    async with Both().run_test(size=(40, 10)) as pilot:
        table = pilot.app.query_one("#fast", OneLineTable)
        table.add_column("NAME", width=10)
        try:
            table.add_row("x", height=2)
        except ValueError as exc:
            assert "one line" in str(exc)
        else:
            raise AssertionError("a two-line row was added")
