"""The audit trail: who changed what and when, from any front end, newest first."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer

from core.errors import TaskmanError
from core.service import Service
from core.text import local_time
from tui.guard import CarriesOn
from tui.safe import json_text, plain
from tui.screens.help import ShowsKeys

SHOWN = 500


class AuditScreen(ShowsKeys, CarriesOn, Screen[None]):
    """The last entries of the audit stream; ``r`` reads it again, escape goes back."""

    CSS_PATH = "audit.tcss"
    BINDINGS = [Binding("escape,q", "app.pop_screen", "back", id="audit.back"),
                Binding("r", "reload", "reload", id="audit.reload"),
                Binding("question_mark", "help", "keys", id="audit.help", tooltip="Show this screen's keys")]

    def __init__(self, service: Service) -> None:
        super().__init__()
        self.service = service

    def compose(self) -> ComposeResult:
        yield DataTable(id="audit", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#audit", DataTable)
        table.add_columns("WHEN", "WHO", "ACTION", "TARGET", "DETAIL")
        table.border_title = "audit trail"
        self.action_reload()
        table.focus()

    def action_reload(self) -> None:
        self.load()

    @work(thread=True, exclusive=True)
    def load(self) -> None:
        try:
            entries = self.service.audit_entries(SHOWN)
        except TaskmanError as exc:
            self.app.call_from_thread(self.notify, exc.message, severity="error")
            return
        self.app.call_from_thread(self._show, entries)

    def _show(self, entries: list[dict]) -> None:
        table = self.query_one("#audit", DataTable)
        table.clear()
        for item in entries:
            table.add_row(local_time(item["ts"]), plain(item["actor"]), plain(item["action"]),
                          plain(item["target"]), plain(json_text(item["detail"])[:80]))
        table.border_title = f"audit trail ({len(entries)} newest)"
