"""Run once with other arguments: a run carries its own args/kwargs or request body; the task keeps its own.

Real workers run each case (code, registered, API), through the service and the command line. The
REST API's side is in test_api.py's neighbour, tests/e2e/test_api_run_overrides.py.
"""

from __future__ import annotations

import json
import time

import pytest

from core.errors import InvalidSpec
from core.models import RunState
from tests.conftest import wait_for
from tests.e2e.test_cli import Cli

pytestmark = pytest.mark.usefixtures("stack")
FAR_CRON = "0 0 1 1 *"


def unique(prefix: str) -> str:
    return f"{prefix}-{time.time_ns() % 10**9}"


def final(service, run_id: str, timeout: float = 20.0):
    return wait_for(lambda: (run := service.get_run(run_id)).state.final and run, timeout,
                    message=f"run {run_id} to end")


def code_task(service, **extra):
    return service.create({"name": unique("with-args"), "cron_expression": FAR_CRON, "function_name": "f",
                           "function_code": "def f(x=1, y=0):\n    return {'x': x, 'y': y}", "args": [2], **extra})


@pytest.fixture(scope="module")
def cli(taskman_env) -> Cli:
    return Cli(taskman_env)


def test_a_code_run_takes_other_args_and_kwargs_and_the_task_keeps_its_own(stack):
    task = code_task(stack)
    run = stack.run_now(task.id, {"args": [5], "kwargs": {"y": 7}})
    assert run.overrides == {"args": [5], "kwargs": {"y": 7}}
    assert final(stack, run.id).result == {"x": 5, "y": 7}
    assert stack.get_run(run.id).to_dict()["overrides"] == {"args": [5], "kwargs": {"y": 7}}
    assert stack.get(task.id).spec.args == [2], "the task is unchanged"
    plain = stack.run_now(task.id)
    assert plain.overrides is None and final(stack, plain.id).result == {"x": 2, "y": 0}
    assert stack.get_run(plain.id).to_dict()["overrides"] is None


def test_a_registered_run_takes_other_arguments(stack):
    task = stack.create({"name": unique("reg-args"), "cron_expression": FAR_CRON, "task_name": "ops.add",
                         "args": [1, 2]})
    run = stack.run_now(task.id, {"args": [20, 22]})
    assert final(stack, run.id).result == 42
    assert final(stack, stack.run_now(task.id).id).result == 3


def test_an_api_run_sends_another_body_whichever_field_held_the_task_s(stack, http_server):
    task = stack.create({"name": unique("api-body"), "cron_expression": FAR_CRON, "method": "POST",
                         "api_url": f"{http_server.base_url}/post", "json": {"from": "the task"}})
    run = stack.run_now(task.id, {"data": {"from": "this run"}})
    assert final(stack, run.id).result["body"]["json"] == {"from": "this run"}
    run = stack.run_now(task.id, {"json": {"from": "json"}})
    assert final(stack, run.id).result["body"]["json"] == {"from": "json"}
    run = stack.run_now(task.id, {"data": None})
    assert final(stack, run.id).result["body"]["json"] is None, "a null body sends none"
    assert stack.get(task.id).spec.json_body == {"from": "the task"}


def test_a_retry_keeps_the_arguments_of_the_run_it_follows(stack):
    task = code_task(stack, max_retries=1, retry_backoff=0.1,
                     function_code="def f(x=1, y=0):\n    if x == 13:\n        raise ValueError(x)\n    return x")
    first = stack.run_now(task.id, {"args": [13]})
    assert final(stack, first.id).state is RunState.RETRYING
    retry = wait_for(lambda: next((r for r in stack.runs(task.id) if r.series == first.id and r.state.final), None),
                     message="the retry to end")
    assert retry.overrides == {"args": [13]} and retry.error and "13" in retry.error


def test_secrets_in_overrides_are_masked_when_shown_and_a_mask_sent_back_keeps_the_secret(stack):
    task = stack.create({"name": unique("reg-secret"), "cron_expression": FAR_CRON, "task_name": "taskman.echo",
                         "kwargs": {"api_token": "s3cret", "n": 1}})
    run = stack.run_now(task.id, {"kwargs": {"api_token": "***", "n": 2, "password": "new-one"}})
    assert stack.get_run(run.id).overrides == {"kwargs": {"api_token": "s3cret", "n": 2, "password": "new-one"}}, \
        "the mask sent back stands for the stored secret, and the run is given it"
    # What the task echoes back is a run record too: the values of its secret-named kwargs are masked there.
    assert final(stack, run.id).result == {"args": [], "kwargs": {"api_token": "***", "n": 2, "password": "***"}}
    shown = stack.get_run(run.id).to_dict()["overrides"]
    assert shown == {"kwargs": {"api_token": "***", "n": 2, "password": "***"}}
    entry = next(e for e in stack.store.audit_entries(50) if json.loads(e[1]["detail"]).get(
        "run_id") == run.id)
    detail = json.loads(entry[1]["detail"])
    assert detail["overrides"] == shown and "new-one" not in entry[1]["detail"]


@pytest.mark.parametrize("overrides, field, words", [
    ({"function_code": "x"}, "function_code", "unknown field"),
    ({"data": {"a": 1}}, "data", "not for a code task"),
    ({"args": {"a": 1}}, "args", "JSON array"),
    ({"kwargs": [1]}, "kwargs", "JSON object"),
    ({"args": [float("nan")]}, "args.0", "finite"),
    ({"args": ["x" * 1_000_001]}, "args", "at most 1000000 bytes"),
    (["not", "an", "object"], "", "JSON object"),
])
def test_overrides_are_refused_like_spec_fields_naming_the_field_and_nothing_runs(stack, overrides, field, words):
    task = code_task(stack)
    with pytest.raises(InvalidSpec) as refused:
        stack.run_now(task.id, overrides)
    assert refused.value.field == field and words in refused.value.reason, refused.value
    assert stack.runs(task.id) == []


def test_an_api_run_may_not_get_args_nor_two_bodies(stack, http_server):
    task = stack.create({"name": unique("api-refused"), "cron_expression": FAR_CRON,
                         "api_url": f"{http_server.base_url}/get"})
    for overrides, field in (({"args": [1]}, "args"), ({"data": 1, "json": 2}, "data")):
        with pytest.raises(InvalidSpec) as refused:
            stack.run_now(task.id, overrides)
        assert refused.value.field == field
    assert stack.runs(task.id) == []


# -- the command line -------------------------------------------------------------------------------


def test_taskman_run_with_args_kwargs_and_data(cli, stack, http_server):
    task = code_task(stack)
    queued = cli.ok("run", task.id, "--args", "[3]", "--kwargs", '{"y": 4}')
    assert "with args, kwargs" in queued.stdout
    run_id = queued.stdout.split()[2]
    assert final(stack, run_id).result == {"x": 3, "y": 4}
    assert 'run with: {"args": [3], "kwargs": {"y": 4}}' in cli.ok("show", task.id).stdout
    shown = cli.json("run", task.id, "--kwargs", '{"y": 9}')
    assert shown["overrides"] == {"kwargs": {"y": 9}} and final(stack, shown["id"]).result == {"x": 2, "y": 9}
    api = stack.create({"name": unique("cli-body"), "cron_expression": FAR_CRON, "method": "POST",
                        "api_url": f"{http_server.base_url}/post", "json": {"from": "the task"}})
    run_id = cli.json("run", api.id, "--data", '{"from": "the command line"}')["id"]
    assert final(stack, run_id).result["body"]["json"] == {"from": "the command line"}
    plain = cli.ok("run", task.id)
    assert plain.stdout.startswith("queued run ") and "with" not in plain.stdout


def test_taskman_run_refuses_bad_json_and_wrong_fields_naming_them(cli, stack):
    task = code_task(stack)
    assert "--args" in cli.refused("run", task.id, "--args", "[1,")
    assert "kwargs" in cli.refused("run", task.id, "--kwargs", "[1]")
    assert "data" in cli.refused("run", task.id, "--data", "{}")
    assert stack.runs(task.id) == []
