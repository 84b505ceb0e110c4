"""The one table of console actions: key bindings, footer, command palette and help all read it.

Each action has an id (so keys can be rebound), a key, the screen action it runs, a short label for
the footer and a sentence for the help screen and the palette. They can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding, BindingType


@dataclass(frozen=True)
class Action:
    """One thing a user can do on the main screen."""

    id: str
    key: str
    action: str
    label: str
    help: str
    footer: bool = True
    priority: bool = False
    """Checked before the focused widget sees the key (a text area would otherwise take ``esc``)."""
    short: str = ""
    """The footer's label when ``label`` is longer than it can afford (so at 80 columns every key shows)."""


ACTIONS: tuple[Action, ...] = (
    Action("new", "n", "new_task", "new", "Create a task: code, API or registered; now, delayed or cron"),
    Action("detail", "enter", "open_detail", "detail", "Show the selected task's definition, runs and results"),
    Action("run", "r", "run_task", "run", "Run the selected task now, whatever its schedule"),
    Action("run_with", "R", "run_with", "run with…",
           "Run the selected task once with other arguments or another request body; the task keeps its own",
           footer=False),
    Action("stop", "s", "stop_task", "stop", "Stop the selected task: queued runs never start, running ones die"),
    Action("pause", "p", "toggle_pause", "pause", "Pause or resume the selected delayed or cron task"),
    Action("edit", "e", "edit_task", "edit", "Edit the selected task's code or request (ctrl+s saves)"),
    Action("duplicate", "c", "duplicate_task", "copy", "Open the form filled in with a copy of the selected task"),
    Action("delete", "d", "delete_task", "delete", "Delete the selected task (asks first)", short="del"),
    Action("filter", "slash", "filter", "filter", "Filter the list: text matches names; state:, kind:, mode: too"),
    Action("logs", "l", "toggle_log_scope", "logs all/task", "Show logs of all tasks or of the selected one",
           short="logs"),
    Action("follow", "f", "toggle_follow", "follow", "Follow new log lines or hold the log pane still"),
    Action("log_pane", "L", "focus_logs", "log pane",
           "Put the keys in the log pane (/ finds, n/N jump, w wraps, S saves, y copies); esc comes back",
           footer=False),
    Action("import", "i", "import_json", "import", "Create tasks from a JSON file in the seed's format", footer=False),
    Action("audit", "a", "audit", "audit", "Show the audit trail: who changed what, from which front end",
           footer=False),
    Action("workers", "w", "workers", "workers",
           "Show the workers (pool, load, heartbeat, isolation walls), the queues and the registered task names",
           footer=False),
    Action("save", "ctrl+s", "save", "save", "Save the editor's changes to the task", footer=False),
    Action("discard", "escape", "discard", "discard",
           "Discard the editor's changes (or close the filter) and go back to the list", footer=False, priority=True),
    Action("help", "question_mark", "help", "keys", "Show every key"),
    Action("quit", "q", "app.quit", "quit", "Quit the console", footer=False),
)


def bindings() -> list[BindingType]:
    """Textual bindings for the main screen, built from ``ACTIONS``."""
    return [Binding(a.key, a.action, a.short or a.label, show=a.footer, id=a.id, tooltip=a.help, priority=a.priority)
            for a in ACTIONS]


def display_key(key: str) -> str:
    return {"slash": "/", "question_mark": "?", "enter": "enter", "escape": "esc"}.get(key, key)
