"""Create tasks from a JSON file in the seed's format: one spec or an array (all or none)."""

from __future__ import annotations

import json
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from core.errors import TaskmanError
from core.models import Task
from core.service import Service
from tui.guard import CarriesOn
from tui.safe import block


class ImportScreen(CarriesOn, ModalScreen[list[Task] | None]):
    """Asks for a path; enter imports, escape cancels; errors are shown in place. Dismissed with the tasks
    created, in the file's order (None: cancelled)."""

    CSS_PATH = "import_file.tcss"
    BINDINGS = [Binding("escape", "dismiss", "cancel", id="import.cancel")]

    def __init__(self, service: Service) -> None:
        super().__init__()
        self.service = service

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Import tasks from a JSON file (one spec or an array)")
            yield Input(placeholder="path/to/tasks.json", id="path")
            yield Static("", id="import-error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.load(event.value.strip())

    @work(thread=True, exclusive=True)
    def load(self, path: str) -> None:
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            self.app.call_from_thread(self._error, f"cannot read {path}: {exc.strerror or exc}")
            return
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            self.app.call_from_thread(self._error, f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})")
            return
        try:
            tasks = self.service.create_many(data if isinstance(data, list) else [data])
        except TaskmanError as exc:
            self.app.call_from_thread(self._error, exc.message)
            return
        self.app.call_from_thread(self.app.notify, f"imported {len(tasks)} task(s) from {path}")
        self.app.call_from_thread(self.dismiss, tasks)

    def _error(self, message: str) -> None:
        self.query_one("#import-error", Static).update(block(message))
