"""Service refusals against a real Redis: a refused create, batch or update leaves Redis exactly as it was.

No workers are needed. Nothing here lets a task run: refusals store nothing, and the one stored task is
delayed by an hour and deleted at the end.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from core.errors import InvalidSpec, NotFound
from core.models import Task
from core.spec import TaskSpec
from core.store import due_member_for_task

CODE = {"name": "calc", "function_code": "def calc():\n    return 1 + 2 * 3", "function_name": "calc"}
API = {"name": "fetch", "api_url": "http://127.0.0.1:9/data"}
REG = {"name": "report", "task_name": "myapp.tasks.report"}
LATER = {"task_type": "delayed", "delay_seconds": 3600}


def snapshot(service) -> tuple:
    """Every key under the namespace, the streams' lengths and the task and due counts."""
    redis, keys = service.store.redis, service.store.keys
    return (frozenset(redis.keys(keys.namespace + ":*")), redis.xlen(keys.events), redis.xlen(keys.logs),
            redis.zcard(keys.tasks), redis.zcard(keys.due))


# Each a different kind of badness; the field the refusal must name.
BAD_SPECS = [
    ("not-an-object", [CODE], ""),
    ("null", None, ""),
    ("string", "calc", ""),
    ("unknown-field", {**CODE, "colour": "red"}, "colour"),
    ("blank-name", {**CODE, "name": "  "}, "name"),
    ("code-without-function_name", {k: v for k, v in CODE.items() if k != "function_name"}, "function_name"),
    ("code-does-not-compile", {**CODE, "function_code": "def calc(:\n    pass"}, "function_code"),
    ("function-not-defined", {**CODE, "function_name": "missing"}, "function_name"),
    ("async-def", {**CODE, "function_code": "async def calc():\n    return 1"}, "function_name"),
    ("ftp-url", {**API, "api_url": "ftp://127.0.0.1/x"}, "api_url"),
    ("url-credentials", {**API, "api_url": "http://u:p@127.0.0.1:9/"}, "api_url"),
    ("bad-method", {**API, "method": "FETCH"}, "method"),
    ("header-newline", {**API, "headers": {"X-A": "a\r\nX-B: b"}}, "headers"),
    ("data-and-json", {**API, "data": "a", "json": {"b": 1}}, "data"),
    ("delayed-without-delay", {**API, "task_type": "delayed"}, "delay_seconds"),
    ("negative-delay", {**API, "delay_seconds": -5}, "delay_seconds"),
    ("scheduled-without-cron", {**API, "task_type": "scheduled"}, "cron_expression"),
    ("cron-never-fires", {**API, "cron_expression": "0 0 30 2 *"}, "cron_expression"),
    ("bad-timezone", {**API, "cron_expression": "* * * * *", "timezone": "Mars/Base"}, "timezone"),
    ("timeout-zero", {**API, "timeout": 0}, "timeout"),
    ("timeout-above-max", {**API, "timeout": 121}, "timeout"),
    ("timeout-nan", {**API, "timeout": float("nan")}, "timeout"),
    ("retries-above-cap", {**API, "max_retries": 21}, "max_retries"),
    ("bad-task_name", {**REG, "task_name": "not a name"}, "task_name"),
    ("two-kinds", {**CODE, "api_url": "http://127.0.0.1:9/"}, "kind"),
    ("kind-mismatch", {**API, "kind": "code"}, "function_code"),
    ("nan-in-args", {**REG, "args": [float("inf")]}, "args.0"),
    ("memory-above-max", {**CODE, "memory_limit_mb": 4097}, "memory_limit_mb"),
    ("output-cap-above-max", {**CODE, "output_cap": 1024 * 1024 + 1}, "output_cap"),
    ("result-cap-above-max", {**CODE, "result_cap": 1024 * 1024 + 1}, "result_cap"),
    ("recursion-above-max", {**CODE, "recursion_limit": 1001}, "recursion_limit"),
    ("limit-on-api-task", {**API, "memory_limit_mb": 64}, "memory_limit_mb"),
    ("oversized-code", {**CODE, "function_code": "#" * 100_001}, "function_code"),
    ("code-nested-too-deeply", {**CODE, "function_code": "def calc():\n    return " + "-" * 100_000 + "1"},
     "function_code"),
    ("oversized-name", {**CODE, "name": "n" * 201}, "name"),
    ("oversized-body", {**API, "data": "x" * 1_000_001}, "data"),
    ("oversized-args", {**REG, "args": ["x" * 1_000_001]}, "args"),
    ("too-many-headers", {**API, "headers": {f"X-H{i}": "v" for i in range(51)}}, "headers"),
    ("oversized-header", {**API, "headers": {"X-Big": "v" * 8193}}, "headers"),
    ("nested-too-deeply", {**REG, "kwargs": {"k": json.loads("[" * 70 + "]" * 70)}}, "kwargs"),
]


@pytest.mark.parametrize(("data", "field"), [case[1:] for case in BAD_SPECS], ids=[case[0] for case in BAD_SPECS])
def test_refused_create_stores_nothing(service, data, field):
    before = snapshot(service)
    with pytest.raises(InvalidSpec) as info:
        service.create(data)
    assert info.value.field == field, info.value.message
    assert snapshot(service) == before
    with pytest.raises(InvalidSpec) as again:
        service.validate(data)
    assert again.value.field == field


def test_refused_batch_stores_none_of_it(service):
    good = [{**CODE, **LATER, "name": "batch-a"}, {**API, **LATER, "name": "batch-b"}]
    before = snapshot(service)
    with pytest.raises(InvalidSpec) as info:
        service.create_many([*good, {**REG, **LATER, "timeout": -1}])
    assert info.value.field.startswith("[2]")
    assert info.value.field == "[2].timeout"
    assert snapshot(service) == before
    assert not [task for task in service.list_tasks(limit=1000) if task.name.startswith("batch-")]

    with pytest.raises(InvalidSpec) as info:
        service.create_many([*good, "not a spec"])
    assert info.value.field == "[2]"
    assert snapshot(service) == before


@pytest.fixture
def delayed_task(service):
    task = service.create({**CODE, **LATER, "name": "edit-me", "timeout": 30, "max_retries": 2})
    yield task
    try:
        service.delete(task.id)
    except NotFound:
        pass


BAD_CHANGES = [
    ({"timeout": -1}, "timeout"),
    ({"timeout": 10_000}, "timeout"),
    ({"function_name": "missing"}, "function_name"),
    ({"function_code": "def calc(:"}, "function_code"),
    ({"task_type": "scheduled"}, "cron_expression"),  # switching mode drops delay_seconds, so cron is missing
    ({"task_type": "scheduled", "delay_seconds": None}, "cron_expression"),
    ({"cron_expression": "* * * * *"}, "cron_expression"),
    ({"delay_seconds": -1}, "delay_seconds"),
    ({"delay_seconds": float("inf")}, "delay_seconds"),
    ({"api_url": "ftp://127.0.0.1:9/"}, "api_url"),
    ({"api_url": "http://127.0.0.1:9/", "task_name": "ops.add"}, "kind"),
    ({"kind": "api"}, "api_url"),
    ({"name": ""}, "name"),
    ({"unknown": 1}, "unknown"),
    ({"max_retries": 99}, "max_retries"),
    ({"mode": "sometimes"}, "task_type"),
    ({"mode": "scheduled", "task_type": "delayed"}, "mode"),
]


def test_refused_update_changes_nothing(service, delayed_task):
    key = service.store.keys.task(delayed_task.id)
    stored = service.store.redis.hgetall(key)
    spec = service.get(delayed_task.id).spec
    before = snapshot(service)
    for changes, field in BAD_CHANGES:
        with pytest.raises(InvalidSpec) as info:
            service.update(delayed_task.id, changes)
        assert info.value.field == field, (changes, info.value.message)
        assert service.store.redis.hgetall(key) == stored, changes
        assert snapshot(service) == before, changes
    with pytest.raises(InvalidSpec) as info:
        service.update(delayed_task.id, ["not", "a", "dict"])
    assert info.value.field == ""
    assert service.get(delayed_task.id).spec == spec
    assert snapshot(service) == before


def test_update_with_the_mode_alias(service, delayed_task):
    """``mode`` in the changes overrides the stored task_type, and the old mode's fields go."""
    task = service.update(delayed_task.id, {"mode": "scheduled", "cron_expression": "0 0 1 1 *"})
    assert task.mode.value == "scheduled" and task.spec.delay_seconds is None
    assert service.get(delayed_task.id).spec.cron_expression == "0 0 1 1 *"
    assert service.get(delayed_task.id).next_run_at > time.time() + 3600


def test_update_switching_kind_drops_the_old_kinds_fields(service, delayed_task):
    task = service.update(delayed_task.id, {"api_url": "http://127.0.0.1:9/x"})
    assert task.kind.value == "api"
    assert task.spec.function_code is None and task.spec.function_name is None


def test_update_of_a_missing_task(service):
    before = snapshot(service)
    with pytest.raises(NotFound):
        service.update("no-such-task", {"timeout": 5})
    with pytest.raises(NotFound):
        service.update(uuid.uuid4().hex, {"timeout": -1})  # existence is checked before the changes
    assert snapshot(service) == before


# -- property: arbitrary JSON is either a task or an InvalidSpec, and a refusal stores nothing -------

FIELD_NAMES = sorted({*TaskSpec.model_fields, "json", "mode"})

json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
field_keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=10))
json_values = st.recursive(json_leaves, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(field_keys, children, max_size=5)), max_leaves=10)

# Values that are right, or nearly right, for each field, so that many generated specs are valid and the
# rest fail in interesting places; any field may still get arbitrary JSON instead.
MODES = ["immediate", "delayed", "scheduled"]
PLAUSIBLE = {
    "name": st.one_of(st.text("abcXYZ 0-9_任务", min_size=1, max_size=12).filter(str.strip), st.text(max_size=12)),
    "description": st.text(max_size=30),
    "task_type": st.sampled_from([*MODES, "weekly"]),
    "mode": st.sampled_from([*MODES, "weekly"]),
    "kind": st.sampled_from(["code", "api", "registered", "shell"]),
    "function_code": st.sampled_from(["def f():\n    return 1", "def f(x=2):\n    return x * 2",
                                      "async def f():\n    return 1", "def f(:\n", "def g():\n    return 1"]),
    "function_name": st.sampled_from(["f", "g", "_f", "class", ""]),
    "api_url": st.sampled_from(["http://127.0.0.1:9/x", "https://127.0.0.1:9/y?q=1", "ftp://127.0.0.1/",
                                "http://u:p@127.0.0.1:9/", "http:///x", ""]),
    "method": st.sampled_from(["GET", "post", "DELETE", "FETCH"]),
    "headers": st.dictionaries(st.sampled_from(["X-A", "Accept", "Bad Name"]), st.text(max_size=8), max_size=3),
    "params": st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=5), st.integers(), st.booleans(),
                                                             st.floats()), max_size=3),
    "data": json_values,
    "json": json_values,
    "json_body": json_values,
    "task_name": st.sampled_from(["myapp.tasks.report", "tests.e2e.operator_tasks.add", "1bad", "a b"]),
    "queue": st.sampled_from(["reports", "a b", ""]),
    "args": st.lists(json_values, max_size=3),
    "kwargs": st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    "delay_seconds": st.one_of(st.integers(min_value=-5, max_value=7200), st.floats(min_value=-1, max_value=1e8)),
    "cron_expression": st.sampled_from(["* * * * *", "0 0 1 1 *", "@daily", "0 0 30 2 *", "61 * * * *", "* *"]),
    "timezone": st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Mars/Base", ""]),
    "timeout": st.one_of(st.floats(min_value=-1, max_value=200), st.integers(min_value=-1, max_value=200)),
    "max_retries": st.integers(min_value=-2, max_value=25),
    "retry_backoff": st.floats(min_value=-1, max_value=90_000),
    "memory_limit_mb": st.integers(min_value=-1, max_value=5000),
    "output_cap": st.integers(min_value=-1, max_value=2 * 1024 * 1024),
    "result_cap": st.integers(min_value=-1, max_value=2 * 1024 * 1024),
    "recursion_limit": st.integers(min_value=-1, max_value=1500),
}
assert set(PLAUSIBLE) == set(FIELD_NAMES)


def field_value(key: str):
    return st.one_of(PLAUSIBLE[key], PLAUSIBLE[key], PLAUSIBLE[key], json_values).map(lambda value: (key, value))


WHAT = {"code": ["function_code", "function_name"], "api": ["api_url"], "registered": ["task_name"]}
spec_like = st.builds(
    lambda name, what, extra: {"name": name, **dict(what), **dict(extra)},
    PLAUSIBLE["name"],
    st.sampled_from(sorted(WHAT)).flatmap(lambda kind: st.tuples(*(PLAUSIBLE[k].map(lambda v, k=k: (k, v))
                                                                  for k in WHAT[kind]))),
    st.lists(st.sampled_from(FIELD_NAMES).flatmap(field_value), max_size=4),
)
arbitrary_json = st.one_of(json_values, st.dictionaries(field_keys, json_values, max_size=8), spec_like, spec_like)


@pytest.fixture(scope="module")
def own_service(settings, redis_server):
    """A service in a namespace of its own: immediate tasks it creates queue Celery messages that no worker of
    the session (now or later) may pick up."""
    from core.service import Service

    own = Service.from_settings(settings.replace(namespace=f"{settings.namespace}-prop"))
    yield own
    redis = own.store.redis
    leftovers = redis.keys(own.store.keys.namespace + ":*")
    if leftovers:
        redis.delete(*leftovers)


def queue_of(spec: TaskSpec) -> str:
    return {"code": "code", "api": "http"}.get(spec.kind.value, spec.queue or "registered")


def assert_stored_whole(service, task: Task, before: tuple, queued: dict[str, int]) -> None:
    """A created task is all there: definition, index entry, and its run + Celery message (immediate) or
    its due entry (delayed, scheduled) -- and nothing else of it appeared in Redis."""
    redis, keys = service.store.redis, service.store.keys
    stored = service.get(task.id)
    assert stored.spec == task.spec and stored.state is task.state
    assert task.id in service.store.task_ids()
    own = {keys.task(task.id), keys.task_runs(task.id)} | {keys.run(run.id) for run in stored.runs}
    appeared = set(snapshot(service)[0]) - set(before[0])
    assert appeared - own <= {keys.events, keys.logs, keys.due, keys.tasks, *(k for k in appeared if ":celery" in k
                                                                          or k.endswith((":audit", ":metrics")))}
    queue = keys.celery_queue(queue_of(task.spec))
    if task.mode.value == "immediate":
        assert task.state.value == "done" and [run.state.value for run in stored.runs] == ["queued"]
        assert stored.runs[0].max_attempts == task.spec.max_retries + 1
        assert redis.llen(queue) == queued.get(queue, 0) + 1, "exactly one message sent"
        assert stored.runs[0].id in redis.lindex(queue, 0)
        assert service.store.due_score(due_member_for_task(task.id)) is None
    else:
        assert stored.runs == [] and redis.llen(queue) == queued.get(queue, 0)
        assert service.store.due_score(due_member_for_task(task.id)) == pytest.approx(stored.next_run_at)


def queue_lengths(service) -> dict[str, int]:
    keys = service.store.keys
    return {keys.celery_queue(name): service.store.redis.llen(keys.celery_queue(name))
            for name in ("code", "http", "registered", "reports")}


# Values that defeat naive validation: deep nesting, payloads just over their limits, lone surrogates.
def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


NASTY = st.sampled_from([_nested(70), _nested(5_000), "x" * 1_000_001, ["y" * 600_000, "y" * 600_000], "\ud800",
                         {"\x00": "\u202e"}, -(2 ** 80), 2 ** 64, 1e308, -0.0])
nasty_specs = st.builds(lambda base, field, value: {**base, field: value},
                        st.sampled_from([CODE, API, REG]), st.sampled_from(FIELD_NAMES), NASTY)
valid_specs = st.builds(
    lambda base, name, mode, extra: {**base, "name": name, **mode, **extra},
    st.sampled_from([CODE, API, REG, {**CODE, "memory_limit_mb": 64, "output_cap": 100, "recursion_limit": 50}]),
    st.text("abcXYZ 0-9_任务", min_size=1, max_size=12).filter(str.strip),
    st.sampled_from([{}, LATER, {"cron_expression": "0 0 1 1 *"}, {"task_type": "immediate"}]),
    st.sampled_from([{}, {"max_retries": 2}, {"timeout": 30}, {"description": "d"}]),
)
arbitrary_json = st.one_of(arbitrary_json, nasty_specs, valid_specs)


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=arbitrary_json)
def test_arbitrary_json_is_a_whole_task_or_a_refusal_that_stores_nothing(own_service, data):
    before = snapshot(own_service)
    queued = queue_lengths(own_service)
    try:
        task = own_service.create(data)
    except InvalidSpec as exc:
        assert isinstance(exc.field, str) and exc.message
        assert snapshot(own_service) == before
        assert queue_lengths(own_service) == queued
        event(f"refused: {exc.field.split('.')[0] or '(not an object)'}")
        return
    event(f"created: {task.kind.value} {task.mode.value}")
    assert isinstance(task, Task)
    assert_stored_whole(own_service, task, before, queued)
    own_service.delete(task.id)
    assert not own_service.store.redis.exists(own_service.store.keys.task(task.id))
    assert task.id not in own_service.store.task_ids()
    assert own_service.store.due_score(due_member_for_task(task.id)) is None


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.one_of(valid_specs, valid_specs, valid_specs, valid_specs, arbitrary_json), min_size=1,
                      max_size=5))
def test_a_batch_is_created_whole_or_not_at_all(own_service, batch):
    before = snapshot(own_service)
    try:
        tasks = own_service.create_many(batch)
    except InvalidSpec as exc:
        assert snapshot(own_service) == before
        assert exc.field.startswith("[") or len(batch) == 1 or exc.field == ""
        event("batch refused")
        return
    event("batch created")
    assert len(tasks) == len(batch) and len({task.id for task in tasks}) == len(tasks)
    for task in tasks:
        assert own_service.get(task.id).spec == task.spec
        own_service.delete(task.id)


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.one_of(st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=3),
                         st.lists(st.sampled_from(FIELD_NAMES).flatmap(field_value), max_size=3).map(dict),
                         json_values))
def test_an_arbitrary_edit_applies_whole_or_changes_nothing(own_service, changes):
    task = own_service.create({**CODE, **LATER, "name": "prop-edit"})
    try:
        key = own_service.store.keys.task(task.id)
        stored = own_service.store.redis.hgetall(key)
        before = snapshot(own_service)
        try:
            edited = own_service.update(task.id, changes)
        except InvalidSpec:
            assert own_service.store.redis.hgetall(key) == stored
            assert snapshot(own_service) == before
            event("edit refused")
            return
        event("edit applied")
        again = own_service.get(task.id)
        assert again.spec == edited.spec
        assert own_service.validate(again.spec.to_dict()) == again.spec, "what was stored validates again"
    finally:
        own_service.delete(task.id)


def test_list_refuses_bad_paging_naming_the_argument(service):
    for kwargs, field in (({"limit": 0}, "limit"), ({"offset": -1}, "offset"), ({"state": "bogus"}, "state"),
                          ({"kind": "shell"}, "kind"), ({"mode": "weekly"}, "mode")):
        with pytest.raises(InvalidSpec) as info:
            service.list_tasks(**kwargs)
        assert info.value.field == field


def test_malformed_ids_are_not_found_instead_of_reaching_other_keys(service, delayed_task):
    """``<id>:runs`` would address the task's run index (a sorted set) -- a Redis type error, not a refusal."""
    for bad in (f"{delayed_task.id}:runs", "", "x" * 65, "a b", "*", "é"):
        with pytest.raises(NotFound):
            service.get(bad)
        with pytest.raises(NotFound):
            service.get_run(bad)
    assert service.get(delayed_task.id).id == delayed_task.id
