"""The task list: one row per task, updated in place as events arrive, filtered by ``core.filters``' words."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.cells import cell_len
from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from core import filters
from core.models import Task
from core.text import relative_time, run_time
from tui.guard import CarriesOn
from tui.safe import one_line, plain

STATE_STYLES = {
    "active": "green", "paused": "yellow", "done": "dim",
    "succeeded": "green", "failed": "bold red", "timed_out": "bold red", "retrying": "yellow",
    "stopped": "magenta", "running": "bold cyan", "queued": "cyan",
}
COLUMNS = ("NAME", "KIND", "MODE", "STATE", "NEXT", "LAST")
KIND_LABELS = {"code": "code", "api": "api", "registered": "reg"}
MODE_LABELS = {"immediate": "now", "delayed": "delay", "scheduled": "cron"}


def relative(timestamp: float | None) -> str:
    """A due time as the list shows it: +28s, +4m, 09:00, Nov 30, or 2028."""
    return relative_time(timestamp, compact=True)


def last_cell(task: Task, now: float | None = None) -> Text:
    """The LAST column: the latest run's state as a mark, with how long it took or, running, has run."""
    if not task.last_run_state:
        return Text("–", style="dim")
    mark = {"succeeded": "✔", "failed": "✘", "timed_out": "⏱", "stopped": "■", "retrying": "↻",
            "running": "▶", "queued": "…"}.get(task.last_run_state, "?")
    took = run_time(task.last_duration_ms, task.last_started_at, running=task.last_run_state == "running", now=now)
    return Text(f"{mark} {took}".rstrip(), style=STATE_STYLES.get(task.last_run_state, ""))


class TaskTable(CarriesOn, DataTable):
    """Tasks keyed by id; ``upsert`` and ``remove`` keep rows in place so the cursor never jumps."""

    BINDINGS = [
        Binding("j", "cursor_down", "down", show=False, id="list.down", tooltip="Move down the list (↓ too)"),
        Binding("k", "cursor_up", "up", show=False, id="list.up", tooltip="Move up the list (↑ too)"),
        Binding("g,home", "scroll_top", "first", show=False, id="list.first", tooltip="Go to the first task"),
        Binding("G,end", "scroll_bottom", "last", show=False, id="list.last", tooltip="Go to the last task"),
    ]
    """The list's own keys (they act only while it has focus); the help screen lists them too."""

    @dataclass
    class Selected(Message):
        """The highlighted task changed (None: the list is empty)."""

        task: Task | None

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.tasks: dict[str, Task] = {}
        self.query_filter = filters.TaskFilter()

    def on_mount(self) -> None:
        self._add_columns([])

    def _add_columns(self, tasks: list[Task]) -> None:
        """Columns with explicit widths (the name column as wide as the longest shown name, up to 32),
        so the layout depends only on what is shown, never on the order rows arrived in."""
        name_width = min(32, max([4, *(cell_len(one_line(task.name)) for task in tasks)]))
        for column, width in zip(COLUMNS, (name_width, 4, 5, 7, 6, 10), strict=True):
            self.add_column(column, key=column.lower(), width=width)

    def _cells(self, task: Task) -> tuple:
        return (plain(task.name), KIND_LABELS[task.kind.value], MODE_LABELS[task.mode.value],
                Text(task.state.value, style=STATE_STYLES.get(task.state.value, "")),
                relative(task.next_run_at), last_cell(task))

    def load(self, tasks: list[Task]) -> None:
        """Replace every row (first load, reconnect, or a new filter)."""
        selected = self.selected_id
        self.tasks = {task.id: task for task in tasks}
        shown = [task for task in tasks if self.query_filter.matches(task)]
        self.clear(columns=True)
        self._add_columns(shown)
        for task in shown:
            self.add_row(*self._cells(task), key=task.id)
        if selected is not None and selected in self.rows:
            self.move_cursor(row=self.get_row_index(selected))
        self._announce()

    def upsert(self, tasks: list[Task]) -> None:
        """Update rows in place; a task not shown yet means a reload, since the list is newest first."""
        reload = False
        for task in tasks:
            self.tasks[task.id] = task
            visible = self.query_filter.matches(task)
            if task.id in self.rows and visible:
                for column, value in zip(COLUMNS, self._cells(task), strict=True):
                    self.update_cell(task.id, column.lower(), value)
            elif task.id in self.rows or visible:
                reload = True
        if reload:
            self.load(self.newest_first())
        else:
            self._announce()

    def newest_first(self) -> list[Task]:
        return sorted(self.tasks.values(), key=lambda task: -task.created_at)

    def remove_task(self, task_id: str) -> None:
        self.tasks.pop(task_id, None)
        if task_id in self.rows:
            self.remove_row(task_id)
        self._announce()

    def apply_filter(self, text: str) -> None:
        """Show only the tasks ``text`` picks (``core.filters``; words are read as typed so far)."""
        self.query_filter = filters.parse(text, partial=True)
        self.load(self.newest_first())

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
        """Redraw what moves with the clock: the NEXT column, and how long running runs have run (no Redis
        read needed)."""
        now = time.time()
        for key in self.rows:
            task = self.tasks.get(key.value) if key.value is not None else None
            if task is None:
                continue
            if task.next_run_at is not None:
                self.update_cell(key, "next", relative(task.next_run_at))
            if task.last_run_state == "running":
                self.update_cell(key, "last", last_cell(task, now))

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
