"""The console: a Textual app whose screens call ``core.service`` and tail the Redis streams.

The app itself only installs the main screen and feeds the command palette from the same action
table as the keys (``tui.actions``); everything else lives in ``tui/screens`` and ``tui/widgets``.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.worker import WorkerFailed

from core.service import Service
from core.text import one_line, visible
from tui.actions import ACTIONS
from tui.guard import CarriesOn
from tui.screens.main import MainScreen

ERROR_BURST = 5
"""Unexpected errors within ``ERROR_WINDOW`` seconds after which the console gives up (an error in
drawing the screen would otherwise repeat every frame); fewer are shown and the console carries on."""
ERROR_WINDOW = 10.0


class TaskmanApp(CarriesOn, App):
    """taskman's console on one Redis namespace.

    An unexpected error in a handler or a worker is shown and the console carries on (``tui.guard``): it
    is a window on the stack, and under ``taskman up`` the stack must not go down because a window had a
    bug. Only a burst of them (an error in drawing the screen repeats every frame) ends the console.
    """

    TITLE = "taskman"
    BINDINGS = [Binding("f1", "show_keys", "keys", show=False, id="app.keys",
                        tooltip="The keys of the screen you are on (as ? does, also where ? would be typed)")]

    def __init__(self, service: Service, *, redis_label: str | None = None,
                 supervision: Callable[[], dict[str, dict]] | None = None) -> None:
        super().__init__()
        self.service = service
        self.supervision = supervision
        """Under ``taskman up``: what its supervisor restarted (``Stack.status``); None otherwise."""
        self.redis_label = redis_label or service.redis_label()
        self.errors: list[str] = []
        """Tracebacks of the unexpected errors the console survived, oldest first (the last 20)."""
        self._error_times: list[float] = []

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = True) -> None:
        """Every notification is plain text: messages quote names, errors and paths, which are data."""
        super().notify(visible(message), title=one_line(title), severity=severity, timeout=timeout, markup=False)

    def report_error(self, error: BaseException) -> None:
        """Show an unexpected error and carry on; a burst of them (or one while starting or stopping)
        ends the console the way Textual does, with the traceback printed."""
        cause = error.error if isinstance(error, WorkerFailed) else error
        now = time.monotonic()
        self._error_times = [at for at in self._error_times if now - at < ERROR_WINDOW] + [now]
        if len(self._error_times) > ERROR_BURST or not self.is_running or not isinstance(cause, Exception):
            # Textual annotates ``error`` as Exception; it handles (and prints) any BaseException.
            super()._handle_exception(cause if isinstance(cause, Exception) else error)  # type: ignore[arg-type]
            return
        self.errors = [*self.errors[-19:], "".join(traceback.format_exception(cause))]
        try:
            self.notify(f"{type(cause).__name__}: {cause}\nThe console carries on; the stack is unaffected.",
                        title="Unexpected error", severity="error", timeout=30)
        except Exception:
            super()._handle_exception(cause)

    def _handle_exception(self, error: Exception) -> None:
        """Errors Textual would end the app for (in drawing, timers, callbacks, and every worker's, wrapped
        in ``WorkerFailed``, whichever node started it): :meth:`report_error`."""
        self.report_error(error)

    def restarts(self) -> str:
        """Children ``taskman up`` restarted, for the status line ("beat ×2, worker-code ×1 ✘")."""
        if self.supervision is None:
            return ""
        parts = [f"{name} ×{child['restarts']}{' ✘' if child['keeps_dying'] else ''}"
                 for name, child in self.supervision().items() if child["restarts"]]
        return f"restarted {', '.join(parts)}" if parts else ""

    def action_show_keys(self) -> None:
        """F1: the keys of the screen on top (a form or a dialog too, where ``?`` is text)."""
        from tui.screens.help import HelpScreen, ShowsKeys, binding_rows

        screen = self.screen
        if isinstance(screen, HelpScreen):
            return
        rows = None if isinstance(screen, MainScreen) else (
            screen.key_rows() if isinstance(screen, ShowsKeys) else binding_rows(type(screen).BINDINGS))
        self.push_screen(HelpScreen(rows))

    def on_mount(self) -> None:
        self.push_screen(MainScreen(self.service))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Textual's commands and, on the main screen, every action; each title once (the actions' own
        "Keys" and "Quit" stand for Textual's)."""
        ours = [SystemCommand(action.label.capitalize(), action.help,
                              lambda name=action.action: screen.call_later(screen.run_action, name))
                for action in ACTIONS] if isinstance(screen, MainScreen) else []
        titles = {command.title for command in ours}
        yield from (command for command in super().get_system_commands(screen) if command.title not in titles)
        yield from ours
