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
KEY_WIDTH = 16


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
        # the scroll takes the keys (up/down, page up/down, home/end), not the table inside it
        with VerticalScroll(id="help"):
            yield Static("Keys — ctrl+p opens the command palette with the same actions", id="help-title")
            table: DataTable = DataTable(id="keys", cursor_type="none", show_header=False)
            table.can_focus = False
            yield table

    def on_mount(self) -> None:
        table = self.query_one("#keys", DataTable)
        # the descriptions wrap within the dialog (90% of the screen, at most 100 columns) rather than
        # run past its edge: borders, padding, the scrollbar and the cells' padding take the rest
        inner = min(100, self.app.size.width * 9 // 10) - 2 - 2 - 2
        table.add_column("key", width=KEY_WIDTH)
        table.add_column("what it does", width=max(20, inner - KEY_WIDTH - 2 * table.cell_padding * 2))
        for key, text in self.rows if self.rows is not None else main_rows():
            table.add_row(key, text, height=None)
        table.add_row("ctrl+p", "Command palette: every action by name", height=None)
        table.add_row("f1", "These keys, on any screen (also in a form, where ? is typed as text)", height=None)
        self.query_one("#help", VerticalScroll).focus()
