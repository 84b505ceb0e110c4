"""The console: a Textual app whose screens call ``core.service`` and tail the Redis streams.

The app itself only installs the main screen and feeds the command palette from the same action
table as the keys (``tui.actions``); everything else lives in ``tui/screens`` and ``tui/widgets``.
"""

from __future__ import annotations

from typing import Iterable

from textual.app import App, SystemCommand
from textual.screen import Screen

from core.service import Service
from tui.actions import ACTIONS
from tui.screens.main import MainScreen


class TaskmanApp(App):
    """taskman's console on one Redis namespace."""

    TITLE = "taskman"

    def __init__(self, service: Service, *, redis_label: str | None = None) -> None:
        super().__init__()
        self.service = service
        kwargs = service.store.redis.connection_pool.connection_kwargs
        self.redis_label = redis_label or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"

    def on_mount(self) -> None:
        self.push_screen(MainScreen(self.service))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if isinstance(screen, MainScreen):
            for action in ACTIONS:
                yield SystemCommand(action.label.capitalize(), action.help,
                                    lambda name=action.action: screen.call_later(screen.run_action, name))
