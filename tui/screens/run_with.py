"""Run a task once with other arguments, or another request body, leaving the task as it is.

The dialog shows the task's own arguments (code and registered tasks) or request body (API tasks), with
secrets masked as every view masks them; what is changed is sent as this run's overrides
(``Service.run_now``), checked like the spec's own fields. A masked secret left as it is stands for the
stored one. A refusal is shown in place, naming the field.
"""

from __future__ import annotations

from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static, TextArea

from core import redact
from core.errors import InvalidSpec, TaskmanError
from core.models import Kind, Run, Task
from core.service import Service
from core.text import read_json
from tui.guard import CarriesOn
from tui.safe import block, json_text, plain


class RunWithScreen(CarriesOn, ModalScreen[Run | None]):
    """Other args/kwargs (or another body) for one run of ``task``; ctrl+s runs, escape cancels.
    Dismissed with the queued run, or None."""

    CSS_PATH = "run_with.tcss"
    BINDINGS = [
        Binding("ctrl+s", "run", "run once", id="run-with.run", tooltip="Queue the run with these arguments"),
        Binding("escape", "dismiss(None)", "cancel", id="run-with.cancel", tooltip="Close without running"),
    ]

    def __init__(self, service: Service, task: Task) -> None:
        super().__init__()
        self.service = service
        self.target = task
        spec = task.spec
        self.body_field = "json" if spec.json_body is not None else "data"
        body = spec.json_body if spec.json_body is not None else spec.data
        self.initial = {
            "args": json_text(spec.args),
            "kwargs": json_text(redact.mask_fields(spec.kwargs)),
            "body": "" if body is None else json_text(redact.mask_fields(body), indent=2),
        }

    def compose(self) -> ComposeResult:
        api = self.target.kind is Kind.API
        with Vertical(id="dialog"):
            yield Static(plain(f"Run {self.target.name} once with other "
                               f"{'request body' if api else 'arguments'}; the task keeps its own"), id="run-title")
            if api:
                yield Label(f"Request body, JSON (replaces the task's; empty: no body) - sent as {self.body_field}")
                # plain text: tree-sitter's JSON grammar crashed the test process (a segfault) here
                yield TextArea(self.initial["body"], id="body", show_line_numbers=False)
            else:
                yield Label("args: positional arguments, a JSON array")
                yield Input(self.initial["args"], id="args")
                yield Label("kwargs: keyword arguments, a JSON object")
                yield Input(self.initial["kwargs"], id="kwargs")
            yield Static("", id="run-error")
            yield Static("ctrl+s runs it once · esc cancels", id="run-hint")

    def on_mount(self) -> None:
        self.query_one("#body" if self.target.kind is Kind.API else "#args").focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_run()

    def overrides(self) -> dict[str, Any]:
        """What differs from the task's own, as overrides; raises ``InvalidSpec`` for text that is not JSON."""
        changed: dict[str, Any] = {}
        if self.target.kind is Kind.API:
            text = self.query_one("#body", TextArea).text
            if text.strip() != self.initial["body"].strip():
                changed[self.body_field] = read_json(text, self.body_field, blank=None)
            return changed
        for field in ("args", "kwargs"):
            text = self.query_one(f"#{field}", Input).value
            if text.strip() != self.initial[field].strip():
                value = read_json(text, field, blank=None)
                changed[field] = value if value is not None else ([] if field == "args" else {})
        return changed

    def action_run(self) -> None:
        try:
            overrides = self.overrides()
        except InvalidSpec as exc:
            self._refused(exc.field, exc.message)
            return
        if not overrides:
            self._refused("", "nothing differs from the task's own; change a field (r on the list runs the task "
                              "as it is)")
            return
        self.run_once(overrides)

    @work(thread=True, exclusive=True)
    def run_once(self, overrides: dict[str, Any]) -> None:
        try:
            run = self.service.run_now(self.target.id, overrides)
        except TaskmanError as exc:
            self.app.call_from_thread(self._refused, getattr(exc, "field", ""), exc.message)
            return
        self.app.call_from_thread(self.app.notify, f"queued run {run.id} of {self.target.name} with "
                                                   f"{', '.join(sorted(overrides))} of its own")
        self.app.call_from_thread(self.dismiss, run)

    def _refused(self, field: str, message: str) -> None:
        self.query_one("#run-error", Static).update(block(message))
        target = {"args": "#args", "kwargs": "#kwargs", "data": "#body", "json": "#body"}.get(field.split(".")[0])
        if target and self.query(target):
            self.query_one(target).focus()
