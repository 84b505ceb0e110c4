"""The console: a task list and a live log pane, updated from the events and log streams.

This is the first, small console (the full one with the editor and forms is its own issue). All
Redis I/O happens in thread workers that post messages; widgets are touched only on the UI thread,
and updates come from blocking stream reads, never from rescanning keys on a timer.
"""

from __future__ import annotations

from datetime import datetime

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, RichLog
from textual.worker import get_current_worker

from core.errors import TaskmanError
from core.events import follow_events, follow_logs, recent_logs
from core.models import Task
from core.service import Service


class TasksLoaded(Message):
    """A fresh page of tasks was read."""

    def __init__(self, tasks: list[Task]) -> None:
        super().__init__()
        self.tasks = tasks


class LogArrived(Message):
    """Log entries arrived on the log stream."""

    def __init__(self, entries: list[dict]) -> None:
        super().__init__()
        self.entries = entries


class EventArrived(Message):
    """Something changed (the events stream said so)."""


class TaskmanApp(App):
    """Lists tasks, shows their logs live, and runs the basic actions on the selected task."""

    TITLE = "taskman"
    CSS = """
    DataTable { height: 1fr; }
    RichLog { height: 1fr; border-top: solid $accent; }
    """
    BINDINGS = [
        Binding("r", "run", "run", id="run"),
        Binding("s", "stop", "stop", id="stop"),
        Binding("p", "pause", "pause/resume", id="pause"),
        Binding("d", "delete", "delete", id="delete"),
        Binding("q", "quit", "quit", id="quit"),
    ]

    def __init__(self, service: Service) -> None:
        super().__init__()
        self.service = service
        self.tasks: dict[str, Task] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="tasks", cursor_type="row", zebra_stripes=True)
        yield RichLog(id="logs", wrap=True, markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#tasks", DataTable)
        table.add_columns("NAME", "KIND", "MODE", "STATE", "NEXT", "LAST")
        self.load_tasks()
        self.tail_logs()
        self.watch_events()

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def load_tasks(self) -> None:
        self.post_message(TasksLoaded(self.service.list(limit=500)))

    @work(thread=True, group="logs", exit_on_error=False)
    def tail_logs(self) -> None:
        worker = get_current_worker()
        last_id = "$"
        recent = recent_logs(self.service.store, None, 100)
        if recent:
            self.post_message(LogArrived([entry for _, entry in recent]))
            last_id = recent[-1][0]
        for _, entry in follow_logs(self.service.store, None, last_id, lambda: worker.is_cancelled):
            self.post_message(LogArrived([entry]))

    @work(thread=True, group="events", exit_on_error=False)
    def watch_events(self) -> None:
        worker = get_current_worker()
        for _ in follow_events(self.service.store, "$", lambda: worker.is_cancelled):
            self.post_message(EventArrived())

    @on(TasksLoaded)
    def show_tasks(self, message: TasksLoaded) -> None:
        table = self.query_one("#tasks", DataTable)
        selected = self.selected_id()
        table.clear()
        self.tasks = {task.id: task for task in message.tasks}
        for task in message.tasks:
            next_run = datetime.fromtimestamp(task.next_run_at).strftime("%H:%M:%S") if task.next_run_at else "–"
            last = task.last_run_state or "–"
            if task.last_duration_ms is not None:
                last += f" {task.last_duration_ms:.0f}ms"
            table.add_row(task.name, task.kind.value, task.mode.value, task.state.value, next_run, last, key=task.id)
        if selected in self.tasks:
            table.move_cursor(row=table.get_row_index(selected))

    @on(LogArrived)
    def show_logs(self, message: LogArrived) -> None:
        log = self.query_one("#logs", RichLog)
        for entry in message.entries:
            stamp = datetime.fromtimestamp(float(entry["ts"])).strftime("%H:%M:%S.%f")[:-3]
            name = self.tasks[entry["task"]].name if entry["task"] in self.tasks else entry["task"]
            log.write(f"{stamp} {name} {entry['msg']}")

    @on(EventArrived)
    def refresh_tasks(self) -> None:
        self.load_tasks()

    def selected_id(self) -> str | None:
        table = self.query_one("#tasks", DataTable)
        if table.row_count == 0:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    @work(thread=True, exit_on_error=False)
    def act(self, action: str) -> None:
        task_id = self.selected_id()
        if task_id is None:
            return
        try:
            if action == "pause":
                task = self.tasks.get(task_id)
                action = "resume" if task and task.state.value == "paused" else "pause"
            getattr(self.service, action)(task_id)
            self.notify(f"{action}: {self.tasks[task_id].name if task_id in self.tasks else task_id}")
        except TaskmanError as exc:
            self.notify(exc.message, title=exc.title, severity="error")

    def action_run(self) -> None:
        self.act("run_now")

    def action_stop(self) -> None:
        self.act("stop")

    def action_pause(self) -> None:
        self.act("pause")

    def action_delete(self) -> None:
        self.act("delete")
