"""The keys of the screen you are on, from the same tables that make its bindings (and the palette).

The main screen's come from ``tui.actions`` (its keys, footer and palette) plus the keys of the list and
of the log pane, which act while they have focus; any other screen mixes in :class:`ShowsKeys` and
lists its own ``BINDINGS``. So what ``?`` shows can never disagree with what the keys do.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from tui.actions import ACTIONS, display_key
from tui.guard import CarriesOn

Row = tuple[str | Text, str]


def binding_rows(bindings: Iterable[BindingType]) -> list[Row]:
    """(keys, what they do) for each binding: its tooltip, else its description."""
    rows: list[Row] = []
    for binding in bindings:
        if isinstance(binding, Binding):
            keys = " / ".join(display_key(key.strip()) for key in binding.key.split(","))
            rows.append((keys, binding.tooltip or binding.description))
    return rows


def main_rows() -> list[Row]:
    """The main screen's keys: its actions, then the list's and the log pane's own."""
    from tui.widgets.log_pane import LogPane
    from tui.widgets.task_table import TaskTable

    rows: list[Row] = [(display_key(action.key), action.help) for action in ACTIONS]
    rows.append((Text("in the list", style="bold"), ""))
    rows += binding_rows(TaskTable.BINDINGS)
    rows.append((Text("in the log pane (L puts the keys there)", style="bold"), ""))
    rows += binding_rows(LogPane.BINDINGS)
    return rows


class ShowsKeys:
    """Mixin for a screen: its ``help`` action (bind ``?`` to it) lists the screen's own keys."""

    def key_rows(self) -> list[Row]:
        return binding_rows(getattr(self, "BINDINGS", ()))

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(self.key_rows()))  # type: ignore[attr-defined]


class HelpScreen(CarriesOn, ModalScreen[None]):
    """Lists the keys (``rows``; the main screen's by default); escape, q or ? closes it."""

    CSS_PATH = "help.tcss"
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close", id="help.close")]

    def __init__(self, rows: list[Row] | None = None) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static("Keys — ctrl+p opens the command palette with the same actions", id="help-title")
            yield DataTable(id="keys", cursor_type="none", show_header=False)

    def on_mount(self) -> None:
        table = self.query_one("#keys", DataTable)
        table.add_columns("key", "what it does")
        for key, text in self.rows if self.rows is not None else main_rows():
            table.add_row(key, text)
        table.add_row("ctrl+p", "Command palette: every action by name")
        table.add_row("f1", "These keys, on any screen (also in a form, where ? is typed as text)")
