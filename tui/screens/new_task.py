"""The new-task form: kind, mode, what to run and when, with a live cron preview.

The form only gathers a spec; ``core.service`` validates it, and its refusal (naming the field) is
shown in place, with the cursor moved to that field. Nothing is stored until the spec is valid.
In the code editor Tab indents, so ``esc`` (shown in the footer while the editor has focus) moves on
to the next field; anywhere else ``esc`` cancels the form.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.cells import cell_len
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Select, Static, TextArea

from core import cron, redact
from core.errors import InvalidSpec, TaskmanError
from core.http import METHODS
from core.models import Kind, Mode, Task
from core.service import Service
from core.text import read_json
from tui.guard import CarriesOn
from tui.safe import block, json_text, one_line, plain, visible
from tui.widgets.editor import body_text, header_lines, parse_body, parse_headers

MODES = (("now", Mode.IMMEDIATE.value), ("after a delay", Mode.DELAYED.value), ("on cron", Mode.SCHEDULED.value))
KINDS = (("code", Kind.CODE.value), ("API request", Kind.API.value), ("registered task", Kind.REGISTERED.value))
TEMPLATE = 'def main():\n    print("hello")\n    return {"ok": True}\n'
FIELD_WIDGETS = {
    "name": "#name", "function_name": "#function-name", "function_code": "#code", "api_url": "#url",
    "method": "#method", "headers": "#headers", "data": "#body", "json": "#body", "task_name": "#task-name",
    "args": "#args", "kwargs": "#kwargs", "delay_seconds": "#delay", "cron_expression": "#cron",
    "timezone": "#timezone", "timeout": "#timeout", "max_retries": "#retries", "retry_backoff": "#backoff",
}


def _number(text: str, field: str, kind=float) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise InvalidSpec(field, f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None


class CodeEditor(TextArea):
    """The form's code editor: Tab indents, so esc leaves it for the next field (and says so in the footer)."""

    BINDINGS = [Binding("escape", "leave", "next field", priority=True, id="new.leave-editor",
                        tooltip="Leave the code editor for the next field (Tab indents here)")]

    def action_leave(self) -> None:
        self.screen.focus_next()


def cron_fires(expression: str, tz: str, count: int = 5) -> tuple[list[str], str]:
    """The next ``count`` fires of ``expression`` in ``tz`` as text each, or the refusal; (fires, refusal)."""
    try:
        fires = cron.next_fires(expression, tz or "UTC", datetime.now(UTC), count)
    except InvalidSpec as exc:
        return [], exc.message
    return [fire.strftime("%a %d %b %H:%M:%S") for fire in fires], ""


PREVIEW = "next: "


def join_fires(fires: list[str], width: int = 0) -> str:
    """``next: Thu 28 May 20:30:00, …``, its lines broken only between two fires when ``width`` (0: any) is
    too narrow for them all, each further line indented under the first fire."""
    pieces = [f"{fire}," for fire in fires[:-1]] + fires[-1:]
    lines = [PREVIEW + (pieces[0] if pieces else "–")]
    for piece in pieces[1:]:
        if not width or cell_len(lines[-1]) + 1 + cell_len(piece) <= width:
            lines[-1] += " " + piece
        else:
            lines.append(" " * len(PREVIEW) + piece)
    return "\n".join(lines)


class CronPreview(Static):
    """The cron preview: the next fires, drawn to the width it has, so a fire is never cut in two (at 80
    columns it takes two lines); or why the expression is refused."""

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.fires: list[str] = []
        self.refusal = ""
        self._drawn: str | None = None

    def show(self, fires: list[str], refusal: str = "") -> None:
        self.fires, self.refusal = fires, refusal
        self.set_class(bool(refusal), "error")
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        text = self.refusal or join_fires(self.fires, self.size.width)
        if text != self._drawn:
            self._drawn = text
            self.update(plain(text) if self.refusal else block(text))


class NewTaskScreen(CarriesOn, Screen[Task | None]):
    """Gathers a spec and creates it through the service; ``template`` pre-fills a duplicate. Dismissed
    with the created task."""

    CSS_PATH = "new_task.tcss"
    BINDINGS = [
        Binding("ctrl+s", "create", "create", id="new.create"),
        Binding("escape", "app.pop_screen", "cancel", id="new.cancel"),
    ]

    def __init__(self, service: Service, template: Task | None = None) -> None:
        super().__init__()
        self.service = service
        self.template = template

    def _defaults(self) -> dict[str, str]:
        """The form's starting values: a duplicate's, or a ready-to-run code task's."""
        spec = self.template.spec if self.template else None
        if spec is None:
            return {"kind": Kind.CODE.value, "mode": Mode.IMMEDIATE.value, "name": "", "function_name": "main",
                    "code": TEMPLATE, "method": "GET", "url": "", "headers": "", "body": "", "queue": "",
                    "args": "", "kwargs": "", "delay": "60", "cron": "*/5 * * * *", "timezone": "UTC",
                    "timeout": "", "retries": "0", "backoff": "1"}
        # A copy shows secrets masked, as every view does; creating it puts them back (``spec``).
        assert spec.kind is not None  # validation always infers it
        return {
            "kind": spec.kind.value, "mode": spec.task_type.value, "name": one_line(f"{spec.name} copy"),
            "function_name": spec.function_name or "main",
            "code": visible((spec.function_code or TEMPLATE).replace("\r\n", "\n")),
            "method": spec.method, "url": one_line(redact.redact_url(spec.api_url or "")),
            "headers": "\n".join(header_lines(spec)), "body": body_text(spec) or "",
            "queue": spec.queue or "", "args": json_text(spec.args) if spec.args else "",
            "kwargs": json_text(redact.mask_fields(spec.kwargs)) if spec.kwargs else "",
            "delay": f"{spec.delay_seconds:g}" if spec.delay_seconds is not None else "60",
            "cron": spec.cron_expression or "*/5 * * * *", "timezone": spec.timezone,
            "timeout": f"{spec.timeout:g}" if spec.timeout else "", "retries": str(spec.max_retries),
            "backoff": f"{spec.retry_backoff:g}",
        }

    def compose(self) -> ComposeResult:
        d = self._defaults()

        def field(key: str, **kwargs) -> Input:
            return Input(d[key], compact=True, id=kwargs.pop("id", key), **kwargs)

        title = f"New task (copy of {self.template.name})" if self.template else "New task"
        with VerticalScroll(id="form"):
            yield Static(plain(title), id="form-title")
            with Horizontal(classes="row"):
                yield Label("Kind")
                yield Select(KINDS, value=d["kind"], allow_blank=False, compact=True, id="kind")
                yield Label("Runs")
                yield Select(MODES, value=d["mode"], allow_blank=False, compact=True, id="mode")
            with Horizontal(classes="row"):
                yield Label("Name")
                yield field("name", placeholder="what the list shows")
            with Vertical(id="code-section", classes="section"):
                with Horizontal(classes="row"):
                    yield Label("Function")
                    yield field("function_name", id="function-name")
                yield CodeEditor.code_editor(d["code"], language="python", id="code")
            with Vertical(id="api-section", classes="section"):
                with Horizontal(classes="row"):
                    yield Label("Method")
                    yield Select([(m, m) for m in METHODS], value=d["method"], allow_blank=False, compact=True,
                                 id="method")
                    yield field("url", placeholder="http://service.internal/path")
                yield Label("Headers (one 'Name: value' per line)")
                yield TextArea(d["headers"], id="headers")
                yield Label("Body (JSON or text)")
                yield TextArea(d["body"], id="body")
            with Vertical(id="registered-section", classes="section"):
                with Horizontal(classes="row"):
                    yield Label("Task")
                    yield Select([], prompt="registered Celery task (as the workers report)", compact=True,
                                 id="task-name")
                with Horizontal(classes="row"):
                    yield Label("Queue")
                    yield field("queue", placeholder="registered")
            with Horizontal(classes="row", id="args-row"):
                yield Label("Args")
                yield field("args", placeholder="[1, 2]")
                yield Label("Kwargs")
                yield field("kwargs", placeholder='{"day": "mon"}')
            with Horizontal(classes="row section", id="delay-section"):
                yield Label("Delay (s)")
                yield field("delay")
            with Vertical(id="cron-section", classes="section"):
                with Horizontal(classes="row"):
                    yield Label("Cron")
                    yield field("cron")
                    yield Label("Timezone")
                    yield field("timezone")
                yield CronPreview(id="cron-preview")
            with Horizontal(classes="row"):
                yield Label("Timeout (s)")
                yield field("timeout", placeholder="default")
                yield Label("Retries")
                yield field("retries")
                yield Label("Backoff (s)")
                yield field("backoff")
        # outside the scroll, just above the footer: a refusal shows whatever part of the form is in
        # view (at 80x24 the form's end is below the fold)
        yield Static("", id="form-error")
        yield Footer()

    def on_mount(self) -> None:
        self._show_sections()
        self._preview()
        self.load_registered()
        self.query_one("#name", Input).focus()

    @work(thread=True)
    def load_registered(self) -> None:
        names = sorted(self.service.registered_tasks())
        self.app.call_from_thread(self._set_registered, names)

    def _set_registered(self, names: list[str]) -> None:
        select = self.query_one("#task-name", Select)
        select.set_options([(plain(name), name) for name in names])
        if self.template and self.template.spec.task_name in names:
            select.value = self.template.spec.task_name

    @on(Select.Changed, "#kind, #mode")
    def _show_sections(self) -> None:
        kind = self.query_one("#kind", Select).value
        mode = self.query_one("#mode", Select).value
        self.query_one("#code-section").display = kind == Kind.CODE.value
        self.query_one("#api-section").display = kind == Kind.API.value
        self.query_one("#registered-section").display = kind == Kind.REGISTERED.value
        self.query_one("#args-row").display = kind != Kind.API.value
        self.query_one("#delay-section").display = mode == Mode.DELAYED.value
        self.query_one("#cron-section").display = mode == Mode.SCHEDULED.value

    @on(Input.Changed, "#cron, #timezone")
    def _preview(self) -> None:
        fires, refusal = cron_fires(self.query_one("#cron", Input).value, self.query_one("#timezone", Input).value)
        self.query_one("#cron-preview", CronPreview).show(fires, refusal)

    def spec(self) -> dict[str, Any]:
        """The spec the form describes; raises InvalidSpec for fields the form itself cannot read."""
        kind = self.query_one("#kind", Select).value
        mode = self.query_one("#mode", Select).value
        value = lambda selector: self.query_one(selector, Input).value  # noqa: E731
        spec: dict[str, Any] = {"name": value("#name"), "task_type": mode, "kind": kind}
        if kind == Kind.CODE.value:
            spec["function_name"] = value("#function-name").strip()
            spec["function_code"] = self.query_one("#code", TextArea).text
        elif kind == Kind.API.value:
            spec["method"] = self.query_one("#method", Select).value
            spec["api_url"] = value("#url").strip()
            spec["headers"] = parse_headers(self.query_one("#headers", TextArea).text.splitlines())
            spec.update(parse_body(self.query_one("#body", TextArea).text))
        else:
            task_name = self.query_one("#task-name", Select).value
            spec["task_name"] = task_name if isinstance(task_name, str) else ""
            if value("#queue").strip():
                spec["queue"] = value("#queue").strip()
        if kind != Kind.API.value:
            spec["args"] = read_json(value("#args"), "args", blank=[])
            spec["kwargs"] = read_json(value("#kwargs"), "kwargs", blank={})
        if mode == Mode.DELAYED.value:
            spec["delay_seconds"] = _number(value("#delay"), "delay_seconds")
        if mode == Mode.SCHEDULED.value:
            spec["cron_expression"] = value("#cron").strip()
            spec["timezone"] = value("#timezone").strip() or "UTC"
        for field, selector, kind_of in (("timeout", "#timeout", float), ("max_retries", "#retries", int),
                                         ("retry_backoff", "#backoff", float)):
            number = _number(value(selector), field, kind_of)
            if number is not None:
                spec[field] = number
        if self.template is not None:  # the copy's masked secrets, left as they were, are the template's
            spec = redact.restore_spec(spec, self.template.spec.to_dict())
        return spec

    def action_create(self) -> None:
        try:
            spec = self.spec()
        except InvalidSpec as exc:
            self._refused(exc)
            return
        self.create(spec)

    @work(thread=True, exclusive=True)
    def create(self, spec: dict[str, Any]) -> None:
        try:
            task = self.service.create(spec)
        except InvalidSpec as exc:
            self.app.call_from_thread(self._refused, exc)
            return
        except TaskmanError as exc:
            self.app.call_from_thread(self._show_error, block(exc.message))
            return
        self.app.call_from_thread(self.app.notify, f"created {task.name} ({task.kind.value}, {task.mode.value})")
        self.app.call_from_thread(self.dismiss, task)

    def _show_error(self, text: Text) -> None:
        error = self.query_one("#form-error", Static)
        error.update(text)
        error.display = bool(text)

    def _refused(self, exc: InvalidSpec) -> None:
        self._show_error(block(exc.message))
        selector = FIELD_WIDGETS.get(exc.field.split(".")[0])
        if selector:
            self.query_one(selector).focus()
