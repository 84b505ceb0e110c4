"""A task's detail: its definition, its run history, and the selected run's result, output and error.

Everything here is data and is shown as plain text (``tui.safe``) with its control characters made
visible; the definition is ``Task.to_dict``'s, so secrets are masked.
"""

from __future__ import annotations

import time

from rich.syntax import Syntax
from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static
from textual.worker import get_current_worker

from core.errors import NoRedis, TaskmanError
from core.models import Run, Task
from core.service import Service
from core.text import definition_fields, local_time, run_time
from tui.guard import CarriesOn
from tui.safe import block, json_text, plain, visible
from tui.screens.help import ShowsKeys
from tui.widgets.task_table import STATE_STYLES

HISTORY = 100
NARROW = 110
"""Below this width the runs table takes more of the row and its columns are narrower (attempt as TRY,
the start as a time of day: the run view below gives the date), so DURATION stays in view at 80."""


class DetailScreen(ShowsKeys, CarriesOn, Screen[None]):
    """Definition on the left, runs on the right, the selected run below; refreshes on its events."""

    CSS_PATH = "detail.tcss"
    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "back", id="detail.back"),
        Binding("r", "run", "run now", id="detail.run"),
        Binding("y", "copy_result", "copy result", id="detail.copy", show=False,
                tooltip="Copy the selected run's result (JSON), or its error, to the clipboard"),
        Binding("question_mark", "help", "keys", id="detail.help", show=False, tooltip="Show this screen's keys"),
    ]

    def __init__(self, service: Service, task_id: str) -> None:
        super().__init__()
        self.service = service
        self.task_id = task_id
        self.runs: dict[str, Run] = {}
        self.shown_task: Task | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="upper"):
            with VerticalScroll(id="definition"):
                yield Static("", id="spec")
            yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="run-detail"):
            yield Static("", id="run-view")
        yield Footer()

    def _columns(self) -> None:
        table = self.query_one("#runs", DataTable)
        table.clear(columns=True)
        labels = ("STATE", "TRY" if self.narrow else "ATTEMPT", "TRIGGER", "STARTED", "DURATION")
        for key, label in zip(("state", "attempt", "trigger", "started", "duration"), labels, strict=True):
            table.add_column(label, key=key)

    @property
    def narrow(self) -> bool:
        return self.has_class("narrow")

    def on_resize(self, event: events.Resize) -> None:
        narrow = event.size.width < NARROW
        if narrow != self.narrow:
            self.set_class(narrow, "narrow")
            self._columns()
            if self.shown_task is not None:
                self._show(self.shown_task)

    def on_mount(self) -> None:
        table = self.query_one("#runs", DataTable)
        self.set_class(self.app.size.width < NARROW, "narrow")
        self._columns()
        self.query_one("#definition").border_title = "definition"
        table.border_title = "runs"
        self.query_one("#run-detail").border_title = "run"
        self.load()
        self.follow_changes()
        table.focus()

    @work(thread=True, exclusive=True, group="detail-load")
    def load(self) -> None:
        try:
            task = self.service.get(self.task_id, runs=HISTORY)
        except TaskmanError as exc:
            self.app.call_from_thread(self.notify, exc.message, severity="error")
            return
        self.app.call_from_thread(self._show, task)

    @work(thread=True, exclusive=True, group="detail-watch")
    def follow_changes(self) -> None:
        """Read the task again once per batch of events that names it (a burst of run events is one read)."""
        worker = get_current_worker()
        cursor: str | None = None
        while not worker.is_cancelled:
            try:
                cursor = cursor or self.service.events_cursor()
                batch = self.service.events_since(cursor)
            except NoRedis:
                time.sleep(1.0)  # the main screen's banner says so; read on when Redis is back
                continue
            cursor = batch.cursor
            if any(event.get("task_id") == self.task_id for _, event in batch.entries):
                self.load()

    def _show(self, task: Task) -> None:
        self.shown_task = task
        self.query_one("#spec", Static).update(self._definition(task))
        self.query_one("#definition").border_title = plain(
            f"{task.name} · {task.kind.value} · {task.mode.value} · {task.state.value}")
        table = self.query_one("#runs", DataTable)
        selected = None
        if table.row_count:
            selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        self.runs = {run.id: run for run in task.runs}
        started = "%H:%M:%S" if self.narrow else "%m-%d %H:%M:%S"
        for run in task.runs:
            took = run_time(run.duration_ms) or "–"
            table.add_row(Text(run.state.value, style=STATE_STYLES.get(run.state.value, "")),
                          f"{run.attempt}/{run.max_attempts}", plain(run.trigger),
                          local_time(run.started_at or run.queued_at, started),
                          took, key=run.id)
        table.border_title = f"runs ({len(task.runs)})"
        if selected in self.runs:
            table.move_cursor(row=table.get_row_index(selected))
        self._show_run()

    @staticmethod
    def _definition(task: Task):
        data = task.to_dict()
        fields, code = definition_fields(data["spec"])
        lines = Text()
        lines.append(f"next run: {data['next_run_at'] or '–'}\n", style="bold")
        for key, text in fields:
            lines.append(f"{key}: ", style="bold")
            lines.append(f"{text}\n")
        if code is None:
            return lines
        from rich.console import Group

        return Group(lines, Syntax(visible(code), "python", line_numbers=True, word_wrap=True, theme="ansi_dark"))

    @on(DataTable.RowHighlighted, "#runs")
    def _show_run(self) -> None:
        table = self.query_one("#runs", DataTable)
        view = self.query_one("#run-view", Static)
        if not table.row_count:
            view.update("no runs yet")
            return
        run_id = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        run = self.runs.get(run_id) if run_id is not None else None
        if run is None:
            return
        from rich.console import Group

        parts: list = [plain(f"run {run.id} · {run.state.value} · attempt {run.attempt}/{run.max_attempts} · "
                             f"worker {run.worker or '–'}", style=STATE_STYLES.get(run.state.value, ""))]
        if run.overrides:  # given other arguments for this run (R, run --args, POST …/run with a body)
            parts.append(plain(f"run with: {json_text(run.to_dict()['overrides'])}", style="bold"))
        if run.error:
            parts.append(block(f"error: {run.error}", style="red"))
        if run.result is not None:
            parts.append(Text("result:", style="bold"))
            parts.append(Syntax(visible(json_text(run.result, indent=2)), "json", word_wrap=True, theme="ansi_dark"))
        if run.output:
            parts.append(Text("output:", style="bold"))
            parts.append(block(run.output))
        if run.traceback:
            parts.append(Text("traceback:", style="bold"))
            parts.append(Syntax(visible(run.traceback), "pytb", word_wrap=True, theme="ansi_dark"))
        view.update(Group(*parts))

    def action_copy_result(self) -> None:
        """Copy the selected run's result (as JSON), or its error, to the clipboard."""
        table = self.query_one("#runs", DataTable)
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value if table.row_count else None
        run = self.runs.get(key or "")
        if run is None:
            self.notify("no run selected", severity="warning")
            return
        if run.result is None and not run.error:
            self.notify(f"run {run.id} has no result yet ({run.state.value})", severity="warning")
            return
        text = json_text(run.result, indent=2) if run.result is not None else run.error or ""
        self.app.copy_to_clipboard(text)
        self.notify(f"copied the {'result' if run.result is not None else 'error'} of run {run.id} "
                    f"({len(text)} characters)")

    def action_run(self) -> None:
        self.run_now()

    @work(thread=True)
    def run_now(self) -> None:
        try:
            self.service.run_now(self.task_id)
        except TaskmanError as exc:
            self.app.call_from_thread(self.notify, exc.message, severity="error")
            return
        self.app.call_from_thread(self.notify, "run queued")
