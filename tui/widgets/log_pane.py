"""The live log pane: lines from the log stream, of every task or of the selected one.

Each entry is one line of plain text (``rich.text.Text``, ``markup=False``) with its control characters
and newlines made visible: a printed line can neither be markup nor pose as another entry.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime

from rich.text import Text
from textual.widgets import RichLog

from tui.guard import CarriesOn
from tui.safe import one_line

LEVEL_STYLES = {"error": "red", "warning": "yellow", "print": "", "info": "dim"}
KEPT = 5000


class LogPane(CarriesOn, RichLog):
    """Keeps the recent entries so switching scope re-filters without reading Redis again."""

    def __init__(self, **kwargs) -> None:
        super().__init__(wrap=True, markup=False, highlight=False, max_lines=KEPT, **kwargs)
        self.entries: deque[dict] = deque(maxlen=KEPT)
        self.scope: str | None = None
        self.names: dict[str, str] = {}
        self.following = True

    def add(self, entries: list[dict]) -> None:
        for entry in entries:
            self.entries.append(entry)
            if self.scope is None or entry.get("task") == self.scope:
                self.write(self._line(entry), scroll_end=self.following)

    def show_scope(self, task_id: str | None, title: str | Text) -> None:
        """Show only ``task_id``'s lines (None: all) and retitle the pane."""
        self.scope = task_id
        self.border_title = title
        self.clear()
        for entry in self.entries:
            if task_id is None or entry.get("task") == task_id:
                self.write(self._line(entry), scroll_end=self.following)

    def set_following(self, following: bool) -> None:
        self.following = following
        self.auto_scroll = following
        if following:
            self.scroll_end(animate=False)

    def _line(self, entry: dict) -> Text:
        stamp = datetime.fromtimestamp(float(entry.get("ts") or 0)).strftime("%H:%M:%S.%f")[:-3]
        line = Text(f"{stamp} ", style="dim")
        if self.scope is None:
            name = one_line(self.names.get(entry.get("task", ""), entry.get("task", "")))
            line.append(f"{name[:20]} ", style="bold")
        line.append(one_line(entry.get("msg", "")), style=LEVEL_STYLES.get(entry.get("level", ""), ""))
        return line
