"""The task list: one row per task, updated in place as events arrive, filtered by ``core.filters``' words.

When the list is wide enough (a 200-column terminal), it shows more of each task: when its latest run
started, and the success rate and p95 duration of its recent finished runs. These come with the task as
it is read (``Task.recent_*``, kept by the store as runs end), so the wide list costs Redis nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len
from rich.text import Text
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.message import Message
from textual.widgets import DataTable
from textual.widgets.data_table import RowKey

from core import filters
from core.models import Task
from core.text import human_ago, human_duration, relative_time, run_time
from tui.guard import CarriesOn
from tui.safe import one_line, plain
from tui.widgets.one_line_table import OneLineTable

STATE_STYLES = {
    "active": "green", "paused": "yellow", "done": "dim",
    "succeeded": "green", "failed": "bold red", "timed_out": "bold red", "retrying": "yellow",
    "stopped": "magenta", "running": "bold cyan", "queued": "cyan",
}
COLUMNS = ("NAME", "KIND", "MODE", "STATE", "NEXT", "LAST")
WIDE_COLUMNS = ("NAME", "KIND", "MODE", "STATE", "NEXT", "STARTED", "LAST", "SUCCESS", "P95")
"""The columns of a list wide enough for them all (``TaskTable.wide``); a narrower one shows ``COLUMNS``."""
WIDTHS = {"KIND": 4, "MODE": 5, "STATE": 7, "NEXT": 6, "STARTED": 8, "LAST": 10, "SUCCESS": 10, "P95": 8}
"""Each column's width but the name's (as wide as the longest name shown, from 4)."""
NAME_WIDTH = 32
"""The name column's widest in a narrow list; a wide one gives it the room left, up to ``WIDE_NAME_WIDTH``."""
WIDE_NAME_WIDTH = 60
PADDING = 2
"""The cells' padding: one column on each side (DataTable's ``cell_padding``)."""
SCROLLBAR = 2
"""Room kept for the vertical scrollbar, so a list growing past its height does not change its columns."""
WIDE_OTHERS = sum(WIDTHS[column] + PADDING for column in WIDE_COLUMNS[1:])
"""What the wide columns but the name's take: with a 14-character name the wide list needs 90 columns (a
200-column terminal gives it 116, a 150-column one 86)."""
SORT_KEYS: dict[str, Callable[[Task], Any]] = {
    "NAME": lambda task: one_line(task.name).lower(),
    "KIND": lambda task: task.kind.value,
    "MODE": lambda task: task.mode.value,
    "STATE": lambda task: task.state.value,
    "NEXT": lambda task: (task.next_run_at is None, task.next_run_at or 0.0),
    "STARTED": lambda task: (task.last_started_at is None, -(task.last_started_at or 0.0)),
    "LAST": lambda task: (task.last_run_state is None, task.last_run_state or "", task.last_duration_ms or 0.0),
    "SUCCESS": lambda task: (not task.recent_runs, task.recent_ok / task.recent_runs if task.recent_runs else 0.0),
    "P95": lambda task: (task.recent_p95_ms is None, task.recent_p95_ms or 0.0),
}
"""What each column sorts by (``o`` / a click on its header); rows without a value go last, ties stay newest
first. STARTED puts the latest start first."""
KIND_LABELS = {"code": "code", "api": "api", "registered": "reg"}
MODE_LABELS = {"immediate": "now", "delayed": "delay", "scheduled": "cron"}


def clock() -> float:
    """The list's "now" (the snapshot tests pin it, so the pictures never depend on the time they are taken)."""
    return time.time()


def relative(timestamp: float | None, now: float | None = None) -> str:
    """A due time as the list shows it: +28s, +4m, 09:00, Nov 30, or 2028."""
    return relative_time(timestamp, clock() if now is None else now, compact=True)


def started_cell(task: Task, now: float) -> Text:
    """The STARTED column: how long ago the latest run started (``3m ago``); ``–`` if it has not (yet)."""
    if task.last_started_at is None:
        return Text("–", style="dim")
    return Text(human_ago(now - task.last_started_at, compact=True))


def success_cell(task: Task) -> Text:
    """The SUCCESS column: the share of the recent finished runs that succeeded, and of how many (``96% of
    30``); rounded down, so 100% means every one."""
    if not task.recent_runs:
        return Text("–", style="dim")
    rate = task.recent_ok / task.recent_runs
    style = "green" if task.recent_ok == task.recent_runs else "bold red" if rate < 0.5 else "yellow"
    return Text(f"{int(rate * 100)}% of {task.recent_runs}", style=style)


def p95_cell(task: Task) -> Text:
    """The P95 column: the recent finished runs' 95th percentile duration (``850 ms``)."""
    if task.recent_p95_ms is None:
        return Text("–", style="dim")
    return Text(human_duration(task.recent_p95_ms / 1000))


def last_cell(task: Task, now: float | None = None) -> Text:
    """The LAST column: the latest run's state as a mark, with how long it took or, running, has run."""
    if not task.last_run_state:
        return Text("–", style="dim")
    mark = {"succeeded": "✔", "failed": "✘", "timed_out": "⏱", "stopped": "■", "retrying": "↻",
            "running": "▶", "queued": "…"}.get(task.last_run_state, "?")
    took = run_time(task.last_duration_ms, task.last_started_at, running=task.last_run_state == "running", now=now)
    return Text(f"{mark} {took}".rstrip(), style=STATE_STYLES.get(task.last_run_state, ""))


class TaskTable(CarriesOn, OneLineTable):
    """Tasks keyed by id; ``upsert`` and ``remove`` keep rows in place so the cursor never jumps."""

    BINDINGS = [
        Binding("o", "sort_next", "sort", show=False, id="list.sort",
                tooltip="Sort by the next column; after the last one, newest first again"),
        Binding("O", "sort_reverse", "reverse", show=False, id="list.reverse",
                tooltip="Reverse the sort (a click on a header sorts by its column, again reverses)"),
        Binding("j", "cursor_down", "down", show=False, id="list.down", tooltip="Move down the list (↓ too)"),
        Binding("k", "cursor_up", "up", show=False, id="list.up", tooltip="Move up the list (↑ too)"),
        Binding("g,home", "scroll_top", "first", show=False, id="list.first", tooltip="Go to the first task"),
        Binding("G,end", "scroll_bottom", "last", show=False, id="list.last", tooltip="Go to the last task"),
    ]
    """The list's own keys (they act only while it has focus); the help screen lists them too."""

    class Sorted(Message):
        """The rows were sorted another way (``sort_label`` says how)."""

    @dataclass
    class Selected(Message):
        """The highlighted task changed (None: the list is empty)."""

        task: Task | None

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.tasks: dict[str, Task] = {}
        self.query_filter = filters.TaskFilter()
        self.columns_shown: tuple[str, ...] = COLUMNS
        self._longest_name = 4
        self._grown_name = 4
        self._name_cap = NAME_WIDTH
        self.sort_by: str | None = None
        """The column the rows are sorted by; None: newest first."""
        self.sort_reverse = False

    @property
    def wide(self) -> bool:
        return self.columns_shown == WIDE_COLUMNS

    def on_mount(self) -> None:
        self._add_columns([])

    def on_resize(self) -> None:
        """A list that becomes wide enough for the wide columns (or no longer is) is drawn again with them."""
        if self._fits_wide(self._longest_name) != self.wide:
            self.load(self.in_order())

    def _room(self) -> int:
        return self.size.width - SCROLLBAR

    def _fits_wide(self, longest_name: int) -> bool:
        return self._room() >= WIDE_OTHERS + min(NAME_WIDTH, longest_name) + PADDING

    def _add_columns(self, tasks: list[Task]) -> None:
        """Columns with explicit widths (the name column as wide as the longest shown name, up to 32; in a
        wide list up to the room left), so the layout depends only on what is shown and the list's width,
        never on the order rows arrived in."""
        self._longest_name = self._grown_name = max([4, *(cell_len(one_line(task.name)) for task in tasks)])
        wide = self._fits_wide(self._longest_name)
        self.columns_shown = WIDE_COLUMNS if wide else COLUMNS
        most = NAME_WIDTH
        if wide:
            most = max(NAME_WIDTH, min(WIDE_NAME_WIDTH, self._room() - WIDE_OTHERS - PADDING))
        self._name_cap = most
        for column in self.columns_shown:
            width = min(most, self._longest_name) if column == "NAME" else WIDTHS[column]
            self.add_column(column, key=column.lower(), width=width)

    def _cells(self, task: Task, now: float | None = None) -> tuple:
        now = clock() if now is None else now
        cells = {"NAME": plain(task.name), "KIND": KIND_LABELS[task.kind.value], "MODE": MODE_LABELS[task.mode.value],
                 "STATE": Text(task.state.value, style=STATE_STYLES.get(task.state.value, "")),
                 "NEXT": relative(task.next_run_at, now), "LAST": last_cell(task, now)}
        if self.wide:
            cells.update({"STARTED": started_cell(task, now), "SUCCESS": success_cell(task), "P95": p95_cell(task)})
        return tuple(cells[column] for column in self.columns_shown)

    def load(self, tasks: list[Task]) -> None:
        """Replace every row (first load, reconnect, or a new filter)."""
        selected = self.selected_id
        self.tasks = {task.id: task for task in tasks}
        shown = [task for task in tasks if self.query_filter.matches(task)]
        self.clear(columns=True)
        self._add_columns(shown)
        now = clock()
        for task in shown:
            self.add_row(*self._cells(task, now), key=task.id)
        if selected is not None and selected in self.rows:
            self.move_cursor(row=self.get_row_index(selected))
        self._announce()

    def extend(self, tasks: list[Task], *, last: bool) -> None:
        """Add older tasks below the rows shown (the pages read after the first paint); a task already held
        keeps the newer copy. With the ``last`` page the rows are laid out again if a name came that is
        longer than the name column."""
        if self.sort_by is not None:  # sorted, the rows cannot just go below: drawn again with the last page
            for task in tasks:
                self.tasks.setdefault(task.id, task)
            if last:
                self.load(self.in_order())
            else:
                self._announce()
            return
        now = clock()
        for task in tasks:
            if task.id in self.tasks:
                continue
            self.tasks[task.id] = task
            if self.query_filter.matches(task):
                self.add_row(*self._cells(task, now), key=task.id)
                self._grown_name = max(self._grown_name, cell_len(one_line(task.name)))
        if last and min(self._grown_name, self._name_cap) > min(self._longest_name, self._name_cap):
            self.load(self.in_order())
        else:
            self._announce()

    def upsert(self, tasks: list[Task]) -> None:
        """Update rows in place; a task not shown yet means a reload, since the list is newest first."""
        reload = False
        for task in tasks:
            self.tasks[task.id] = task
            visible = self.query_filter.matches(task)
            if task.id in self.rows and visible:
                for column, value in zip(self.columns_shown, self._cells(task), strict=True):
                    self.update_cell(task.id, column.lower(), value)
            elif task.id in self.rows or visible:
                reload = True
        if reload:
            self.load(self.in_order())
        else:
            self._announce()

    def in_order(self) -> list[Task]:
        """The tasks held, newest first, then sorted by ``sort_by`` (if set; a stable sort keeps ties newest
        first). The order is taken when the list is drawn: a row that changes keeps its place until then."""
        newest = sorted(self.tasks.values(), key=lambda task: -task.created_at)
        if self.sort_by is None:
            return newest
        return sorted(newest, key=SORT_KEYS[self.sort_by], reverse=self.sort_reverse)

    @property
    def sort_label(self) -> str:
        """How the list is sorted, for its title: ``by NAME ▲`` (empty when newest first)."""
        if self.sort_by is None:
            return ""
        return f"by {self.sort_by} {'▼' if self.sort_reverse else '▲'}"

    def sort_rows(self, column: str | None, *, reverse: bool = False) -> None:
        """Sort by ``column`` (None: newest first) and draw the list again; the cursor stays on its task."""
        self.sort_by, self.sort_reverse = column, reverse if column is not None else False
        self.load(self.in_order())
        self.post_message(self.Sorted())

    def action_sort_next(self) -> None:
        order = [None, *self.columns_shown]
        position = order.index(self.sort_by) if self.sort_by in order else 0
        self.sort_rows(order[(position + 1) % len(order)])

    def action_sort_reverse(self) -> None:
        if self.sort_by is None:
            self.sort_rows("NAME", reverse=True)
        else:
            self.sort_rows(self.sort_by, reverse=not self.sort_reverse)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        column = str(event.column_key.value).upper()
        if column in SORT_KEYS:
            self.sort_rows(column, reverse=column == self.sort_by and not self.sort_reverse)

    def remove_task(self, task_id: str) -> None:
        self.tasks.pop(task_id, None)
        if task_id in self.rows:
            self.remove_row(task_id)
        self._announce()

    def apply_filter(self, text: str) -> None:
        """Show only the tasks ``text`` picks (``core.filters``; words are read as typed so far). When they are
        the rows shown already (``t``, ``ta``, ``task`` ... all pick every task), the list is left as it is:
        drawing 20,000 rows again costs over a second."""
        self.query_filter = filters.parse(text, partial=True)
        ordered = self.in_order()
        shown = [task.id for task in ordered if self.query_filter.matches(task)]
        if len(shown) == self.row_count and shown == [key.value for key in self.rows]:
            self._announce()
            return
        self.load(ordered)

    @property
    def filtered(self) -> bool:
        return bool(self.query_filter)

    def select(self, task_id: str) -> bool:
        """Put the cursor on ``task_id``'s row and scroll it into view; False if the row is not shown."""
        if task_id not in self.rows:
            return False
        self.move_cursor(row=self.get_row_index(task_id), scroll=True)
        return True

    def refresh_due_times(self) -> None:
        """Redraw what moves with the clock: the NEXT column, how long running runs have run and, in a wide
        list, how long ago the latest runs started (no Redis read needed). A cell is redrawn only when its
        text changes: most do once a minute or less, and at 10,000 rows redrawing them all took most of
        each second's tick. Only the rows on screen are looked at (a row scrolled into view catches up at the
        next tick), so the tick costs the same at 20,000 rows as at 20."""
        now = clock()
        wide = self.wide
        for key in self._rows_on_screen():
            task = self.tasks.get(key.value) if key.value is not None else None
            if task is None:
                continue
            if task.next_run_at is not None:
                due = relative(task.next_run_at, now)
                if self.get_cell(key, "next") != due:
                    self.update_cell(key, "next", due)
            if task.last_run_state == "running":
                self.update_cell(key, "last", last_cell(task, now))
            if wide and task.last_started_at is not None:
                started = human_ago(now - task.last_started_at, compact=True)  # changes once a minute, mostly
                if str(self.get_cell(key, "started")) != started:
                    self.update_cell(key, "started", Text(started))

    def _rows_on_screen(self) -> list[RowKey]:
        """The keys of the rows drawn now (one line each), and one more on either side."""
        top = max(0, int(self.scroll_offset.y) - 1)
        bottom = min(self.row_count, int(self.scroll_offset.y) + self.size.height + 1)
        return [self.coordinate_to_cell_key(Coordinate(row, 0)).row_key for row in range(top, bottom)]

    @property
    def selected_id(self) -> str | None:
        if self.row_count == 0:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    @property
    def selected(self) -> Task | None:
        task_id = self.selected_id
        return self.tasks.get(task_id) if task_id else None

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self._announce()

    def _announce(self) -> None:
        self.post_message(self.Selected(self.selected))
