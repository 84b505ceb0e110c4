"""Every key, from the same table that makes the bindings, the footer and the palette."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from tui.actions import ACTIONS, display_key
from tui.guard import CarriesOn
from tui.widgets.task_table import TaskTable


class HelpScreen(CarriesOn, ModalScreen[None]):
    """Lists the keys; escape, q or ? closes it."""

    CSS_PATH = "help.tcss"
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close", id="help.close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static("Keys — ctrl+p opens the command palette with the same actions", id="help-title")
            yield DataTable(id="keys", cursor_type="none", show_header=False)

    def on_mount(self) -> None:
        table = self.query_one("#keys", DataTable)
        table.add_columns("key", "what it does")
        for action in ACTIONS:
            table.add_row(display_key(action.key), action.help)
        for binding in TaskTable.BINDINGS:
            if isinstance(binding, Binding):
                table.add_row(" / ".join(binding.key.split(",")), binding.tooltip)
        table.add_row("ctrl+p", "Command palette: every action by name")
