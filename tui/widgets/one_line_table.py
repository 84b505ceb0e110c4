"""A ``DataTable`` of one-line rows and fixed-width columns whose bookkeeping does not grow with its rows.

Textual's ``DataTable`` keys its caches of row order and line offsets on a counter that every cell
update bumps, so changing one cell rebuilds both, a pass over every row (about 35 ms at 10,000 rows
here, on each change an event brings) and draws every line on screen again; and it measures every
new cell to size auto-width columns (about 0.2 ms a row as the list fills). With every column given
a width and every row one line high, none of that can change what is drawn: the offsets are the row
order itself, the row order changes only when rows are added, removed, cleared or sorted, a changed
cell needs only its own row drawn again, and there is nothing to measure.

These overrides lean on ``DataTable``'s private attributes (Textual 8); the console's snapshot and
pilot tests draw and drive the list with them, so a Textual that changes them fails there first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from textual.geometry import Size
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, ColumnKey, Row, RowKey


class _OneLinePerRow(Sequence[tuple[RowKey, int]]):
    """``DataTable._y_offsets`` where every row is one line: line y is row y, offset 0, read on demand."""

    def __init__(self, table: DataTable) -> None:
        self._table = table

    def __len__(self) -> int:
        return self._table.row_count

    def __getitem__(self, y: Any) -> Any:
        if isinstance(y, slice):
            return [self[index] for index in range(*y.indices(len(self)))]
        if not 0 <= y < len(self):
            raise IndexError(y)  # a line below the last row: DataTable draws it blank
        return self._table._row_locations.get_key(y), 0

    def clear(self) -> None:
        """``DataTable.clear`` empties its cached offsets; these are read from the rows, so there is nothing."""


class OneLineTable(DataTable):
    """A ``DataTable`` for rows added with ``height=1`` under columns added with a ``width``."""

    def __init__(self, **kwargs: Any) -> None:
        self._rows_version = 0  # before DataTable's own set-up, which already reads the row order
        self._ordered: tuple[tuple[int, int], list[Row]] | None = None
        super().__init__(**kwargs)

    @property
    def _y_offsets(self) -> Sequence[tuple[RowKey, int]]:  # type: ignore[override]
        return _OneLinePerRow(self)

    @property
    def ordered_rows(self) -> list[Row]:
        """The rows in the order shown, rebuilt only when rows come, go or are sorted (not on cell updates)."""
        key = (self.row_count, self._rows_version)
        if self._ordered is None or self._ordered[0] != key:
            keys = self._row_locations.get_key
            self._ordered = key, [self.rows[keys(index)] for index in range(self.row_count)]  # type: ignore[index]
        return self._ordered[1]

    def _reordered(self) -> None:
        """After rows came, went or were sorted: the next read of the row order builds it again. (Adding and
        removing change the row count, which the cache is keyed on too; ``DataTable.sort`` reads the order
        only before it changes it.)"""
        self._rows_version += 1

    def add_row(self, *cells: Any, height: int | None = 1, **kwargs: Any) -> RowKey:
        if height != 1:
            raise ValueError("a OneLineTable's rows are one line high")
        key = super().add_row(*cells, height=1, **kwargs)
        self._reordered()
        return key

    def remove_row(self, row_key: RowKey | str) -> None:
        super().remove_row(row_key)
        self._reordered()

    def clear(self, columns: bool = False) -> OneLineTable:
        super().clear(columns)
        self._reordered()
        return self

    def sort(self, *columns: Any, **kwargs: Any) -> OneLineTable:
        super().sort(*columns, **kwargs)
        self._reordered()
        return self

    def update_cell(self, row_key: RowKey | str, column_key: ColumnKey | str, value: Any, *,
                    update_width: bool = False) -> None:
        """DataTable's ``update_cell``, drawing only the row it changed again: DataTable bumps the counter that
        every cache of drawn cells, rows and lines is keyed on, so one changed cell drew every line anew."""
        if update_width:  # a column sized to its cells (not one of ours): DataTable's way
            super().update_cell(row_key, column_key, value, update_width=True)
            return
        row_key = RowKey(row_key) if isinstance(row_key, str) else row_key
        column_key = ColumnKey(column_key) if isinstance(column_key, str) else column_key
        if row_key not in self._row_locations or column_key not in self._column_locations:
            raise CellDoesNotExist(f"No cell exists for row_key={row_key!r}, column_key={column_key!r}.")
        self._data[row_key][column_key] = value
        index = cast(int, self._row_locations.get(row_key))  # present: checked above
        line = index + (self.header_height if self.show_header else 0)
        caches: tuple[tuple[Any, Callable[[Any], bool]], ...] = (
            (self._cell_render_cache, lambda key: key[0] == row_key),
            (self._row_render_cache, lambda key: key[0] == row_key),
            (self._row_renderable_cache, lambda key: key[1] == index),
            (self._line_cache, lambda key: key[0] == line))
        for cache, drawn_from in caches:
            for key in [key for key in cache.keys() if drawn_from(key)]:
                cache.discard(key)
        self.refresh_row(index)

    def _update_dimensions(self, new_rows: Iterable[RowKey]) -> None:
        """The table's size as new rows change it, without measuring them (every column has its width)."""
        header = self.header_height if self.show_header else 0
        width = sum(column.get_render_width(self) for column in self.columns.values())
        self.virtual_size = Size(width + self._row_label_column_width, len(self.rows) + header)
