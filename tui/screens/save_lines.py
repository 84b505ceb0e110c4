"""Save the log lines shown to a file: in the current directory unless another path is given.

The lines are written as the pane shows them (control characters made visible), one entry per line.
An existing file is never overwritten; the dialog says so and waits for another name. Where the file
went is said in full once it is written.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from tui.guard import CarriesOn
from tui.safe import block, plain


def default_name(scope: str, now: datetime | None = None) -> str:
    """A new file's name for the lines of ``scope`` (a task's name, or "all")."""
    label = re.sub(r"[^\w.-]+", "-", scope, flags=re.ASCII).strip("-.")[:40] or "logs"
    return f"taskman-logs-{label}-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}.txt"


def where(path: str, cwd: Path | None = None) -> Path:
    """``path`` as the user meant it: ``~`` expanded, a relative path under the current directory."""
    target = Path(path).expanduser()
    return target if target.is_absolute() else (cwd or Path.cwd()) / target


class SaveLinesScreen(CarriesOn, ModalScreen[Path | None]):
    """Asks where to save ``lines`` (a new file in the current directory is offered); enter saves,
    escape cancels. Dismissed with the file written, or None."""

    CSS_PATH = "save_lines.tcss"
    BINDINGS = [Binding("escape", "dismiss(None)", "cancel", id="save-lines.cancel")]

    def __init__(self, lines: list[str], scope: str) -> None:
        super().__init__()
        self.lines = lines
        self.scope = scope

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(plain(f"Save the {len(self.lines)} log line{'s' * (len(self.lines) != 1)} shown to a "
                               f"file (a relative path is under {Path.cwd()})"), id="save-title")
            yield Input(default_name(self.scope), id="save-path")
            yield Static("", id="save-error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if not event.value.strip():
            self._error("give a file name or a path")
            return
        self.save(where(event.value.strip()))

    @work(thread=True, exclusive=True)
    def save(self, path: Path) -> None:
        try:
            with path.open("x", encoding="utf-8") as file:
                file.writelines(f"{line}\n" for line in self.lines)
        except FileExistsError:
            self.app.call_from_thread(self._error, f"{path} exists already; give another name")
            return
        except OSError as exc:
            self.app.call_from_thread(self._error, f"cannot write {path}: {exc.strerror or exc}")
            return
        self.app.call_from_thread(self.app.notify, f"saved {len(self.lines)} lines to {path}")
        self.app.call_from_thread(self.dismiss, path)

    def _error(self, message: str) -> None:
        self.query_one("#save-error", Static).update(block(message))
