"""Task specs: what a user writes (the seed's JSON format, accepted as is), validated here, once,
before anything is stored; every refusal names the field at fault.

Only what writes or runs a task loads this module (and pydantic with it): reading tasks does not
(``core.models.Task`` keeps its spec as stored until ``Task.spec`` is asked for).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from core import cron
from core.config import MIN_MEMORY_LIMIT_MB
from core.errors import InvalidSpec
from core.models import (
    CODE_QUEUE,
    HTTP_QUEUE,
    QUEUE_NAME_PATTERN,
    Kind,
    Mode,
    internal_task_refusal,
    queue_refusal,
)
from core.spec_fields import HTTP_METHODS, TASK_LIMIT_FIELDS
from core.text import has_control, has_surrogate

MAX_NAME = 200
MAX_CODE = 100_000
MAX_HEADERS = 50
MAX_HEADER_VALUE = 8_192
MAX_BODY = 1_000_000
"""Bytes (as JSON) of each of a spec's payloads: ``data``, ``json``, ``args``, ``kwargs``, ``params``."""
MAX_PARAMS = 100
MAX_DEPTH = 64
"""Nesting depth of any value in a spec (deeper JSON is refused before it can exhaust a parser's stack)."""
MAX_DELAY = 366 * 24 * 3600
TASK_NAME_PATTERN = re.compile(r"^[A-Za-z_][\w.:-]{0,199}$")


class TaskSpec(BaseModel):
    """A task definition as a user writes it; the seed's JSON format plus taskman's additions."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=False)

    name: str = Field(min_length=1, max_length=MAX_NAME)
    description: str = Field(default="", max_length=2000)
    task_type: Mode = Mode.IMMEDIATE
    kind: Kind | None = None

    function_code: str | None = Field(default=None, max_length=MAX_CODE)
    function_name: str | None = None

    api_url: str | None = None
    method: str = "GET"
    headers: dict[str, str] = {}
    params: dict[str, str | int | float | bool] = {}
    data: Any = None
    json_body: Any = Field(default=None, alias="json")

    task_name: str | None = None
    queue: str | None = Field(default=None, pattern=QUEUE_NAME_PATTERN)

    args: list[Any] = []
    kwargs: dict[str, Any] = {}

    delay_seconds: float | None = Field(default=None, ge=0, le=MAX_DELAY, strict=True)
    cron_expression: str | None = None
    timezone: str = "UTC"

    timeout: float | None = Field(default=None, gt=0, strict=True)
    max_retries: int = Field(default=0, ge=0, strict=True)
    retry_backoff: float = Field(default=1.0, ge=0, le=86_400, strict=True)

    # Host limits of a code run; unset means the configured default, and each has a configured max_*.
    memory_limit_mb: int | None = Field(default=None, ge=MIN_MEMORY_LIMIT_MB, strict=True)
    output_cap: int | None = Field(default=None, ge=0, strict=True)
    result_cap: int | None = Field(default=None, ge=0, strict=True)
    recursion_limit: int | None = Field(default=None, ge=1, strict=True)

    @field_validator("name")
    @classmethod
    def _name_has_text(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        if has_control(value) or has_surrogate(value):
            raise ValueError("must not contain control characters (or invalid Unicode)")
        return value

    @field_validator("description")
    @classmethod
    def _description_is_text(cls, value: str) -> str:
        if has_control(value, allow="\n\t") or has_surrogate(value):
            raise ValueError("must not contain control characters other than newline and tab (or invalid Unicode)")
        return value

    @field_validator("function_code")
    @classmethod
    def _source_is_text(cls, value: str | None) -> str | None:
        if value is not None and (has_control(value, allow="\n\t\r\f") or has_surrogate(value)):
            raise ValueError("must not contain raw control characters; write them as escapes such as '\\x1b'")
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        upper = value.upper()
        if upper not in HTTP_METHODS:
            raise ValueError(f"must be one of {', '.join(HTTP_METHODS)}, not {value!r}")
        return upper

    @field_validator("headers")
    @classmethod
    def _bounded_headers(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_HEADERS:
            raise ValueError(f"at most {MAX_HEADERS} headers are allowed, got {len(value)}")
        for key, item in value.items():
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}", key):
                raise ValueError(f"{key!r} is not a valid header name")
            if len(item) > MAX_HEADER_VALUE or "\n" in item or "\r" in item:
                raise ValueError(f"header {key!r}: value must be one line of at most {MAX_HEADER_VALUE} characters")
            if has_control(item, allow="\t") or has_surrogate(item):
                raise ValueError(f"header {key!r}: value must not contain control characters")
        return value

    @field_validator("timeout", "delay_seconds", "retry_backoff")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("params")
    @classmethod
    def _bounded_params(cls, value: dict) -> dict:
        if len(value) > MAX_PARAMS:
            raise ValueError(f"at most {MAX_PARAMS} query parameters are allowed, got {len(value)}")
        return value

    @field_validator("data", "json_body", "args", "kwargs", "params")
    @classmethod
    def _bounded_payload(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or (info.context and info.context.get("stored")):  # stored specs were measured
            return value
        try:
            size = len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"must be JSON data ({exc})") from None
        if size > MAX_BODY:
            raise ValueError(f"is {size} bytes as JSON; at most {MAX_BODY} bytes are allowed")
        return value

    @model_validator(mode="before")
    @classmethod
    def _infer_mode(cls, data: Any) -> Any:
        if isinstance(data, dict) and "task_type" not in data and "mode" not in data:
            if data.get("cron_expression") is not None:
                data = {**data, "task_type": "scheduled"}
            elif data.get("delay_seconds") is not None:
                data = {**data, "task_type": "delayed"}
        if isinstance(data, dict) and "mode" in data:
            data = dict(data)
            mode = data.pop("mode")
            if mode is not None and "task_type" in data and data["task_type"] != mode:
                raise InvalidSpec("mode",
                                  f"{mode!r} contradicts task_type {data['task_type']!r}; give only one of them")
            data.setdefault("task_type", mode)
        return data

    @model_validator(mode="after")
    def _coherent(self, info: ValidationInfo) -> TaskSpec:
        self.kind = self._infer_kind()
        if info.context and info.context.get("stored"):
            return self  # read back from Redis: it was checked in full when it was written
        if self.kind is not Kind.REGISTERED and self.queue is not None:
            raise InvalidSpec("queue", f"only a registered task takes a queue; {self.kind.value} tasks run on "
                                       f"taskman's own {CODE_QUEUE!r} and {HTTP_QUEUE!r} queues")
        if self.kind is not Kind.CODE:
            for name in TASK_LIMIT_FIELDS:
                if getattr(self, name) is not None:
                    raise InvalidSpec(name, f"only a code task takes {name}, this one is a {self.kind.value} task")
        if self.kind is Kind.CODE:
            if not self.function_name:
                raise InvalidSpec("function_name", "a code task needs the name of the function to call")
            from core import sandbox  # only when a code spec is validated: reading tasks needs no RestrictedPython

            sandbox.check_source(self.function_code or "", self.function_name)
        elif self.kind is Kind.API:
            from core import http  # only when an HTTP spec is validated: reading tasks needs no httpx

            http.check_url(self.api_url or "")
            if self.data is not None and self.json_body is not None:
                raise InvalidSpec("data", "give the body as 'data' or as 'json', not both")
        else:
            if not self.task_name or not TASK_NAME_PATTERN.match(self.task_name):
                raise InvalidSpec("task_name", "must be a Celery task name such as 'myapp.tasks.report'")
            if refusal := internal_task_refusal(self.task_name):
                raise InvalidSpec("task_name", refusal)
            if self.queue is not None and (refusal := queue_refusal(self.queue)):
                raise InvalidSpec("queue", refusal)
        if self.task_type is Mode.DELAYED and self.delay_seconds is None:
            raise InvalidSpec("delay_seconds", "a delayed task needs delay_seconds (seconds from now)")
        if self.task_type is not Mode.DELAYED and self.delay_seconds is not None:
            raise InvalidSpec("delay_seconds",
                              f"only a 'delayed' task takes delay_seconds, this one is {self.task_type.value!r}")
        if self.task_type is Mode.SCHEDULED:
            if not self.cron_expression:
                raise InvalidSpec("cron_expression", "a scheduled task needs a cron expression, e.g. '*/5 * * * *'")
            cron.check_timezone(self.timezone)
            cron.check_expression(self.cron_expression, self.timezone)
        elif self.cron_expression is not None:
            raise InvalidSpec("cron_expression",
                              f"only a 'scheduled' task takes a cron expression, this one is {self.task_type.value!r}")
        else:
            cron.check_timezone(self.timezone)
        return self

    def _infer_kind(self) -> Kind:
        present = {
            Kind.CODE: self.function_code is not None,
            Kind.API: self.api_url is not None,
            Kind.REGISTERED: self.task_name is not None,
        }
        given = [kind for kind, here in present.items() if here]
        if self.kind is not None:
            needs = {Kind.CODE: "function_code", Kind.API: "api_url", Kind.REGISTERED: "task_name"}[self.kind]
            if not present[self.kind]:
                raise InvalidSpec(needs, f"a {self.kind.value} task needs {needs}")
            others = [k for k in given if k is not self.kind]
            if others:
                extra = {Kind.CODE: "function_code", Kind.API: "api_url", Kind.REGISTERED: "task_name"}[others[0]]
                raise InvalidSpec(extra, f"a {self.kind.value} task does not take {extra}")
            return self.kind
        if not given:
            raise InvalidSpec(
                "function_code",
                "say what to run: function_code + function_name (code task), api_url (API task) "
                "or task_name (registered Celery task)",
            )
        if len(given) > 1:
            raise InvalidSpec("kind", "give only one of function_code, api_url and task_name")
        return given[0]

    def with_overrides(self, overrides: dict[str, Any] | None) -> TaskSpec:
        """The spec one run executes: its ``args``/``kwargs`` or request body replaced by the run's
        overrides (:func:`check_overrides` checked them). A body given as ``data`` or ``json`` replaces
        the spec's body, whichever field held it."""
        if not overrides:
            return self
        update: dict[str, Any] = {}
        if "args" in overrides:
            update["args"] = list(overrides["args"])
        if "kwargs" in overrides:
            update["kwargs"] = dict(overrides["kwargs"])
        if "data" in overrides or "json" in overrides:
            update["data"], update["json_body"] = overrides.get("data"), overrides.get("json")
        return self.model_copy(update=update)

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON, in the seed's format, without unset optional fields (round-trips)."""
        assert self.kind is not None  # validation (``_coherent``) always infers it
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True) | {
            "name": self.name,
            "kind": self.kind.value,
            "task_type": self.task_type.value,
        }


BOUND_SETTINGS = {"timeout": "max_timeout", "max_retries": "max_retries_cap", "memory_limit_mb": "max_memory_limit_mb",
                  "output_cap": "max_output_cap", "result_cap": "max_result_cap",
                  "recursion_limit": "max_recursion_limit"}
"""The setting that bounds each limit a spec may set (``Settings.task_limit_bounds`` gives their values)."""
_UNITS = {"timeout": " seconds", "memory_limit_mb": " MiB", "output_cap": " bytes", "result_cap": " bytes",
          "recursion_limit": " nested calls"}


def parse_spec(data: Any, *, max_timeout: float | None = None, max_retries: int | None = None,
               bounds: dict[str, float] | None = None) -> TaskSpec:
    """Validate ``data`` into a ``TaskSpec`` or raise ``InvalidSpec`` naming the first bad field.

    ``bounds`` maps limit fields (``timeout``, ``max_retries``, ``memory_limit_mb``, ``output_cap``,
    ``result_cap``, ``recursion_limit``) to their configured upper bounds; ``max_timeout`` and
    ``max_retries`` are the older spelling of two of them.
    """
    if not isinstance(data, dict):
        raise InvalidSpec("", f"a task spec must be a JSON object, not {type(data).__name__}")
    try:
        _refuse_non_finite(data)
        spec = TaskSpec.model_validate(data)
    except InvalidSpec as exc:
        raise _clipped(exc) from None
    except ValidationError as exc:
        raise _clipped(_first_error(exc)) from None
    limits = dict(bounds or {})
    if max_timeout is not None:
        limits["timeout"] = max_timeout
    if max_retries is not None:
        limits["max_retries"] = max_retries
    for name, bound in limits.items():
        value = getattr(spec, name, None)
        if value is not None and bound is not None and value > bound:
            raise InvalidSpec(name, f"must be at most {bound:g}{_UNITS.get(name, '')} "
                                    f"(the configured {BOUND_SETTINGS[name]})")
    return spec


OVERRIDE_FIELDS = {
    Kind.CODE: ("args", "kwargs"),
    Kind.REGISTERED: ("args", "kwargs"),
    Kind.API: ("data", "json"),
}
"""What one run may be given instead of its task's own: arguments, or another request body."""


def _json_type(value: Any) -> str:
    """What JSON calls ``value``'s type, with an article: "an object", "a string"."""
    for kind, name in ((bool, "true or false"), (dict, "an object"), (list, "an array"), (str, "a string"),
                       ((int, float), "a number")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def check_overrides(spec: TaskSpec, overrides: Any, *, bounds: dict[str, float] | None = None) -> dict[str, Any]:
    """Validate what one run of the task ``spec`` is to be run with instead of its own arguments (code and
    registered tasks: ``args``, ``kwargs``) or request body (API tasks: ``data`` or ``json``); returns the
    overrides to store (empty: none). Refused as a spec would be (``InvalidSpec`` naming the field): the
    task with the overrides applied must be a valid spec, so sizes, depth, types and NaN are checked alike.
    """
    if not isinstance(overrides, dict):
        raise InvalidSpec("", "what to run with must be a JSON object: args and kwargs for code and registered "
                              "tasks, data or json (the request body) for API tasks")
    assert spec.kind is not None  # validation (``_coherent``) always infers it
    allowed = OVERRIDE_FIELDS[spec.kind]
    kind = {Kind.CODE: "a code task", Kind.API: "an API task", Kind.REGISTERED: "a registered task"}[spec.kind]
    for key in overrides:
        if key not in allowed:
            takes = "args and kwargs" if spec.kind is not Kind.API else "data or json (the request body)"
            known = {name for fields in OVERRIDE_FIELDS.values() for name in fields}
            why = "unknown field" if key not in known else f"not for {kind}"
            raise InvalidSpec(str(key), f"{why}: a run of {kind} can be given {takes}; "
                                        "edit the task to change anything else")
    if overrides.get("args") is not None and not isinstance(overrides["args"], list):
        raise InvalidSpec("args", f"must be a JSON array of positional arguments, such as [1, \"a\"], "
                                  f"not {_json_type(overrides['args'])}")
    if overrides.get("kwargs") is not None and not isinstance(overrides["kwargs"], dict):
        raise InvalidSpec("kwargs", f"must be a JSON object of keyword arguments, such as {{\"days\": 1}}, "
                                    f"not {_json_type(overrides['kwargs'])}")
    if overrides.get("data") is not None and overrides.get("json") is not None:
        raise InvalidSpec("data", "give the body as 'data' or as 'json', not both")
    # null args or kwargs: the task's own; a null body: none at all
    overrides = {key: value for key, value in overrides.items() if value is not None or key in ("data", "json")}
    if not overrides:
        return {}
    merged = spec.to_dict()
    if "data" in overrides or "json" in overrides:
        merged.pop("data", None)
        merged.pop("json", None)
    merged.update({key: value for key, value in overrides.items() if value is not None})
    parse_spec(merged, bounds=bounds)
    return dict(overrides)


KIND_FIELDS = {
    Kind.CODE: ("function_code", "function_name", *TASK_LIMIT_FIELDS),
    Kind.API: ("api_url", "method", "headers", "params", "data", "json"),
    Kind.REGISTERED: ("task_name", "queue"),
}
MODE_FIELDS = {Mode.IMMEDIATE: (), Mode.DELAYED: ("delay_seconds",), Mode.SCHEDULED: ("cron_expression", "timezone")}


def merge_changes(spec: TaskSpec, changes: dict[str, Any]) -> dict[str, Any]:
    """The spec an edit asks for: ``changes`` over ``spec``; a null value removes a field.

    Switching mode (``task_type``/``mode``) or kind (giving ``api_url`` to a code task, say) drops the
    old mode's or kind's fields that the changes do not restate, so an edit never has to unset them.
    """
    if "mode" in changes:
        if "task_type" in changes and changes["task_type"] != changes["mode"]:
            raise InvalidSpec("mode", f"{changes['mode']!r} contradicts task_type {changes['task_type']!r}; "
                                      "give only one of them")
        changes = {("task_type" if key == "mode" else key): value for key, value in changes.items()}
    merged = spec.to_dict()
    merged.pop("kind")
    new_mode = changes.get("task_type", merged["task_type"])
    if new_mode != merged["task_type"]:
        for name in (name for fields in MODE_FIELDS.values() for name in fields):
            merged.pop(name, None)
    new_kinds: set[str] = {kind for kind, fields in KIND_FIELDS.items() if fields[0] in changes}
    if changes.get("kind") and isinstance(changes["kind"], str):  # anything else is refused by validation
        new_kinds.add(changes["kind"])
    assert spec.kind is not None  # validation (``_coherent``) always infers it
    if new_kinds and spec.kind not in new_kinds:
        for name in KIND_FIELDS[spec.kind]:
            merged.pop(name, None)
    merged.update(changes)
    return {key: value for key, value in merged.items() if value is not None}


def _refuse_non_finite(data: dict) -> None:
    """Refuse NaN and ±Infinity anywhere in the spec: JSON has no such numbers, and storing the spec
    would silently turn them into null (or emit invalid JSON). Refuse nesting deeper than ``MAX_DEPTH``
    too. Iterative, so deep nesting cannot overflow here."""
    stack: list[tuple[tuple[str, ...], Any]] = [((str(key),), value) for key, value in reversed(data.items())]
    while stack:
        path, value = stack.pop()
        if len(path) > MAX_DEPTH:
            raise InvalidSpec(path[0], f"is nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidSpec(".".join(path), "must be a finite number (JSON has no NaN or Infinity)")
        if isinstance(value, dict):
            stack.extend(((*path, str(key)), item) for key, item in reversed(value.items()))
        elif isinstance(value, (list, tuple)):
            stack.extend(((*path, str(index)), item) for index, item in reversed(list(enumerate(value))))


MAX_REFUSAL = 300
"""Characters of a refusal's field name and message: a refusal quoting a megabyte of input helps nobody."""


def _clipped(exc: InvalidSpec) -> InvalidSpec:
    def clip(text: str) -> str:
        return text if len(text) <= MAX_REFUSAL else f"{text[:MAX_REFUSAL]}… ({len(text)} characters in all)"

    if len(exc.field) <= MAX_REFUSAL and len(exc.reason) <= MAX_REFUSAL:
        return exc
    return InvalidSpec(clip(exc.field), clip(exc.reason))


def _first_error(exc: ValidationError) -> InvalidSpec:
    error = exc.errors(include_url=False)[0]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, InvalidSpec):
        return cause
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return InvalidSpec(location, "unknown field (check its spelling)")
    if error["type"] == "missing":
        return InvalidSpec(location, "is required")
    return InvalidSpec(location, _in_plain_words(error))


_KINDS = {"string": "text", "int": "a whole number", "float": "a number", "bool": "true or false",
          "list": "a JSON array", "dict": "a JSON object"}
"""How a refusal names the kinds of value pydantic's error types (``int_type``, ``int_parsing``, ...) expect."""


def _in_plain_words(error: Any) -> str:
    """A pydantic error as a refusal a person reads ("must be a whole number, not 1.5"), not pydantic's
    wording ("Input should be a valid integer"); an error type not known here keeps pydantic's message."""
    kind, ctx, given = error["type"], error.get("ctx") or {}, error.get("input")
    shown = repr(given) if len(repr(given)) <= 40 else f"{type(given).__name__} {repr(given)[:37]}..."
    family, _, what = kind.partition("_")
    if what in ("type", "parsing") and family in _KINDS:
        return f"must be {_KINDS[family]}, not {shown}"
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"must be at least {ctx['min_length']} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters, not {len(given)}"
    if kind == "too_long":
        return f"must hold at most {ctx['max_length']} items, not {ctx.get('actual_length', '?')}"
    bounds = {"greater_than": "more than", "greater_than_equal": "at least", "less_than": "less than",
              "less_than_equal": "at most"}
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return f"must be {bounds[kind]} {limit}, not {shown}"
    if kind == "string_pattern_mismatch":
        return f"must match the pattern {ctx.get('pattern', '?')}, not {shown}"
    if kind in ("enum", "literal_error"):
        return f"must be one of {ctx.get('expected', '?')}, not {shown}"
    return str(error["msg"]).removeprefix("Value error, ")
