"""The editor pane: a code task's source, or an API task's request, edited in place.

API requests are shown in the shape of an HTTP request file — ``METHOD URL``, header lines, a blank
line, the body — so they read the way they go on the wire. Secrets (header values, secret-named query
parameters and body fields, a registered task's secret-named kwargs) are shown masked; a masked value
saved unchanged keeps the stored secret (``core.redact.restore_spec``, applied by the service).

What the editor shows is data: control characters are made visible (``\x1b``) before the text area
gets it, since a text area writes its characters to the terminal as they are; the title is plain text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static, TextArea

from core import redact
from core.errors import InvalidSpec
from core.models import Kind, Task
from core.spec import TaskSpec
from tui.guard import CarriesOn
from tui.safe import json_text, one_line, plain, visible

MASK = "***"


def header_lines(spec: TaskSpec) -> list[str]:
    """An API task's headers as editable lines, ``Name: value``, secret values masked."""
    return [f"{name}: {one_line(value)}" for name, value in redact.mask_headers(spec.headers).items()]


def body_text(spec: TaskSpec) -> str | None:
    """An API task's body as editable text (JSON indented, text as it is), secret fields masked; None if none."""
    body = spec.json_body if spec.json_body is not None else spec.data
    if body is None:
        return None
    body = redact.mask_fields(body)
    return visible(body) if isinstance(body, str) else json_text(body, indent=2)


def request_text(task: Task) -> str:
    """An API task's request as editable text."""
    spec = task.spec
    lines = [f"{spec.method} {one_line(redact.redact_url(spec.api_url or ''))}", *header_lines(spec)]
    body = body_text(spec)
    if body is not None:
        lines += ["", body]
    return "\n".join(lines)


def parse_headers(lines: list[str], first: int = 1, stored: dict[str, str] | None = None) -> dict[str, str]:
    """Header lines, ``Name: value`` each (blank ones skipped; ``first`` is the first line's number, for the
    refusal); a value still masked (ending in ``***``) keeps the ``stored`` one."""
    headers: dict[str, str] = {}
    for number, line in enumerate(lines, start=first):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise InvalidSpec("headers", f"line {number}: write headers as 'Name: value'")
        name, value = name.strip(), value.strip()
        headers[name] = stored.get(name, value) if stored and value.endswith(MASK) else value
    return headers


def parse_body(text: str) -> dict[str, Any]:
    """A request body as typed: ``{"json": value}`` when it reads as JSON, else ``{"data": text}``; ``{}``
    when it is blank."""
    if not text.strip():
        return {}
    try:
        return {"json": json.loads(text)}
    except json.JSONDecodeError:
        return {"data": text}


def parse_request(text: str, stored: dict[str, str]) -> dict[str, Any]:
    """The spec changes an edited request text asks for; masked header values keep ``stored``."""
    head, _, body = text.strip("\n").partition("\n\n")
    lines = [line for line in head.splitlines() if line.strip()]
    if not lines:
        raise InvalidSpec("api_url", "the first line must be METHOD URL, e.g. GET http://host/path")
    first = lines[0].split(None, 1)
    if len(first) != 2:
        raise InvalidSpec("api_url", "the first line must be METHOD URL, e.g. GET http://host/path")
    return {"method": first[0], "api_url": first[1].strip(), "headers": parse_headers(lines[1:], 2, stored),
            "data": None, "json": None, **parse_body(body)}


def registered_text(task: Task) -> str:
    spec = task.spec
    fields = {"task_name": spec.task_name, "args": spec.args, "kwargs": redact.mask_fields(spec.kwargs)}
    if spec.queue:
        fields["queue"] = spec.queue
    return json_text(fields, indent=2)


def parse_registered(text: str) -> dict[str, Any]:
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidSpec("task_name", f"not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(fields, dict):
        raise InvalidSpec("task_name", "write a JSON object with task_name, args and kwargs")
    allowed = {"task_name", "args", "kwargs", "queue"}
    unknown = set(fields) - allowed
    if unknown:
        raise InvalidSpec(sorted(unknown)[0], "only task_name, args, kwargs and queue can be edited here")
    return fields


class EditorPane(CarriesOn, Vertical):
    """Title, text area and a hint line that shows the next fires or the last save's error."""

    @dataclass
    class SaveRequested(Message):
        """ctrl+s: the user wants these changes saved to the task."""

        task_id: str
        changes: dict[str, Any]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.current: Task | None = None
        self.original = ""

    def compose(self) -> ComposeResult:
        yield TextArea.code_editor("", language="python", id="source", soft_wrap=False)
        yield Static("", id="hint")

    @property
    def area(self) -> TextArea:
        return self.query_one("#source", TextArea)

    @property
    def dirty(self) -> bool:
        return self.current is not None and self.area.text != self.original

    def show(self, task: Task | None, hint: str = "") -> None:
        """Load ``task`` into the editor (unless the current one has unsaved changes)."""
        if self.dirty and task is not None and self.current is not None and task.id != self.current.id:
            self.set_hint(f"unsaved changes to {self.current.name}: ctrl+s saves, esc discards", error=True)
            return
        if task is not None and self.current is not None and task.id == self.current.id and not hint:
            if self.dirty or self._text_of(task) == self.original:
                self.current = task
                self.border_title = self._title(task)
                return
        self.current = task
        self.border_title = self._title(task) if task else "editor"
        self.original = self._text_of(task) if task else ""
        self.area.language = "python" if task is not None and task.kind is Kind.CODE else None
        self.area.load_text(self.original)
        self.set_hint(hint or ("ctrl+s save   esc discard" if task else "no task selected"))

    @staticmethod
    def _text_of(task: Task) -> str:
        if task.kind is Kind.CODE:
            return visible((task.spec.function_code or "").replace("\r\n", "\n"))
        if task.kind is Kind.API:
            return request_text(task)
        return registered_text(task)

    def _title(self, task: Task) -> Text:
        return plain(f"{task.name} · {task.kind.value} · {self._schedule(task)}")

    @staticmethod
    def _schedule(task: Task) -> str:
        spec = task.spec
        if spec.cron_expression:
            return f"cron {spec.cron_expression}"
        if spec.delay_seconds is not None:
            return f"delay {spec.delay_seconds:g}s"
        return "now"

    def set_hint(self, text: str, *, error: bool = False) -> None:
        hint = self.query_one("#hint", Static)
        hint.update(plain(text))
        hint.set_class(error, "error")

    def changes(self) -> dict[str, Any]:
        """What the edited text asks to change; raises InvalidSpec for text that cannot be read."""
        assert self.current is not None
        text = self.area.text
        if self.current.kind is Kind.CODE:
            return {"function_code": text}
        if self.current.kind is Kind.API:
            return parse_request(text, dict(self.current.spec.headers))
        return parse_registered(text)

    def request_save(self) -> None:
        if self.current is None:
            return
        try:
            changes = self.changes()
        except InvalidSpec as exc:
            self.set_hint(exc.message, error=True)
            return
        self.post_message(self.SaveRequested(self.current.id, changes))

    def saved(self, task: Task) -> None:
        self.current = None
        self.show(task, "saved ✔ — takes effect from the next run")

    def discard(self) -> None:
        task, self.current = self.current, None
        self.show(task, "changes discarded")
