"""Every command-line argument refuses bad input clearly: exit 2, a message naming the argument, no traceback.

Each call runs the command line in this process (click's ``CliRunner``) with the session's environment and
Redis (no workers needed: a refusal happens before anything would run); tests/e2e/test_cli.py refuses
through the installed console script as a subprocess. Refused submits must leave the
stored tasks and the due set exactly as they were.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.test_cli import Cli, InProcessCli

MAX_BODY = 1_000_000


@pytest.fixture(scope="module")
def cli(taskman_env) -> Cli:
    return InProcessCli(taskman_env)


@pytest.fixture(scope="module")
def task_id(cli) -> str:
    """A stored task (delayed far away: it never runs) to aim the per-task commands at."""
    spec = {"name": "refusals-target", "function_code": "def f():\n    return 1", "function_name": "f",
            "delay_seconds": 30 * 24 * 3600}
    created = cli.json("submit", "-", input=json.dumps(spec))
    yield created["id"]
    cli("delete", created["id"])


# (arguments, words the message must contain); "{id}" is replaced by the stored task's id.
BAD_ARGUMENTS = {
    "list --limit 0": (["list", "--limit", "0"], ["--limit", "0"]),
    "list --limit abc": (["list", "--limit", "abc"], ["--limit", "abc"]),
    "list --limit huge": (["list", "--limit", "10000001"], ["--limit"]),
    "list --offset -1": (["list", "--offset", "-1"], ["--offset"]),
    "list --state bogus": (["list", "--state", "bogus"], ["--state", "bogus", "active"]),
    "list --kind shell": (["list", "--kind", "shell"], ["--kind", "shell", "code"]),
    "list --mode weekly": (["list", "--mode", "weekly"], ["--mode", "weekly", "scheduled"]),
    "show --runs -1": (["show", "{id}", "--runs", "-1"], ["--runs"]),
    "show --runs huge": (["show", "{id}", "--runs", "5000"], ["--runs"]),
    "show of a malformed id": (["show", "{id}:runs"], ["no task with id"]),
    "show without an id": (["show"], ["TASK_ID"]),
    "logs -n -5": (["logs", "-n", "-5"], ["--lines"]),
    "logs of an unknown task": (["logs", "no-such-task"], ["no task with id"]),
    "cron --count 0": (["cron", "* * * * *", "--count", "0"], ["--count"]),
    "cron --count huge": (["cron", "* * * * *", "--count", "1001"], ["--count"]),
    "cron --tz": (["cron", "0 9 * * *", "--tz", "Mars/Base"], ["--tz", "Mars/Base"]),
    "cron that never fires": (["cron", "0 0 30 2 *"], ["cron_expression"]),
    "edit --set without =": (["edit", "{id}", "--set", "timeout"], ["--set", "FIELD=VALUE"]),
    "edit --set bad value": (["edit", "{id}", "--set", "timeout=-1"], ["timeout"]),
    "edit --set above a bound": (["edit", "{id}", "--set", "memory_limit_mb=100000"],
                                 ["memory_limit_mb", "max_memory_limit_mb"]),
    "edit with nothing": (["edit", "{id}"], ["nothing to change"]),
    "edit of an unknown task": (["edit", "no-such-task", "--set", "timeout=5"], ["no task with id"]),
    "run of an unknown task": (["run", "no-such-task"], ["no task with id"]),
    "submit of a missing file": (["submit", "/no/such/spec.json"], ["FILE", "/no/such/spec.json"]),
    "worker --queue not a name": (["worker", "--queue", "gpu jobs"], ["--queue", "gpu jobs", "queue name"]),
    "worker --queue a broker key": (["worker", "--queue", "unacked"], ["--queue", "unacked", "broker"]),
    "worker --queue celery's": (["worker", "--queue", "celeryev.x"], ["--queue", "celeryev.x", "reserved"]),
    "worker --prefetch 0": (["worker", "--prefetch", "0"], ["--prefetch", "0"]),
    "worker --concurrency 0": (["worker", "--concurrency", "0"], ["--concurrency"]),
    "worker --loglevel": (["worker", "--loglevel", "LOUD"], ["--loglevel", "LOUD"]),
    "beat --loglevel": (["beat", "--loglevel", "LOUD"], ["--loglevel"]),
    "api --port": (["api", "--port", "70000"], ["--port"]),
    "audit -n 0": (["audit", "-n", "0"], ["--lines"]),
    "token create --role": (["token", "create", "--name", "x", "--role", "god"], ["--role", "god"]),
    "unknown option": (["list", "--colour", "red"], ["--colour"]),
}


def problems_of(case: str, done, words: list[str]) -> list[str]:
    """What is wrong with a refusal: not exit 2, a traceback, or a message missing a word."""
    found = []
    if done.returncode != 2:
        found.append(f"{case}: exit {done.returncode}, not 2")
    if "Traceback" in done.stderr or not done.stderr.strip():
        found.append(f"{case}: no clear message: {done.stderr[-300:]!r}")
    found += [f"{case}: message lacks {word!r}: {done.stderr[-300:]!r}" for word in words if word not in done.stderr]
    return found


def run_all(cli: Cli, calls: list[tuple[list[str], str | None]]) -> list:
    """Run independent calls; results in order."""
    return [cli(*args, input=text) for args, text in calls]


def test_every_argument_refuses_bad_input_naming_it(cli, task_id):
    cases = sorted(BAD_ARGUMENTS)
    results = run_all(cli, [([arg.replace("{id}", task_id) for arg in BAD_ARGUMENTS[case][0]], None)
                            for case in cases])
    problems = [problem for case, done in zip(cases, results, strict=True)
                for problem in problems_of(case, done, BAD_ARGUMENTS[case][1])]
    assert not problems, "\n".join(problems)


def task_state(cli) -> tuple:
    """The stored tasks (ids and definitions) and the due set, as the service sees them."""
    from core.config import Settings
    from core.service import Service

    values = {key.removeprefix("TASKMAN_").lower(): value for key, value in cli.taskman_env.items()}
    store = Service.from_settings(Settings(**values)).store
    ids = store.task_ids()
    return ids, [store.redis.hgetall(store.keys.task(i)) for i in ids], store.redis.zrange(store.keys.due, 0, -1,
                                                                                        withscores=True)


def code(name: str = "big", **extra) -> dict:
    return {"name": name, "function_code": "def f():\n    return 1", "function_name": "f",
            "delay_seconds": 3600, **extra}


OVERSIZED = {
    "code": ([code(function_code="#" * 100_001 + "\ndef f():\n    return 1")], ["function_code", "100000"]),
    "name": ([code(name="n" * 201)], ["name", "200"]),
    "body": ([{"name": "b", "api_url": "http://127.0.0.1:9/", "data": "x" * (MAX_BODY + 1), "delay_seconds": 60}],
             ["data", f"{MAX_BODY} bytes"]),
    "args": ([{"name": "a", "task_name": "ops.add", "args": ["x" * (MAX_BODY + 1)], "delay_seconds": 60}],
             ["args", f"{MAX_BODY} bytes"]),
    "header set": ([{"name": "h", "api_url": "http://127.0.0.1:9/", "delay_seconds": 60,
                     "headers": {f"X-H{i}": "v" for i in range(51)}}], ["headers", "at most 50 headers"]),
    "batch": ([code(name=f"b{i}") for i in range(1001)], ["1000"]),
    "memory limit": ([code(memory_limit_mb=100_000)], ["memory_limit_mb", "max_memory_limit_mb"]),
    "recursion limit": ([code(recursion_limit=100_000)], ["recursion_limit", "max_recursion_limit"]),
    "nesting": ([{"name": "n", "task_name": "ops.add", "args": json.loads("[" * 100 + "]" * 100),
                  "delay_seconds": 60}], ["args", "64 levels"]),
}


def test_oversized_and_over_limit_specs_are_refused_naming_their_limit_and_store_nothing(cli, task_id):
    """Through the command line, one of each kind of limit (tests/core/test_service_refusals.py and
    test_models.py have every field)."""
    before = task_state(cli)
    cases = sorted(OVERSIZED)
    # A good spec rides along in every batch: all or nothing means it must not be stored either.
    results = run_all(cli, [(["submit", "-"], json.dumps([code(name="rides-along"), *OVERSIZED[case][0]]))
                            for case in cases])
    problems = [problem for case, done in zip(cases, results, strict=True)
                for problem in problems_of(case, done, OVERSIZED[case][1])]
    assert not problems, "\n".join(problems)
    assert task_state(cli) == before, "nothing was half-stored"


def test_input_that_is_not_a_spec_at_all_is_refused(cli):
    deep = "[" * 100_000 + "]" * 100_000
    inputs = {"empty": ("", ["not valid JSON"]), "cut short": ("{", ["not valid JSON"]),
              "nested too deeply": (deep, ["nested too deeply"]), "a number": ("42", ["JSON object"]),
              "a string": ('"spec"', ["JSON object"]), "an array of non-objects": ("[1, 2]", ["[0]", "JSON object"])}
    results = run_all(cli, [(["submit", "-"], text) for text, _ in inputs.values()])
    problems = [problem for (case, (_, words)), done in zip(inputs.items(), results, strict=True)
                for problem in problems_of(case, done, words)]
    assert not problems, "\n".join(problems)
