"""End to end: the ``taskman`` command line as a user runs it, one real subprocess per call.

Every call runs the installed console script against the session's private Redis and namespace
(``taskman_env``); the tests that need runs to happen use the ``stack`` fixture (real Celery
workers and scheduler). Each call has a timeout and every long-lived child is stopped by PID.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest

from core.http import mask_headers
from tests.conftest import IDLE_RUN, wait_for

ROOT = Path(__file__).resolve().parents[2]
CALL_TIMEOUT = 30
FAR_CRON = "0 0 1 1 *"  # once a year: nothing fires during the tests
FAR_DELAY = 30 * 24 * 3600

TASK_KEYS = {"id", "name", "kind", "mode", "state", "next_run_at", "runs", "spec"}
RUN_KEYS = {"id", "state", "attempt", "result", "error", "output", "started_at", "finished_at", "duration_ms"}


def _command() -> list[str]:
    found = shutil.which("taskman", path=str(Path(sys.executable).parent)) or shutil.which("taskman")
    return [found] if found else [sys.executable, "-m", "tui.cli"]


TASKMAN = _command()


def _env(taskman_env: dict[str, str], **overrides: str | None) -> dict[str, str]:
    env = {**os.environ, **taskman_env, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


class Cli:
    """Runs ``taskman`` with the session's environment (plus per-call overrides)."""

    def __init__(self, taskman_env: dict[str, str]) -> None:
        self.taskman_env = taskman_env

    def env(self, **overrides: str | None) -> dict[str, str]:
        return _env(self.taskman_env, **overrides)

    def __call__(self, *args: str, input: str | None = None, env: dict[str, str] | None = None,
                 timeout: float = CALL_TIMEOUT) -> subprocess.CompletedProcess:
        return subprocess.run([*TASKMAN, *args], input=input, capture_output=True, text=True, cwd=ROOT,
                              env=env or self.env(), timeout=timeout)

    def many(self, method: str, calls: list[tuple[str, ...]], **kwargs) -> list:
        """Independent calls at once (each is mostly interpreter start-up); results in call order."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda args: getattr(self, method)(*args, **kwargs), calls))

    def ok(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        done = self(*args, **kwargs)
        assert done.returncode == 0, f"taskman {' '.join(args)} → {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done

    def json(self, *args: str, **kwargs):
        return json.loads(self.ok(*args, "--json", **kwargs).stdout)

    def refused(self, *args: str, code: int = 2, **kwargs) -> str:
        """Run a call that must fail with ``code``; return its stderr (checked to be a message, not a crash)."""
        done = self(*args, **kwargs)
        assert done.returncode == code, f"taskman {' '.join(args)} → {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert done.stderr.strip(), "a refusal must say why on stderr"
        assert "Traceback" not in done.stderr, done.stderr
        return done.stderr


class InProcessCli(Cli):
    """The same calls made in this process with click's ``CliRunner`` (same environment, real Redis): for
    matrices of refusals and escaping checks, where interpreter start-up (0.3-2 s a call) is all a
    subprocess adds. The subprocess tests above and below keep the installed script itself covered."""

    def raw(self, *args: str, input: str | bytes | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """The call with its exit code, and stdout and stderr as the bytes written (a crash's traceback
        appended to stderr, as the interpreter would print it)."""
        from click.testing import CliRunner

        from tui.cli import main

        wanted = env or self.env()
        unset: dict[str, str | None] = {key: None for key in os.environ if key.startswith("TASKMAN_")
                                        and key not in wanted}
        result = CliRunner().invoke(main, list(args), input=input, env={**wanted, **unset}, catch_exceptions=True)
        stderr = result.stderr_bytes
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            stderr += "".join(traceback.format_exception(result.exception)).encode()
        return subprocess.CompletedProcess(["taskman", *args], result.exit_code, result.stdout_bytes, stderr)

    def __call__(self, *args: str, input: str | bytes | None = None, env: dict[str, str] | None = None,
                 timeout: float = CALL_TIMEOUT) -> subprocess.CompletedProcess:
        done = self.raw(*args, input=input, env=env)
        done.stdout, done.stderr = done.stdout.decode(), done.stderr.decode()
        return done

    def many(self, method: str, calls: list[tuple[str, ...]], **kwargs) -> list:
        return [getattr(self, method)(*args, **kwargs) for args in calls]


@pytest.fixture(scope="module")
def cli(taskman_env) -> Cli:
    return Cli(taskman_env)


def marker() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


def code_spec(name: str, **extra) -> dict:
    return {"name": name, "function_code": "def f(x=1):\n    return x * 2", "function_name": "f", **extra}


def is_iso_with_offset(value: str) -> bool:
    return datetime.fromisoformat(value).utcoffset() is not None


def assert_task_shape(task: dict) -> None:
    assert TASK_KEYS <= set(task), set(task)
    assert task["kind"] in ("code", "api", "registered")
    assert task["mode"] in ("immediate", "delayed", "scheduled")
    assert task["state"] in ("active", "paused", "done")
    assert task["next_run_at"] is None or is_iso_with_offset(task["next_run_at"])
    assert isinstance(task["runs"], list)
    for run in task["runs"]:
        assert RUN_KEYS <= set(run), set(run)


def show_run(cli: Cli, task_id: str, run_id: str | None = None):
    """The task's newest run (or the one with ``run_id``) once it is final, else None."""
    runs = cli.json("show", task_id)["runs"]
    candidates = runs[:1] if run_id is None else [run for run in runs if run["id"] == run_id]
    return next((run for run in candidates if run["state"] not in ("queued", "running")), None)


# -- submit ----------------------------------------------------------------------------------------


def test_submit_file_with_one_spec_prints_an_object(cli, tmp_path):
    name = marker()
    path = tmp_path / "one.json"
    path.write_text(json.dumps(code_spec(name, delay_seconds=FAR_DELAY)), encoding="utf-8")
    task = cli.json("submit", str(path))
    assert isinstance(task, dict)
    assert_task_shape(task)
    assert (task["name"], task["kind"], task["mode"], task["state"]) == (name, "code", "delayed", "active")
    assert is_iso_with_offset(task["next_run_at"])
    assert task["runs"] == []

    human = cli.ok("submit", str(path)).stdout
    assert name in human and "code" in human and "delayed" in human


def test_submit_stdin_array_prints_an_array(cli, http_server, workers):  # workers: ops.add must be registered
    name = marker()
    specs = [
        code_spec(f"{name}-code", cron_expression=FAR_CRON, timezone="Europe/Berlin"),
        {"name": f"{name}-api", "api_url": f"{http_server.base_url}/post", "method": "POST",
         "data": {"a": 1}, "delay_seconds": FAR_DELAY},
        {"name": f"{name}-reg", "task_name": "ops.add", "args": [1, 2], "task_type": "delayed",
         "delay_seconds": FAR_DELAY},
    ]
    tasks = cli.json("submit", "-", input=json.dumps(specs))
    assert isinstance(tasks, list) and len(tasks) == 3
    for task in tasks:
        assert_task_shape(task)
        assert task["state"] == "active" and task["runs"] == [] and is_iso_with_offset(task["next_run_at"])
    assert [(t["name"], t["kind"], t["mode"]) for t in tasks] == [
        (f"{name}-code", "code", "scheduled"), (f"{name}-api", "api", "delayed"),
        (f"{name}-reg", "registered", "delayed")]
    assert len({t["id"] for t in tasks}) == 3

    single = cli.json("submit", "-", input=json.dumps([code_spec(f"{name}-solo", delay_seconds=FAR_DELAY)]))
    assert isinstance(single, list) and len(single) == 1 and single[0]["name"] == f"{name}-solo"

    one = cli.json("submit", "-", input=json.dumps(code_spec(f"{name}-obj", delay_seconds=FAR_DELAY)))
    assert isinstance(one, dict) and one["name"] == f"{name}-obj"


# -- a real run through the command line -----------------------------------------------------------


@pytest.fixture(scope="module")
def finished_code_task(cli, stack):
    """An immediate code task submitted through the CLI, with its (succeeded) first run."""
    name = marker()
    spec = {"name": name, "task_type": "immediate", "function_name": "calc",
            "function_code": "def calc(n):\n    print('computing', n)\n    return 1 + 2 * n", "args": [3]}
    task = cli.json("submit", "-", input=json.dumps(spec))
    assert_task_shape(task)
    assert (task["kind"], task["mode"], task["state"], task["next_run_at"]) == ("code", "immediate", "done", None)
    assert len(task["runs"]) == 1 and task["runs"][0]["state"] in ("queued", "running", "succeeded")
    run = wait_for(lambda: show_run(cli, task["id"]), timeout=20, interval=0.2, message="the CLI task's run")
    return task, run


def test_immediate_code_task_succeeds_and_show_has_the_result(finished_code_task, cli):
    task, run = finished_code_task
    assert run["state"] == "succeeded", run
    assert run["result"] == 7
    assert run["error"] is None
    assert run["attempt"] == 1
    assert run["output"].splitlines() == ["computing 3"]
    assert is_iso_with_offset(run["started_at"]) and is_iso_with_offset(run["finished_at"])
    assert isinstance(run["duration_ms"], (int, float)) and run["duration_ms"] >= 0

    shown = cli.json("show", task["id"])
    assert_task_shape(shown)
    assert shown["id"] == task["id"] and shown["name"] == task["name"]
    human = cli.ok("show", task["id"]).stdout
    assert task["name"] in human and "succeeded" in human and "result: 7" in human


def test_logs_show_lifecycle_and_print_output(finished_code_task, cli):
    task, run = finished_code_task
    out = cli.ok("logs", task["id"]).stdout
    assert f"run {run['id']} started" in out
    assert f"run {run['id']} succeeded" in out
    assert "computing 3" in out
    lines = [json.loads(line) for line in cli.ok("logs", task["id"], "--json").stdout.splitlines()]
    assert lines and all(entry["task"] == task["id"] for entry in lines)
    assert {"info", "print"} <= {entry["level"] for entry in lines}


def test_logs_follow_prints_lines_of_a_new_run(finished_code_task, cli):
    task, first = finished_code_task
    follower = subprocess.Popen([*TASKMAN, "logs", task["id"], "-f"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT, env=cli.env(),
                                stdin=subprocess.DEVNULL, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout], daemon=True)
    reader.start()
    seen: list[str] = []

    def read_until(predicate, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                assert follower.poll() is None, f"logs -f exited: {follower.stderr.read()}"
                continue
            seen.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no matching line within {timeout}s; saw: {seen}")

    try:
        # The past comes first, then it waits for more.
        read_until(lambda line: f"run {first['id']} succeeded" in line, 15)
        queued = cli.ok("run", task["id"]).stdout
        assert queued.startswith("queued run ")
        new_run = queued.split()[-1]
        read_until(lambda line: f"run {new_run} started" in line, 20)
        read_until(lambda line: f"run {new_run} succeeded" in line, 20)
        assert follower.poll() is None, "logs -f must keep following"
    finally:
        if follower.poll() is None:
            os.killpg(follower.pid, signal.SIGTERM)
        try:
            follower.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(follower.pid, signal.SIGKILL)
            follower.wait(10)
        reader.join(5)
        follower.stdout.close()
        follower.stderr.close()


# -- refusals and exit codes -----------------------------------------------------------------------


def test_invalid_json_file_exits_2_naming_the_problem(cli, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"name": "x", "function_code": ', encoding="utf-8")
    stderr = cli.refused("submit", str(path))
    assert "broken.json" in stderr and "not valid JSON" in stderr

    stderr = cli.refused("submit", "-", input="[1, 2")
    assert "not valid JSON" in stderr


@pytest.mark.parametrize("spec, field", [
    ({"name": "x", "task_type": "delayed", "function_code": "def f():\n    return 1", "function_name": "f"},
     "delay_seconds"),
    ({"name": "x", "api_url": "http://127.0.0.1:9/", "method": "FETCH"}, "method"),
    ({"name": "x", "task_name": "ops.add", "colour": "red"}, "colour"),
], ids=["delay_seconds", "method", "unknown-field"])
def test_refused_spec_exits_2_naming_the_field(cli, spec, field):
    stderr = cli.refused("submit", "-", input=json.dumps(spec))
    assert field in stderr


def test_array_with_one_bad_spec_creates_nothing(cli):
    name = marker()
    before = cli.json("list", "--limit", "1000")
    specs = [code_spec(f"{name}-a", delay_seconds=FAR_DELAY), code_spec(f"{name}-b", delay_seconds=-5),
             code_spec(f"{name}-c", cron_expression=FAR_CRON)]
    stderr = cli.refused("submit", "-", input=json.dumps(specs))
    assert "[1]" in stderr and "delay_seconds" in stderr
    assert cli.json("list", "--name", name) == []
    assert len(cli.json("list", "--limit", "1000")) == len(before)


def test_unknown_task_id_exits_2(cli):
    commands = ["show", "stop", "pause", "delete"]
    for command, stderr in zip(commands, cli.many("refused", [(c, "no-such-task-id") for c in commands]), strict=True):
        assert "no-such-task-id" in stderr, command


def test_pause_of_an_immediate_task_is_a_conflict(cli, finished_code_task):
    task, _ = finished_code_task
    stderr = cli.refused("pause", task["id"])
    assert "immediate" in stderr or "schedule" in stderr


def test_unreachable_redis_exits_1_with_a_message(cli):
    env = cli.env(TASKMAN_REDIS_URL="redis://127.0.0.1:1/0")
    stderr = cli.refused("list", code=1, env=env)
    assert "redis" in stderr.lower()


def test_no_redis_configured_points_at_taskman_up(cli, tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    env = cli.env(TASKMAN_REDIS_URL=None, TASKMAN_DATA_DIR=str(empty))
    stderr = cli.refused("list", code=1, env=env)
    assert "taskman up" in stderr


# -- list ------------------------------------------------------------------------------------------


def test_list_filters_and_human_output(cli, http_server, workers):  # workers: ops.add must be registered
    name = marker()
    specs = [
        code_spec(f"{name}-cron", cron_expression=FAR_CRON),
        {"name": f"{name}-api", "api_url": f"{http_server.base_url}/get", "delay_seconds": FAR_DELAY},
        {"name": f"{name}-reg", "task_name": "ops.add", "args": [1, 2], "cron_expression": FAR_CRON},
    ]
    created = {t["name"]: t for t in cli.json("submit", "-", input=json.dumps(specs))}
    cli.ok("pause", created[f"{name}-reg"]["id"])

    queries = [(), ("--kind", "api"), ("--kind", "registered"), ("--mode", "scheduled"), ("--mode", "delayed"),
               ("--state", "paused"), ("--state", "active", "--kind", "code"), ("--mode", "immediate")]
    answers = cli.many("json", [("list", "--name", name, *query) for query in queries])
    answers.append(cli.json("list", "--name", name.upper()))
    for tasks in answers:
        for task in tasks:
            assert_task_shape(task)
    found = {query: {task["name"] for task in tasks} for query, tasks in zip(queries, answers, strict=False)}
    assert found[()] == set(created)
    assert found[("--kind", "api")] == {f"{name}-api"}
    assert found[("--kind", "registered")] == {f"{name}-reg"}
    assert found[("--mode", "scheduled")] == {f"{name}-cron", f"{name}-reg"}
    assert found[("--mode", "delayed")] == {f"{name}-api"}
    assert found[("--state", "paused")] == {f"{name}-reg"}
    assert found[("--state", "active", "--kind", "code")] == {f"{name}-cron"}
    assert found[("--mode", "immediate")] == set()
    assert {task["name"] for task in answers[-1]} == set(created)  # the name filter ignores case

    human = cli.ok("list", "--name", name).stdout
    assert "NAME" in human.splitlines()[0]
    for task_name, task in created.items():
        assert task_name in human and task["id"] in human


# -- actions on one task ---------------------------------------------------------------------------


def test_run_pause_resume_stop_delete_a_cron_task(cli, stack):
    task = cli.json("submit", "-", input=json.dumps(code_spec(marker(), cron_expression=FAR_CRON, args=[21])))
    task_id = task["id"]
    assert task["state"] == "active" and task["next_run_at"]

    queued = cli.ok("run", task_id).stdout
    assert queued.startswith("queued run ")
    run_id = queued.split()[-1]
    run = wait_for(lambda: show_run(cli, task_id, run_id), timeout=20, interval=0.2, message="the manual run")
    assert run["state"] == "succeeded" and run["result"] == 42

    paused = cli.json("pause", task_id)
    assert (paused["state"], paused["next_run_at"]) == ("paused", None)
    assert cli.json("show", task_id)["state"] == "paused"

    resumed = cli.json("resume", task_id)
    assert resumed["state"] == "active" and is_iso_with_offset(resumed["next_run_at"])
    assert datetime.fromisoformat(resumed["next_run_at"]) == datetime.fromisoformat(task["next_run_at"])
    assert "not paused" in cli.refused("resume", task_id)

    stopped = cli.ok("stop", task_id).stdout
    assert stopped.strip() == f"{task_id}: paused"

    assert cli.ok("delete", task_id).stdout.strip() == f"deleted {task_id}"
    assert task_id in cli.refused("show", task_id)


# -- export → submit -------------------------------------------------------------------------------


def test_export_round_trips_through_submit(cli, http_server):
    source = cli.env(TASKMAN_NAMESPACE=f"cliexp{uuid.uuid4().hex[:8]}")
    target = cli.env(TASKMAN_NAMESPACE=f"cliimp{uuid.uuid4().hex[:8]}")
    name = marker()
    specs = [
        {"name": f"{name}-cron", "description": "yearly", "function_code": "def f(a, b=2):\n    return a + b",
         "function_name": "f", "args": [1], "kwargs": {"b": 5}, "cron_expression": "30 6 1 1 *",
         "timezone": "Asia/Tokyo", "timeout": 10, "max_retries": 2, "retry_backoff": 0.5},
        {"name": f"{name}-api", "api_url": f"{http_server.base_url}/put", "method": "put",
         "headers": {"X-Token": "abc"}, "params": {"q": "1"}, "json": {"k": [1, 2]}, "delay_seconds": FAR_DELAY},
        {"name": f"{name}-reg", "task_name": "taskman.echo", "args": ["hi"], "cron_expression": FAR_CRON,
         "queue": "registered"},
    ]
    created = cli.json("submit", "-", input=json.dumps(specs), env=source)
    assert len(created) == 3

    exported_text = cli.ok("export", env=source).stdout
    exported = json.loads(exported_text)
    assert isinstance(exported, list) and len(exported) == 3
    assert all(isinstance(item, dict) and "id" not in item for item in exported)
    assert [spec["name"] for spec in exported] == [spec["name"] for spec in specs], "export keeps creation order"
    api = next(spec for spec in exported if spec["name"].endswith("-api"))
    assert api["headers"] == {"X-Token": "abc"}, "export carries secrets so that it round-trips"
    shown = next(t for t in created if t["name"].endswith("-api"))
    assert shown["spec"]["headers"] == {"X-Token": "***"}, "shown tasks mask them"
    masked = [dict(spec, headers=mask_headers(spec["headers"])) if "headers" in spec else spec for spec in exported]
    assert masked == [t["spec"] for t in created]

    recreated = cli.json("submit", "-", input=exported_text, env=target)
    assert [t["spec"] for t in recreated] == masked
    assert not {t["id"] for t in recreated} & {t["id"] for t in created}

    def specs_of(env):
        return sorted((t["spec"] for t in cli.json("list", env=env)), key=lambda s: s["name"])

    assert specs_of(target) == specs_of(source)
    assert json.loads(cli.ok("export", env=target).stdout) == exported
    assert sorted((t["name"], t["kind"], t["mode"]) for t in recreated) == sorted(
        (t["name"], t["kind"], t["mode"]) for t in created)


# -- cron ------------------------------------------------------------------------------------------


def test_cron_prints_fire_times_across_a_dst_change(cli):
    out = cli.ok("cron", "0 9 * * 1-5", "--tz", "Europe/Berlin", "--from", "2026-03-27T00:00:00+00:00",
                 "--count", "3").stdout
    assert out.splitlines() == ["2026-03-27T09:00:00+01:00", "2026-03-30T09:00:00+02:00",
                                "2026-03-31T09:00:00+02:00"]


def test_cron_with_seconds_field(cli):
    out = cli.ok("cron", "* * * * * */2", "--from", "2026-01-01T00:00:00+00:00", "--count", "2").stdout
    assert out.splitlines() == ["2026-01-01T00:00:02+00:00", "2026-01-01T00:00:04+00:00"]


@pytest.mark.parametrize("args, word", [
    (["bad"], "cron_expression"),
    (["0 9 * * *", "--tz", "Mars/Olympus"], "Mars/Olympus"),
    (["0 9 * * *", "--from", "yesterday"], "--from"),
], ids=["expression", "timezone", "from"])
def test_cron_refuses_bad_input(cli, args, word):
    assert word in cli.refused("cron", *args)


# -- registered Celery tasks -----------------------------------------------------------------------


def test_tasks_lists_registered_names(cli, stack):
    shown = cli.ok("tasks")
    human = shown.stdout
    assert "taskman.echo" in human and "ops.add" in human
    assert "code runs jailed: every wall up" in human, shown.stderr
    names = cli.json("tasks")
    assert isinstance(names, dict)
    assert {"taskman.echo", "ops.add"} <= set(names)
    assert all(isinstance(detail, dict) for detail in names.values())



def test_edit_changes_fields_with_set_and_refuses_bad_values(cli):
    created = json.loads(cli("submit", "-", "--json", input=json.dumps(
        {"name": "to-edit", "cron_expression": FAR_CRON, "function_code": "def f():\n    return 1",
         "function_name": "f"})).stdout)
    edited = cli("edit", created["id"], "--set", "cron_expression=0 12 * * *", "--set", "timeout=5", "--json")
    assert edited.returncode == 0, edited.stderr
    spec = json.loads(edited.stdout)["spec"]
    assert spec["cron_expression"] == "0 12 * * *" and spec["timeout"] == 5
    refused = cli("edit", created["id"], "--set", "timeout=-1")
    assert refused.returncode == 2 and "timeout" in refused.stderr
    assert json.loads(cli("show", created["id"], "--json").stdout)["spec"]["timeout"] == 5
    assert cli("delete", created["id"]).returncode == 0


# -- what list shows and the words it takes ---------------------------------------------------------


def test_empty_array_says_nothing_to_submit(cli):
    before = len(cli.json("list", "--limit", "1000"))
    done = cli.ok("submit", "-", input="[]")
    assert done.stdout == "" and "nothing to submit" in done.stderr
    done = cli.ok("submit", "-", "--json", input="[]\n")
    assert json.loads(done.stdout) == [] and "nothing to submit" in done.stderr
    assert len(cli.json("list", "--limit", "1000")) == before


def test_list_and_logs_show_a_running_run_as_it_runs(cli, stack):
    name = marker()
    task = cli.json("submit", "-", input=json.dumps(
        {"name": name, "cron_expression": FAR_CRON, "timeout": 60, "function_name": "f",
         "function_code": f"def f():\n    {IDLE_RUN}"}))
    run_id = cli.ok("run", task["id"]).stdout.split()[-1]
    try:
        listed = wait_for(lambda: (t := cli.json("list", "--name", name)[0])["last_run"]["state"] == "running" and t,
                          timeout=20, interval=0.2, message="the run to show as running")
        assert listed["last_run"]["id"] == run_id and is_iso_with_offset(listed["last_run"]["started_at"])
        human = cli.ok("list", "--name", name).stdout.splitlines()[1]
        assert re.search(r"running \d+(\.\d)? (ms|s)$", human), human
        assert [t["id"] for t in cli.json("list", "--name", name, "--state", "running")] == [task["id"]]
        assert [t["id"] for t in cli.json("list", "--name", name, "--last", "running")] == [task["id"]]
        assert f"run {run_id} started on" in cli.ok("logs", task["id"]).stdout
        assert cli.json("show", task["id"])["runs"][0]["state"] == "running", "the start is logged while it runs"
        assert re.search(r"running .* \d+(\.\d)? (ms|s) so far", cli.ok("show", task["id"]).stdout)
    finally:
        cli.ok("delete", task["id"])


def test_durations_read_as_people_write_them(finished_code_task, cli):
    task, run = finished_code_task
    row = next(line for line in cli.ok("list", "--name", task["name"]).stdout.splitlines() if task["id"] in line)
    assert re.search(r"succeeded \d+(\.\d)? (ms|s)$", row), row
    shown = cli.ok("show", task["id"]).stdout
    assert re.search(rf"{run['id']}  succeeded .* \d+(\.\d)? (ms|s)$", shown, re.M), shown


def test_every_list_filter_example_in_readme_works_as_written(cli, stack, http_server):
    from tests.filter_examples import cli_examples, expected, specs

    prefix = marker()
    made = {task["name"].rsplit("-", 1)[1]: task for task in cli.json(
        "submit", "-", input=json.dumps(list(specs(prefix, http_server.base_url).values())))}
    cli.ok("pause", made["cron"]["id"])
    for suffix in ("failed", "ok"):
        wait_for(lambda suffix=suffix: show_run(cli, made[suffix]["id"]), timeout=20, interval=0.2,
                 message=f"the {suffix} run to finish")
    examples = cli_examples()
    answers = cli.many("json", [("list", "--name", prefix, option, value) for option, value in examples])
    for (option, value), tasks in zip(examples, answers, strict=True):
        assert {t["name"] for t in tasks} == expected(prefix, f"{option[2:]}:{value}"), (option, value)
    for (option, value), done in zip(examples, cli.many("ok", [("list", option, value) for option, value in examples]),
                                     strict=True):
        assert all(name in done.stdout for name in expected(prefix, f"{option[2:]}:{value}")), (option, value)
    stderr = cli.refused("list", "--state", "broken")
    assert "state" in stderr and "failed" in stderr and "active" in stderr
