"""Hostile input through the real front ends (issue 9): what an operator token, a viewer token or a task's
own output could do to the stack, one class per test, each ending with the stack shown to be still up.

- queue names never reach broker internals (REST API, operator token);
- internal task names are never registered tasks, and the registry check fails closed (REST API, CLI);
- control characters from task data never reach a terminal raw (CLI, output captured as bytes);
- secrets are masked for viewers in every view, log and run record; ``export`` is admin-only (REST API);
- the data folder and its logs are private (``taskman up``).

The console's share (markup, control characters, unexpected errors) is in ``tests/tui/test_hostile_console.py``.
"""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from core.service import Service
from tests.conftest import _process_env, wait_for
from tests.e2e.apiserver import ROOT, process_env, taskman_command
from tests.e2e.conftest import role_clients

FAR_DELAY = 30 * 24 * 3600
RAW_CONTROL = [bytes([code]) for code in [*range(0x00, 0x09), *range(0x0b, 0x20), 0x7f]] + [
    chr(code).encode() for code in range(0x80, 0xa0)] + ["\u202e".encode()]
"""Bytes that must never reach a terminal from data: C0 but newline and tab, DEL, C1 (as UTF-8), RLO."""


def marker() -> str:
    return f"hostile-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def clients(api, stack):
    yield from role_clients(api, stack.store, "h")


def refused(response: httpx.Response, field: str) -> str:
    assert response.status_code == 422, (response.status_code, response.text)
    body = response.json()
    assert body["error"] == "InvalidSpec" and body["field"] == field, body
    return body["message"]


def final_run(service: Service, task_id: str, timeout: float = 30.0):
    def done():
        runs = service.get(task_id, runs=1).runs
        return runs[0] if runs and runs[0].state.final else None

    return wait_for(done, timeout, interval=0.1, message=f"a final run of {task_id}")


def assert_stack_up(service: Service, http_server, clients=None) -> None:
    """Workers alive on every queue, the broker's own keys intact, and (with the API) health 200."""
    keys = service.store.keys
    assert service.store.redis.type(keys.celery_unacked) in ("hash", "none")
    code = service.create({"name": marker(), "function_code": "def f():\n    return 'alive'", "function_name": "f"})
    http = service.create({"name": marker(), "api_url": f"{http_server.base_url}/get"})
    registered = service.create({"name": marker(), "task_name": "taskman.echo", "args": ["alive"]})
    assert final_run(service, code.id).result == "alive"
    assert final_run(service, http.id).result["status_code"] == 200
    assert final_run(service, registered.id).result == {"args": ["alive"], "kwargs": {}}
    if clients is not None:
        health = clients["anonymous"].get("/api/health")
        assert health.status_code == 200, health.text
        assert health.json()["workers"] >= 2 and health.json()["scheduler"] is True


def cli_bytes(taskman_env, *args: str, input: bytes | None = None, **env: str) -> subprocess.CompletedProcess:
    """``taskman ARGS`` with stdout and stderr captured as bytes (not a TTY: escaping must not depend on it)."""
    return subprocess.run([*taskman_command(), *args], input=input, capture_output=True, cwd=ROOT,
                          env=process_env(taskman_env, **env), timeout=30)


def cli_bytes_here(taskman_env, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    """``cli_bytes`` made in this process (click's ``CliRunner``): the bytes the command writes, without an
    interpreter's start-up per call; the tests that use it make one call through the installed script too."""
    from tests.e2e.test_cli import InProcessCli

    return InProcessCli(taskman_env).raw(*args, input=input)


def assert_no_raw_control(data: bytes, where: str) -> None:
    text = data.replace(b"\n", b"").replace(b"\t", b"")
    found = [byte for byte in RAW_CONTROL if byte in text]
    assert not found, f"{where} carries raw control characters {found}:\n{data[:2000]!r}"


# -- 1. queue names never reach broker internals ----------------------------------------------------

BAD_QUEUES = ["unacked", "unacked_index", "unacked_mutex", "_kombu.binding.registered", "code", "http", "HTTP",
              "code@host.celery.pidbox", "reply.celery.pidbox", "celeryev.abc", "celery", "nobody-serves-this"]


def test_queue_names_never_reach_broker_internals(clients, stack, http_server):
    operator = clients["operator"]
    for queue in BAD_QUEUES:
        for path in ("/api/tasks", "/api/scheduled-tasks"):
            spec = {"name": marker(), "task_name": "taskman.sleep", "args": [0], "queue": queue}
            if path == "/api/scheduled-tasks":
                spec["cron_expression"] = "* * * * *"
            message = refused(operator.post(path, json=spec), "queue")
            assert queue in message or "pattern" in message, message
    assert "taskman's own queue" in refused(operator.post("/api/tasks", json={
        "name": marker(), "task_name": "taskman.sleep", "queue": "http"}), "queue")
    assert "serves" in refused(operator.post("/api/tasks", json={
        "name": marker(), "task_name": "taskman.sleep", "queue": "celery"}), "queue")
    batch = [{"name": marker(), "task_name": "taskman.echo", "delay_seconds": FAR_DELAY},
             {"name": marker(), "task_name": "taskman.echo", "queue": "unacked"}]
    refused(operator.post("/api/tasks", json=batch), "[1].queue")
    assert not stack.list_tasks(name=batch[0]["name"]), "a refused batch creates nothing"
    kept = operator.post("/api/tasks", json={"name": marker(), "task_name": "taskman.echo", "args": [1],
                                             "queue": "registered", "delay_seconds": FAR_DELAY})
    assert kept.status_code == 201, kept.text
    for queue in ("unacked", "http", "_kombu.binding.x"):
        refused(operator.patch(f"/api/tasks/{kept.json()['id']}", json={"queue": queue}), "queue")
    api_task = operator.post("/api/tasks", json={"name": marker(), "api_url": f"{http_server.base_url}/get",
                                                 "queue": "registered", "delay_seconds": FAR_DELAY})
    refused(api_task, "queue")
    assert stack.get(kept.json()["id"]).spec.queue == "registered"
    prefix = stack.store.keys.celery_prefix
    assert stack.store.redis.type(prefix + "unacked") in ("hash", "none")
    assert stack.store.redis.type(prefix + "unacked_index") in ("zset", "none")
    stack.delete(kept.json()["id"])
    assert_stack_up(stack, http_server, clients)


# -- 2. internal task names are never registered tasks --------------------------------------------

INTERNAL_NAMES = ["taskman.code", "taskman.http", "celery.backend_cleanup", "celery.chord_unlock",
                  "celery.accumulate", "Celery.Map"]


def test_internal_task_names_are_never_registered_tasks(clients, stack, http_server):
    admin_task = stack.create({"name": marker(), "function_code": "def f():\n    return 'admin only'",
                               "function_name": "f", "delay_seconds": FAR_DELAY})
    operator = clients["operator"]
    for name in INTERNAL_NAMES:
        attack = {"name": marker(), "task_name": name, "args": [uuid.uuid4().hex[:16], admin_task.id]}
        assert name in refused(operator.post("/api/tasks", json=attack), "task_name")
        attack["cron_expression"] = "* * * * *"
        refused(operator.post("/api/scheduled-tasks", json=attack), "task_name")
    echo = operator.post("/api/tasks", json={"name": marker(), "task_name": "taskman.echo",
                                             "delay_seconds": FAR_DELAY}).json()
    refused(operator.patch(f"/api/tasks/{echo['id']}", json={"task_name": "taskman.code"}), "task_name")
    time.sleep(1.0)
    assert stack.get(admin_task.id).runs == [], "the admin's code task never ran"
    stack.delete(admin_task.id)
    stack.delete(echo["id"])
    assert_stack_up(stack, http_server, clients)


def test_registry_check_fails_closed_and_ignores_a_poisoned_registry(taskman_env, settings, stack, http_server):
    """A namespace no worker has reported in: only the built-ins are known. Then a registry that claims
    internal names and broker keys as queues: still refused. Through the command line."""
    namespace = f"{settings.namespace}-fresh{uuid.uuid4().hex[:6]}"
    fresh = Service.from_settings(settings.replace(namespace=namespace))
    try:
        def submit(spec: dict) -> subprocess.CompletedProcess:
            return cli_bytes(taskman_env, "submit", "-", "--json", input=json.dumps(spec).encode(),
                             TASKMAN_NAMESPACE=namespace)

        unknown = submit({"name": "x", "task_name": "ops.add", "args": [1, 2]})
        assert unknown.returncode == 2 and b"task_name" in unknown.stderr and b"no worker" in unknown.stderr
        builtin = submit({"name": "x", "task_name": "taskman.echo", "delay_seconds": FAR_DELAY})
        assert builtin.returncode == 0, builtin.stderr
        fresh.store.record_registered(["taskman.code", "taskman.http", "celery.backend_cleanup", "ops.add"],
                                      "poisoned@host", ["code", "http", "registered", "unacked", "reports"])
        for spec, field in (({"task_name": "taskman.code", "args": ["r", "t"]}, b"task_name"),
                            ({"task_name": "celery.backend_cleanup"}, b"task_name"),
                            ({"task_name": "ops.add", "queue": "unacked"}, b"queue"),
                            ({"task_name": "ops.add", "queue": "code"}, b"queue"),
                            ({"task_name": "ops.add", "queue": "elsewhere"}, b"queue")):
            done = submit({"name": "x", **spec})
            assert done.returncode == 2 and done.stderr.startswith(b"error: " + field), (spec, done.stderr)
            assert b"Traceback" not in done.stderr
        assert submit({"name": "x", "task_name": "ops.add", "queue": "reports",
                       "delay_seconds": FAR_DELAY}).returncode == 0, "a queue a worker serves is fine"
        assert fresh.store.count_tasks() == 2
    finally:
        leftovers = fresh.store.redis.keys(fresh.store.keys.namespace + ":*")
        if leftovers:
            fresh.store.redis.delete(*leftovers)
    assert_stack_up(stack, http_server)


# -- 4. control characters never reach a terminal raw ----------------------------------------------

ESCAPES = ("\\x1b]52;c;cm0gLXJmIH4=\\x07 \\x1b]0;owned\\x07 \\x1b[2J \\x9b2J "
           "\\x1b]8;;http://127.0.0.1:9/\\x07link\\x1b]8;;\\x07 \\x7f")
HOSTILE_CODE = f'''def f():
    print("{ESCAPES}")
    print("ok\\rforged\\u202eevil")
    return "{ESCAPES}"
'''
FAILING_CODE = '''def f():
    print("\\x1b]0;title\\x07 before")
    raise ValueError("\\x1b[31mred\\x1b[0m\\n12:00:00.000 forged-line info run succeeded")
'''


def test_control_characters_from_task_data_are_made_visible_in_the_cli(taskman_env, stack, http_server, clients):
    prefix = marker()
    loud = stack.create({"name": f"\u202e{prefix}-loud", "function_code": HOSTILE_CODE, "function_name": "f"})
    failing = stack.create({"name": f"{prefix}-fails", "function_code": FAILING_CODE, "function_name": "f"})
    echoed = stack.create({"name": f"{prefix}-echo", "api_url": f"{http_server.base_url}/get?q=%1B%5D0%3Bt%07%C2%9B"})
    assert final_run(stack, loud.id).state.value == "succeeded"
    assert final_run(stack, failing.id).state.value == "failed"
    assert final_run(stack, echoed.id).result["body"]["args"]["q"] == "\x1b]0;t\x07\x9b"

    for task in (loud, failing, echoed):
        for args in (("show", task.id), ("logs", task.id, "-n", "200"), ("show", task.id, "--json"),
                     ("logs", task.id, "--json")):
            done = cli_bytes_here(taskman_env, *args)
            assert done.returncode == 0, done.stderr
            assert_no_raw_control(done.stdout, f"taskman {' '.join(args)}")
            assert_no_raw_control(done.stderr, f"taskman {' '.join(args)} (stderr)")
            if "--json" in args and args[0] == "show":
                shown = json.loads(done.stdout)
                if task is loud:
                    assert shown["runs"][0]["result"].startswith("\x1b]52;c;"), "--json keeps the value"
    shown = cli_bytes(taskman_env, "show", loud.id).stdout  # the installed script itself
    assert b"\\x1b]52;c;cm0gLXJmIH4=\\x07" in shown and b"\\x9b2J" in shown and b"\\u202e" in shown
    logs = cli_bytes_here(taskman_env, "logs", failing.id, "-n", "200").stdout
    assert b"\\x1b]0;title\\x07 before" in logs
    assert not any(line.startswith(b"12:00:00.000") for line in logs.splitlines()), "no forged log line"
    assert b"\\n12:00:00.000 forged-line" in logs
    listed = cli_bytes_here(taskman_env, "list", "--name", prefix).stdout
    assert_no_raw_control(listed, "taskman list")
    assert b"\\u202e" in listed
    for task in (loud, failing, echoed):  # the REST API too: curl'ed into a terminal, it must not drive it
        for path in (f"/api/tasks/{task.id}", f"/api/tasks/{task.id}/runs"):
            answer = clients["viewer"].get(path)
            assert answer.status_code == 200
            assert_no_raw_control(answer.content, f"GET {path}")
    assert clients["viewer"].get(f"/api/tasks/{loud.id}").json()["runs"][0]["result"].startswith("\x1b]52;c;")

    for field, value in (("name", "title\x1b]0;owned\x07"), ("name", "a\x9bb"), ("name", "tab\there"),
                         ("description", "clip \x1b]52;c;eA==\x07"), ("description", "del\x7f"),
                         ("function_code", "def f():\n    return '\x1b[2J'\n")):
        spec = {"name": "ok", "function_code": "def f():\n    return 1", "function_name": "f", field: value}
        done = cli_bytes_here(taskman_env, "submit", "-", input=json.dumps(spec).encode())
        assert done.returncode == 2 and done.stderr.startswith(f"error: {field}:".encode()), (field, done.stderr)
        assert_no_raw_control(done.stderr, "a refusal")
    for task in (loud, failing, echoed):
        stack.delete(task.id)
    assert_stack_up(stack, http_server)


# -- 5. secrets shown to viewers ---------------------------------------------------------------------

SECRETS = ["SECRET-URL-0001", "SECRET-PARAM-0002", "SECRET-BODY-0003", "SECRET-BODY-0004", "SECRET-BODY-0005",
           "SECRET-HEADER-0006", "SECRET-FORM-0007"]


def test_viewers_never_see_secrets_and_only_admins_export_them(clients, stack, http_server):
    operator, viewer, admin = clients["operator"], clients["viewer"], clients["admin"]
    name = marker()
    spec = {"name": name, "method": "POST",
            "api_url": f"{http_server.base_url}/post?client_id=public&access_token={SECRETS[0]}",
            "params": {"api_key": SECRETS[1], "page": "2"},
            "json": {"client_secret": SECRETS[2], "nested": {"password": SECRETS[3], "keep": "visible"},
                     "list": [{"token": SECRETS[4]}, "plain"]},
            "headers": {"Authorization": f"Bearer {SECRETS[5]}", "X-Trace": "t-1"}}
    form = {"name": f"{name}-form", "method": "POST", "api_url": f"{http_server.base_url}/post",
            "data": f"user=bob&password={SECRETS[6]}"}
    created = operator.post("/api/tasks", json=[spec, form])
    assert created.status_code == 201, created.text
    task_id, form_id = (task["id"] for task in created.json())
    assert not any(secret in created.text for secret in SECRETS)
    run = final_run(stack, task_id)
    assert run.state.value == "succeeded", run.error
    final_run(stack, form_id)  # (the test server only answers JSON bodies; the form's run may fail: no matter)
    sent = [request for request in http_server.requests if request["query"].get("client_id") == "public"][-1]
    assert sent["query"]["api_key"] == SECRETS[1] and SECRETS[2] in sent["body"], "the real secrets were sent"

    seen = [viewer.get(f"/api/tasks/{task_id}"), viewer.get(f"/api/tasks/{form_id}"),
            viewer.get("/api/tasks", params={"name": name}), viewer.get("/api/scheduled-tasks"),
            viewer.get(f"/api/tasks/{task_id}/runs"), viewer.get(f"/api/runs/{run.id}"),
            viewer.get(f"/api/tasks/{form_id}/runs"), admin.get("/api/audit", params={"limit": 50})]
    for response in seen:
        assert response.status_code == 200, response.text
        leaked = [secret for secret in SECRETS if secret in response.text]
        assert not leaked, f"{response.request.url} shows {leaked}"
    shown = seen[0].json()["spec"]
    assert shown["params"] == {"api_key": "***", "page": "2"}
    assert shown["json"] == {"client_secret": "***", "nested": {"password": "***", "keep": "visible"},
                             "list": [{"token": "***"}, "plain"]}
    assert shown["headers"] == {"Authorization": "Bearer ***", "X-Trace": "t-1"}
    assert "access_token=***" in shown["api_url"] and "client_id=public" in shown["api_url"]
    assert seen[1].json()["spec"]["data"] == "user=bob&password=***"
    echoed = seen[5].json()["result"]["body"]["json"]
    assert echoed["client_secret"] == "***" and echoed["nested"]["keep"] == "visible"
    logs = [json.dumps(entry) for _, entry in stack.store.stream_tail("logs", 5000)
            if entry.get("task") in (task_id, form_id)]
    assert logs and not any(secret in line for line in logs for secret in SECRETS)

    for client, status in ((viewer, 403), (operator, 403), (admin, 200)):
        exported = client.get("/api/export")
        assert exported.status_code == status, exported.text
    exported = {item["name"]: item for item in admin.get("/api/export").json()}
    assert exported[name]["params"]["api_key"] == SECRETS[1]
    assert exported[name]["json"]["nested"]["password"] == SECRETS[3]
    assert exported[f"{name}-form"]["data"].endswith(SECRETS[6])

    # An operator edits from what a viewer sees: the masked values sent back keep the stored secrets.
    edited = dict(shown, json={**shown["json"], "nested": {"password": "***", "keep": "changed"}})
    edited.pop("kind", None)
    patched = operator.patch(f"/api/tasks/{task_id}", json=edited)
    assert patched.status_code == 200, patched.text
    stored = stack.get(task_id).spec
    assert stored.params["api_key"] == SECRETS[1] and stored.json_body["nested"] == {"password": SECRETS[3],
                                                                                        "keep": "changed"}
    assert stored.headers["Authorization"] == f"Bearer {SECRETS[5]}" and SECRETS[0] in stored.api_url
    assert operator.post(f"/api/tasks/{task_id}/run").status_code == 202
    wait_for(lambda: stack.get(task_id, runs=1).runs[0].state.final, 30, message="the edited task's run")
    again = [request for request in http_server.requests if request["query"].get("client_id") == "public"][-1]
    assert again["query"]["access_token"] == SECRETS[0] and json.loads(again["body"])["nested"] == {
        "password": SECRETS[3], "keep": "changed"}
    for task in (task_id, form_id):
        stack.delete(task)
    assert_stack_up(stack, http_server, clients)


# -- 6. the data folder is private ----------------------------------------------------------------


def _modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_the_data_folder_and_its_logs_are_private(tmp_path):
    data = tmp_path / "xdg" / "share" / "taskman"
    env = _process_env({"TASKMAN_DATA_DIR": str(data), "TASKMAN_NAMESPACE": "private"})
    env.pop("TASKMAN_REDIS_URL", None)

    def up_and_check() -> dict[str, int]:
        up = subprocess.Popen([*taskman_command(), "up", "--no-console"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for((data / "redis.json").exists, timeout=30, message="the address file")
            logs = [data / "logs" / f"{name}.log" for name in ("worker-code", "worker-http", "beat")]
            wait_for(lambda: all(log.exists() for log in logs), timeout=30, message="the logs")
            wait_for(lambda: b"ready" in (data / "logs" / "worker-code.log").read_bytes(), timeout=60,
                     message="a worker to start (and write its log)")
            wait_for(lambda: any((data / "redis" / "appendonlydir").glob("*.aof")), timeout=30, message="the AOF")
            done = subprocess.run([*taskman_command(), "submit", "-"], input=json.dumps(
                {"name": "private", "function_code": "def f():\n    return 1", "function_name": "f"}),
                capture_output=True, text=True, cwd=ROOT, env=env, timeout=30)
            assert done.returncode == 0, done.stderr
            return _modes(data)
        finally:
            up.send_signal(signal.SIGTERM)
            assert up.wait(60) == 0

    def assert_private(modes: dict[str, int]) -> None:
        wide = {path: oct(mode) for path, mode in modes.items()
                if mode & 0o077 or (path != "." and (data / path).is_file() and mode != 0o600)}
        assert not wide, f"readable by others: {wide}"
        assert modes["."] == 0o700 and modes["logs"] == 0o700 and modes["redis"] == 0o700

    first = up_and_check()
    assert_private(first)
    assert {"redis.json", "logs/worker-code.log", "redis/redis.log", "redis/appendonlydir"} <= set(first)
    for parent in (data.parent, data.parent.parent):
        assert stat.S_IMODE(parent.stat().st_mode) == 0o700, "the folders taskman created for it are private too"

    # An install from before: everything 0755/0644. The next `up` tightens it.
    for path in [data, *data.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    assert_private(up_and_check())
