"""core.models: every wrong shape of every spec field is refused, naming the field; the seed's examples parse."""

from __future__ import annotations

import json
import math
import re

import pytest

from core.errors import InvalidSpec
from core.models import Kind, Mode
from core.spec import MAX_CODE, MAX_DELAY, MAX_HEADERS, MAX_NAME, TaskSpec, parse_spec

CODE = {"name": "calc", "function_code": "def calc():\n    return 1 + 2 * 3", "function_name": "calc"}
API = {"name": "fetch", "api_url": "http://127.0.0.1:9/data"}
REG = {"name": "report", "task_name": "myapp.tasks.report"}


def without(spec: dict, *keys: str) -> dict:
    return {key: value for key, value in spec.items() if key not in keys}


def refused(data, field: str, fragment: str = "", **limits) -> InvalidSpec:
    with pytest.raises(InvalidSpec) as info:
        parse_spec(data, **limits)
    assert info.value.field == field, (info.value.field, info.value.reason)
    if fragment:
        assert fragment in info.value.reason, info.value.reason
    return info.value


# -- refusals, field by field -----------------------------------------------------------------------

REFUSALS = [
    # name
    ("name-int", {**CODE, "name": 5}, "name", "must be text"),
    ("name-null", {**CODE, "name": None}, "name", ""),
    ("name-list", {**CODE, "name": ["a"]}, "name", ""),
    ("name-empty", {**CODE, "name": ""}, "name", "must not be empty"),
    ("name-blank", {**CODE, "name": "   \t "}, "name", "blank"),
    ("name-too-long", {**CODE, "name": "x" * (MAX_NAME + 1)}, "name", f"at most {MAX_NAME}"),
    ("name-control-char", {**CODE, "name": "a\x07b"}, "name", "control characters"),
    ("name-missing", without(CODE, "name"), "name", "required"),
    # description
    ("description-int", {**CODE, "description": 3}, "description", "must be text"),
    ("description-too-long", {**CODE, "description": "d" * 2001}, "description", "at most 2000"),
    # task_type / mode / kind
    ("task_type-unknown", {**CODE, "task_type": "weekly"}, "task_type", "immediate"),
    ("task_type-int", {**CODE, "task_type": 1}, "task_type", ""),
    ("task_type-empty", {**CODE, "task_type": ""}, "task_type", ""),
    ("mode-unknown", {**CODE, "mode": "sometimes"}, "task_type", "immediate"),
    ("mode-contradicts-task_type", {**CODE, "mode": "delayed", "task_type": "immediate", "delay_seconds": 5},
     "mode", "contradicts"),
    ("kind-unknown", {**CODE, "kind": "shell"}, "kind", "code"),
    # unknown fields are named
    ("unknown-field", {**CODE, "colour": "red"}, "colour", "unknown field"),
    ("misspelt-field", {**CODE, "functon_name": "calc"}, "functon_name", "unknown field"),
    ("unknown-field-on-api", {**API, "body": "x"}, "body", "unknown field"),
    # function_code / function_name
    ("code-int", {**CODE, "function_code": 5}, "function_code", "must be text"),
    ("code-list", {**CODE, "function_code": ["def calc(): pass"]}, "function_code", ""),
    ("code-too-long", {**CODE, "function_code": "#" * (MAX_CODE + 1)}, "function_code", f"at most {MAX_CODE}"),
    ("code-unclosed-paren", {**CODE, "function_code": "def calc():\n    return (\n"}, "function_code", "line 2"),
    ("code-syntax-error-line-3", {**CODE, "function_code": "def calc():\n    return 1\nx = = 2\n"},
     "function_code", "line 3"),
    ("code-restricted-name", {**CODE, "function_code": "def calc():\n    return __import__('os')"},
     "function_code", "__import__"),
    ("code-without-function_name", without(CODE, "function_name"), "function_name", "name of the function"),
    ("function_name-empty", {**CODE, "function_name": ""}, "function_name", "name of the function"),
    ("function_name-int", {**CODE, "function_name": 3}, "function_name", "must be text"),
    ("function_name-not-defined", {**CODE, "function_name": "other"}, "function_name", "def other"),
    ("function_name-nested-only", {**CODE, "function_code": "def outer():\n    def calc():\n        return 1\n"
                                   "    return calc"}, "function_name", "def calc"),
    ("function_name-empty-code", {**CODE, "function_code": ""}, "function_name", "def calc"),
    ("function_name-keyword", {**CODE, "function_name": "class"}, "function_name", "identifier"),
    ("function_name-not-identifier", {**CODE, "function_name": "my func"}, "function_name", "identifier"),
    ("function_name-private", {**CODE, "function_code": "def _calc():\n    return 1", "function_name": "_calc"},
     "function_name", "'_'"),
    ("async-def", {**CODE, "function_code": "async def calc():\n    return 1"}, "function_name", "async"),
    # api_url
    ("url-ftp", {**API, "api_url": "ftp://127.0.0.1/file"}, "api_url", "ftp://"),
    ("url-no-scheme", {**API, "api_url": "127.0.0.1/data"}, "api_url", "http://"),
    ("url-no-host", {**API, "api_url": "http:///data"}, "api_url", "no host"),
    ("url-bare-scheme", {**API, "api_url": "http://"}, "api_url", "no host"),
    ("url-credentials", {**API, "api_url": "http://user:secret@127.0.0.1:9/data"}, "api_url", "credentials"),
    ("url-user-only", {**API, "api_url": "http://user@127.0.0.1:9/data"}, "api_url", "credentials"),
    ("url-empty", {**API, "api_url": ""}, "api_url", "empty"),
    ("url-blank", {**API, "api_url": "   "}, "api_url", "empty"),
    ("url-int", {**API, "api_url": 80}, "api_url", "must be text"),
    ("url-space", {**API, "api_url": "http://127.0.0.1:9/a b"}, "api_url", "spaces"),
    ("url-newline", {**API, "api_url": "http://127.0.0.1:9/a\nb"}, "api_url", "control"),
    ("url-too-long", {**API, "api_url": "http://127.0.0.1:9/" + "a" * 10_000}, "api_url", "at most"),
    ("url-bad-port", {**API, "api_url": "http://127.0.0.1:99999/"}, "api_url", "port"),
    # method
    ("method-unknown", {**API, "method": "FETCH"}, "method", "must be one of"),
    ("method-int", {**API, "method": 1}, "method", "must be text"),
    ("method-empty", {**API, "method": ""}, "method", "must be one of"),
    # headers
    ("headers-list", {**API, "headers": ["X-A: b"]}, "headers", "JSON object"),
    ("headers-string", {**API, "headers": "X-A: b"}, "headers", "JSON object"),
    ("headers-int-value", {**API, "headers": {"X-A": 1}}, "headers.X-A", "must be text"),
    ("headers-null-value", {**API, "headers": {"X-A": None}}, "headers.X-A", "must be text"),
    ("headers-too-many", {**API, "headers": {f"X-H{i}": "v" for i in range(MAX_HEADERS + 1)}}, "headers",
     f"at most {MAX_HEADERS}"),
    ("headers-newline-in-value", {**API, "headers": {"X-A": "a\nInjected: yes"}}, "headers", "one line"),
    ("headers-cr-in-value", {**API, "headers": {"X-A": "a\rb"}}, "headers", "one line"),
    ("headers-value-too-long", {**API, "headers": {"X-A": "v" * 8193}}, "headers", "8192"),
    ("headers-bad-name", {**API, "headers": {"X A": "v"}}, "headers", "not a valid header name"),
    ("headers-empty-name", {**API, "headers": {"": "v"}}, "headers", "not a valid header name"),
    # params, body
    ("params-list", {**API, "params": ["a"]}, "params", "JSON object"),
    ("params-nested", {**API, "params": {"a": [1]}}, "params.a.str", ""),
    ("data-and-json", {**API, "method": "POST", "data": {"a": 1}, "json": {"b": 2}}, "data", "not both"),
    # delay_seconds
    ("delayed-without-delay", {**CODE, "task_type": "delayed"}, "delay_seconds", "needs delay_seconds"),
    ("delay-on-immediate", {**CODE, "task_type": "immediate", "delay_seconds": 5}, "delay_seconds",
     "'immediate'"),
    ("delay-on-scheduled", {**CODE, "task_type": "scheduled", "cron_expression": "* * * * *", "delay_seconds": 5},
     "delay_seconds", "'scheduled'"),
    ("delay-negative", {**CODE, "delay_seconds": -1}, "delay_seconds", "at least 0"),
    ("delay-negative-typed", {**CODE, "task_type": "delayed", "delay_seconds": -0.5}, "delay_seconds", ""),
    ("delay-too-long", {**CODE, "delay_seconds": MAX_DELAY + 1}, "delay_seconds", str(MAX_DELAY)),
    ("delay-string", {**CODE, "delay_seconds": "soon"}, "delay_seconds", "must be a number"),
    ("delay-list", {**CODE, "delay_seconds": [5]}, "delay_seconds", ""),
    ("delay-nan", {**CODE, "delay_seconds": float("nan")}, "delay_seconds", "finite"),
    ("delay-inf", {**CODE, "delay_seconds": float("inf")}, "delay_seconds", "finite"),
    # cron_expression / timezone
    ("scheduled-without-cron", {**CODE, "task_type": "scheduled"}, "cron_expression", "needs a cron"),
    ("scheduled-empty-cron", {**CODE, "task_type": "scheduled", "cron_expression": ""}, "cron_expression", ""),
    ("cron-on-immediate", {**CODE, "task_type": "immediate", "cron_expression": "* * * * *"}, "cron_expression",
     "'immediate'"),
    ("cron-on-delayed", {**CODE, "task_type": "delayed", "delay_seconds": 5, "cron_expression": "* * * * *"},
     "cron_expression", "'delayed'"),
    ("cron-three-fields", {**CODE, "cron_expression": "* * *"}, "cron_expression", "3 fields"),
    ("cron-seven-fields", {**CODE, "cron_expression": "* * * * * * *"}, "cron_expression", "7 fields"),
    ("cron-minute-61", {**CODE, "cron_expression": "61 * * * *"}, "cron_expression", "minute"),
    ("cron-hour-24", {**CODE, "cron_expression": "0 24 * * *"}, "cron_expression", "hour"),
    ("cron-month-13", {**CODE, "cron_expression": "0 0 1 13 *"}, "cron_expression", "month"),
    ("cron-words", {**CODE, "cron_expression": "a b c d e"}, "cron_expression", "minute"),
    ("cron-blank", {**CODE, "cron_expression": "   "}, "cron_expression", ""),
    ("cron-int", {**CODE, "cron_expression": 5}, "cron_expression", "must be text"),
    ("cron-never-fires", {**CODE, "cron_expression": "0 0 30 2 *"}, "cron_expression", "never fires"),
    ("cron-31-april", {**CODE, "cron_expression": "0 0 31 4 *"}, "cron_expression", "never fires"),
    ("timezone-unknown-scheduled", {**CODE, "cron_expression": "* * * * *", "timezone": "Mars/Olympus"},
     "timezone", "Mars/Olympus"),
    ("timezone-unknown-immediate", {**CODE, "timezone": "Nowhere/Town"}, "timezone", "IANA"),
    ("timezone-empty", {**CODE, "timezone": ""}, "timezone", "IANA"),
    ("timezone-path", {**CODE, "timezone": "../../etc/passwd"}, "timezone", "IANA"),
    ("timezone-int", {**CODE, "timezone": 5}, "timezone", "must be text"),
    # timeout, retries
    ("timeout-zero", {**API, "timeout": 0}, "timeout", "more than 0"),
    ("timeout-negative", {**API, "timeout": -5}, "timeout", "more than 0"),
    ("timeout-string", {**API, "timeout": "long"}, "timeout", "must be a number"),
    ("timeout-nan", {**API, "timeout": float("nan")}, "timeout", "finite"),
    ("timeout-inf", {**API, "timeout": float("inf")}, "timeout", "finite"),
    ("timeout-minus-inf", {**API, "timeout": float("-inf")}, "timeout", "finite"),
    ("max_retries-negative", {**API, "max_retries": -1}, "max_retries", "at least 0"),
    ("max_retries-fraction", {**API, "max_retries": 1.5}, "max_retries", "whole number"),
    ("max_retries-string", {**API, "max_retries": "many"}, "max_retries", "whole number"),
    ("retry_backoff-negative", {**API, "retry_backoff": -1}, "retry_backoff", ""),
    ("retry_backoff-too-long", {**API, "retry_backoff": 86_401}, "retry_backoff", "86400"),
    ("retry_backoff-nan", {**API, "retry_backoff": float("nan")}, "retry_backoff", "finite"),
    # non-finite numbers nested in free-form fields are named by their path
    ("args-nan", {**REG, "args": [1, float("nan")]}, "args.1", "finite"),
    ("kwargs-inf", {**REG, "kwargs": {"limit": float("inf")}}, "kwargs.limit", "finite"),
    ("json-nested-nan", {**API, "method": "POST", "json": {"a": [{"b": float("nan")}]}}, "json.a.0.b", "finite"),
    ("params-inf", {**API, "params": {"page": float("-inf")}}, "params.page", "finite"),
    # registered tasks
    ("task_name-leading-digit", {**REG, "task_name": "1tasks.report"}, "task_name", "Celery task name"),
    ("task_name-space", {**REG, "task_name": "my task"}, "task_name", "Celery task name"),
    ("task_name-empty", {**REG, "task_name": ""}, "task_name", "Celery task name"),
    ("task_name-too-long", {**REG, "task_name": "t" * 201}, "task_name", "Celery task name"),
    ("task_name-slash", {**REG, "task_name": "app/tasks"}, "task_name", "Celery task name"),
    ("task_name-int", {**REG, "task_name": 5}, "task_name", "must be text"),
    ("queue-space", {**REG, "queue": "a b"}, "queue", "pattern"),
    ("queue-empty", {**REG, "queue": ""}, "queue", "pattern"),
    ("args-dict", {**REG, "args": {"a": 1}}, "args", "JSON array"),
    ("kwargs-list", {**REG, "kwargs": [1]}, "kwargs", "JSON object"),
    # what to run: none, several, or not what `kind` says
    ("nothing-to-run", {"name": "empty"}, "function_code", "say what to run"),
    ("code-and-api", {**CODE, "api_url": "http://127.0.0.1:9/"}, "kind", "only one of"),
    ("api-and-registered", {**API, "task_name": "a.b"}, "kind", "only one of"),
    ("all-three", {**CODE, "api_url": "http://127.0.0.1:9/", "task_name": "a.b"}, "kind", "only one of"),
    ("kind-api-for-code", {**CODE, "kind": "api"}, "api_url", "needs api_url"),
    ("kind-code-for-api", {**API, "kind": "code"}, "function_code", "needs function_code"),
    ("kind-registered-for-api", {**API, "kind": "registered"}, "task_name", "needs task_name"),
    ("kind-code-plus-api_url", {**CODE, "kind": "code", "api_url": "http://127.0.0.1:9/"}, "api_url",
     "does not take api_url"),
    ("kind-api-plus-task_name", {**API, "kind": "api", "task_name": "a.b"}, "task_name", "does not take task_name"),
]


@pytest.mark.parametrize(("data", "field", "fragment"), [case[1:] for case in REFUSALS],
                         ids=[case[0] for case in REFUSALS])
def test_refused_naming_the_field(data, field, fragment):
    error = refused(data, field, fragment)
    assert error.message.startswith(f"{field}: ")
    assert error.to_dict() == {"error": "InvalidSpec", "field": field, "message": error.message}
    assert not re.search(r"\b(Input|String|Value|List|Dictionary) should\b", error.reason), \
        f"pydantic's wording, not plain words: {error.reason}"


@pytest.mark.parametrize("data", [[CODE], "calc", 42, 4.2, True, None, [], ""],
                         ids=["list", "string", "int", "float", "bool", "null", "empty-list", "empty-string"])
def test_a_spec_must_be_an_object(data):
    error = refused(data, "", "JSON object")
    assert type(data).__name__ in error.reason


def test_timeout_above_the_configured_max():
    refused({**API, "timeout": 61}, "timeout", "at most 60", max_timeout=60)
    assert parse_spec({**API, "timeout": 60}, max_timeout=60).timeout == 60
    assert parse_spec({**API, "timeout": 10_000}).timeout == 10_000  # no cap given, none applied


def test_max_retries_above_the_cap():
    refused({**API, "max_retries": 21}, "max_retries", "at most 20", max_retries=20)
    assert parse_spec({**API, "max_retries": 20}, max_retries=20).max_retries == 20


BOUNDS = {"timeout": 120, "max_retries": 20, "memory_limit_mb": 1024, "output_cap": 65_536, "result_cap": 262_144,
          "recursion_limit": 1000}


@pytest.mark.parametrize(("field", "above", "words"), [
    ("memory_limit_mb", 1025, "at most 1024 MiB (the configured max_memory_limit_mb)"),
    ("output_cap", 65_537, "at most 65536 bytes (the configured max_output_cap)"),
    ("result_cap", 262_145, "at most 262144 bytes (the configured max_result_cap)"),
    ("recursion_limit", 1001, "at most 1000 nested calls (the configured max_recursion_limit)"),
    ("timeout", 121, "at most 120 seconds (the configured max_timeout)"),
    ("max_retries", 21, "at most 20 (the configured max_retries_cap)"),
])
def test_per_task_limits_above_their_bound_are_refused_naming_field_and_bound(field, above, words):
    error = refused({**CODE, field: above}, field, words, bounds=BOUNDS)
    assert error.message == f"{field}: must be {words}"
    assert getattr(parse_spec({**CODE, field: BOUNDS[field]}, bounds=BOUNDS), field) == BOUNDS[field]


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("memory_limit_mb", 31, "at least 32"),
    ("memory_limit_mb", 0, "at least 32"),
    ("memory_limit_mb", 64.0, "whole number"),
    ("output_cap", -1, "at least 0"),
    ("result_cap", "1000", "whole number"),
    ("recursion_limit", 0, "at least 1"),
    ("recursion_limit", True, "whole number"),
])
def test_per_task_limits_must_be_sensible_integers(field, value, fragment):
    refused({**CODE, field: value}, field, fragment, bounds=BOUNDS)


@pytest.mark.parametrize("field", ["memory_limit_mb", "output_cap", "result_cap", "recursion_limit"])
@pytest.mark.parametrize("spec", [API, REG], ids=["api", "registered"])
def test_only_code_tasks_take_sandbox_limits(spec, field):
    refused({**spec, field: 64}, field, "only a code task")


def test_sandbox_limits_round_trip_and_switching_kind_drops_them():
    from core.spec import merge_changes

    spec = parse_spec({**CODE, "memory_limit_mb": 64, "output_cap": 10, "result_cap": 20, "recursion_limit": 30})
    assert parse_spec(spec.to_dict()) == spec
    merged = merge_changes(spec, {"api_url": "http://127.0.0.1:9/x"})
    assert parse_spec(merged).kind is Kind.API


@pytest.mark.parametrize("field", ["data", "json", "args", "kwargs", "params"])
def test_oversized_payloads_are_refused_naming_the_limit(field):
    from core.spec import MAX_BODY

    big = "x" * MAX_BODY
    value = {"args": [big], "kwargs": {"k": big}, "params": {"k": big}}.get(field, big)
    base = REG if field in ("args", "kwargs") else API
    error = refused({**base, field: value}, field, f"at most {MAX_BODY} bytes")
    assert "bytes as JSON" in error.reason


def test_too_many_query_parameters_are_refused():
    from core.spec import MAX_PARAMS

    refused({**API, "params": {f"p{i}": i for i in range(MAX_PARAMS + 1)}}, "params", f"at most {MAX_PARAMS}")


@pytest.mark.parametrize("field", ["data", "args", "kwargs"])
def test_deeply_nested_values_are_refused_before_any_parser_recurses(field):
    from core.spec import MAX_DEPTH

    value: object = 1
    for _ in range(100_000):  # deep enough to exhaust any recursive walk
        value = [value]
    base = REG if field in ("args", "kwargs") else API
    refused({**base, field: {"k": value} if field == "kwargs" else value}, field, f"more than {MAX_DEPTH} levels")


def test_syntax_error_names_its_line():
    source = "def calc():\n    x = 1\n    y = 2\n    return x +\n"
    error = refused({**CODE, "function_code": source}, "function_code", "line 4")
    assert "line 4" in error.message


def test_the_first_bad_nested_value_is_named():
    refused({**REG, "args": [float("nan")], "kwargs": {"a": float("inf")}}, "args.0", "finite")


# -- accepted specs -------------------------------------------------------------------------------

# The seed's six examples, verbatim except for the URLs (only validation happens here).
SEED_EXAMPLES = [
    ({"name": "立即计算任务", "task_type": "immediate",
      "function_code": "def hello_world():\n    return 'Hello World!'", "function_name": "hello_world"},
     Kind.CODE, Mode.IMMEDIATE),
    ({"name": "延时计算任务", "task_type": "delayed", "delay_seconds": 60,
      "function_code": "def calculate():\n    return 1 + 2 * 3", "function_name": "calculate"},
     Kind.CODE, Mode.DELAYED),
    ({"name": "定时计算任务", "task_type": "scheduled", "cron_expression": "0 0 * * *",
      "function_code": "def daily_report():\n    return '日报生成完成'", "function_name": "daily_report"},
     Kind.CODE, Mode.SCHEDULED),
    ({"name": "立即API请求", "task_type": "immediate", "api_url": "http://127.0.0.1:9/get", "method": "GET",
      "timeout": 30},
     Kind.API, Mode.IMMEDIATE),
    ({"name": "延时API请求", "task_type": "delayed", "delay_seconds": 300, "api_url": "http://127.0.0.1:9/post",
      "method": "POST", "data": {"message": "延时请求"}, "timeout": 30},
     Kind.API, Mode.DELAYED),
    ({"name": "定时API请求", "task_type": "scheduled", "cron_expression": "*/5 * * * *",
      "api_url": "http://127.0.0.1:9/status/200", "method": "GET", "timeout": 30},
     Kind.API, Mode.SCHEDULED),
]


@pytest.mark.parametrize(("data", "kind", "mode"), SEED_EXAMPLES, ids=[example[0]["name"] for example in SEED_EXAMPLES])
def test_seed_examples_parse(data, kind, mode):
    spec = parse_spec(json.loads(json.dumps(data)), max_timeout=3600, max_retries=20)
    assert (spec.kind, spec.task_type) == (kind, mode)
    assert spec.name == data["name"]
    if kind is Kind.API:
        assert spec.api_url == data["api_url"] and spec.method == data["method"] and spec.timeout == 30
    else:
        assert spec.function_name == data["function_name"]
    if mode is Mode.DELAYED:
        assert spec.delay_seconds == data["delay_seconds"]
    if mode is Mode.SCHEDULED:
        assert spec.cron_expression == data["cron_expression"] and spec.timezone == "UTC"
    assert spec.to_dict()["kind"] == kind.value and spec.to_dict()["task_type"] == mode.value


@pytest.mark.parametrize(("data", "mode"), [
    ({**CODE, "cron_expression": "*/5 * * * *"}, Mode.SCHEDULED),
    ({**API, "delay_seconds": 30}, Mode.DELAYED),
    ({**REG, "delay_seconds": 0}, Mode.DELAYED),
    ({**REG}, Mode.IMMEDIATE),
], ids=["cron->scheduled", "delay->delayed", "zero-delay->delayed", "neither->immediate"])
def test_mode_inferred_when_task_type_absent(data, mode):
    assert parse_spec(data).task_type is mode


@pytest.mark.parametrize("mode", ["immediate", "delayed", "scheduled"])
def test_mode_is_an_alias_of_task_type(mode):
    extra = {"delayed": {"delay_seconds": 10}, "scheduled": {"cron_expression": "0 * * * *"}}.get(mode, {})
    spec = parse_spec({**CODE, "mode": mode, **extra})
    assert spec.task_type is Mode(mode)
    assert "mode" not in spec.to_dict()
    # Both given and agreeing is fine too.
    assert parse_spec({**CODE, "mode": mode, "task_type": mode, **extra}).task_type is Mode(mode)


@pytest.mark.parametrize(("data", "kind"), [
    (CODE, Kind.CODE), (API, Kind.API), (REG, Kind.REGISTERED),
    ({**CODE, "kind": "code"}, Kind.CODE), ({**API, "kind": "api"}, Kind.API),
    ({**REG, "kind": "registered"}, Kind.REGISTERED),
], ids=["code", "api", "registered", "code-explicit", "api-explicit", "registered-explicit"])
def test_kind_inferred_or_confirmed(data, kind):
    assert parse_spec(data).kind is kind


def test_normalisations():
    spec = parse_spec({**API, "name": "  padded  ", "method": "post", "json_body": {"a": 1}})
    assert spec.name == "padded" and spec.method == "POST" and spec.json_body == {"a": 1}


ROUND_TRIP = [
    *[example[0] for example in SEED_EXAMPLES],
    {**API, "task_type": "scheduled", "cron_expression": "30 2 * * 1-5", "timezone": "Europe/Berlin",
     "method": "PUT", "headers": {"Authorization": "Bearer x", "X-Trace": "1"}, "params": {"q": "a", "n": 2,
     "f": 1.5, "b": True}, "json": {"nested": [1, {"x": None}]}, "timeout": 12.5, "max_retries": 3,
     "retry_backoff": 0.5, "description": "everything"},
    {**REG, "args": [1, "two", [3], {"four": 4}], "kwargs": {"k": {"v": [None, False]}}, "queue": "reports",
     "delay_seconds": 0.25},
    {**CODE, "kind": "code", "mode": "delayed", "delay_seconds": 3600, "max_retries": 0},
]


@pytest.mark.parametrize("data", ROUND_TRIP, ids=[f"spec{i}" for i in range(len(ROUND_TRIP))])
def test_to_dict_round_trips(data):
    spec = parse_spec(data)
    as_json = json.loads(json.dumps(spec.to_dict(), allow_nan=False))
    again = parse_spec(as_json)
    assert again == spec
    assert again.to_dict() == spec.to_dict()
    assert isinstance(TaskSpec.model_validate(as_json), TaskSpec)


def test_finite_edge_values_accepted():
    spec = parse_spec({**REG, "delay_seconds": MAX_DELAY, "timeout": 1e-3, "args": [1e308, -1e308, 0.0]})
    assert spec.delay_seconds == MAX_DELAY and all(math.isfinite(value) for value in spec.args)


def test_shown_tasks_mask_secrets_but_export_keeps_them():
    from core.models import Task, TaskState

    spec = parse_spec({"name": "secret", "api_url": "http://127.0.0.1:9/x?token=abc&page=1",
                       "headers": {"Authorization": "Bearer abc", "X-Trace": "1"}})
    shown = Task.from_spec(spec, id="t1", state=TaskState.DONE, created_at=0.0, updated_at=0.0).to_dict()
    assert shown["spec"]["headers"] == {"Authorization": "Bearer ***", "X-Trace": "1"}
    assert shown["spec"]["api_url"] == "http://127.0.0.1:9/x?token=***&page=1"
    assert spec.to_dict()["headers"]["Authorization"] == "Bearer abc"


@pytest.mark.parametrize(("extra", "field"), [
    ({"method": "G" * 1_000_000}, "method"),
    ({"headers": {"X" * 1_000_000: "v"}}, "headers"),
    ({"cron_expression": "* * * * *", "timezone": "A/" * 500_000}, "timezone"),
], ids=["method", "header-name", "timezone"])
def test_a_refusal_never_quotes_megabytes_of_input(extra, field):
    from core.spec import MAX_REFUSAL

    error = refused({**API, **extra}, field)
    assert len(error.reason) < MAX_REFUSAL + 50 and "characters in all" in error.reason
