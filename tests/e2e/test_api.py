"""End to end: the REST API as scripts use it — a real ``taskman api`` process on 127.0.0.1, real Redis,
real Celery workers and the real scheduler (the ``stack`` fixture), a local HTTP server for API tasks.

Every endpoint, every role boundary (401 for a missing, wrong or revoked token, 403 for a role too
low), Server-Sent Events carrying the log lines of a real run, the audit trail for changes made
through the API, the command line and the service, the Prometheus metrics moving with real runs,
and the seed's six example bodies posted as they are.
"""

from __future__ import annotations

import getpass
import json
import subprocess
import time
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core import auth
from tests.conftest import wait_for
from tests.e2e.apiserver import ROOT, process_env, taskman_command

pytestmark = pytest.mark.usefixtures("stack")

FAR_CRON = "0 0 1 1 *"
FAR_DELAY = 30 * 24 * 3600
TASK_KEYS = {"id", "name", "kind", "mode", "state", "next_run_at", "created_at", "updated_at", "last_run", "spec",
             "runs"}


@pytest.fixture(scope="module")
def tokens(stack) -> dict[str, str]:
    """One token per role, plus their names (``<role>:name``)."""
    made = {}
    for role in ("viewer", "operator", "admin"):
        name = f"t-{role}-{uuid.uuid4().hex[:6]}"
        made[role], _ = auth.create(stack.store, name, role, actor="test")
        made[f"{role}:name"] = name
    return made


@pytest.fixture(scope="module")
def clients(api, tokens):
    made = {role: httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {tokens[role]}"}, timeout=15)
            for role in ("viewer", "operator", "admin")}
    made["anonymous"] = httpx.Client(base_url=api.url, timeout=15)
    yield made
    for client in made.values():
        client.close()


def marker() -> str:
    return f"api-{uuid.uuid4().hex[:10]}"


def code_spec(name: str, **extra) -> dict:
    return {"name": name, "function_code": "def f(x=2):\n    print('computing', x)\n    return x * 21",
            "function_name": "f", **extra}


def api_spec(name: str, url: str, **extra) -> dict:
    return {"name": name, "api_url": url, "method": "GET", **extra}


def final_run(client: httpx.Client, task_id: str, timeout: float = 20.0) -> dict:
    """The task's newest run once it is final."""

    def done():
        runs = client.get(f"/api/tasks/{task_id}/runs", params={"limit": 1}).json()
        return runs[0] if runs and runs[0]["state"] not in ("queued", "running") else None

    return wait_for(done, timeout, interval=0.1, message=f"a final run of {task_id}")


def error_of(response: httpx.Response, status: int) -> dict:
    """The JSON error body of a response that must have ``status``."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) <= {"error", "field", "message"} and body["error"] and body["message"], body
    return body


def cli(taskman_env, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([*taskman_command(), *args], input=input, capture_output=True, text=True, cwd=ROOT,
                          env=process_env(taskman_env), timeout=30)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


# -- health and authentication ---------------------------------------------------------------------


def test_health_needs_no_token_and_reports_the_stack(clients):
    health = clients["anonymous"].get("/api/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["redis"] == "ok"
    assert body["workers"] >= 2 and body["scheduler"] is True
    assert body["isolation"]["ok"] is True, body["isolation"]
    assert body["data_lost_at"] is None
    assert body["isolation"]["summary"].startswith("code runs jailed: every wall up")
    assert all(report["missing"] == [] for report in body["isolation"]["workers"].values())
    assert clients["anonymous"].get("/docs").status_code == 200
    schema = clients["anonymous"].get("/openapi.json").json()
    assert {"/api/tasks", "/api/tasks/{task_id}", "/api/tasks/{task_id}/stop", "/api/scheduled-tasks",
            "/api/logs", "/metrics"} <= set(schema["paths"])
    assert "TaskSpec" in schema["components"]["schemas"]


ENDPOINTS = [("GET", "/api/tasks"), ("POST", "/api/tasks"), ("GET", "/api/tasks/x"), ("PATCH", "/api/tasks/x"),
             ("DELETE", "/api/tasks/x"), ("POST", "/api/tasks/x/stop"), ("POST", "/api/tasks/x/run"),
             ("POST", "/api/tasks/x/pause"), ("POST", "/api/tasks/x/resume"), ("GET", "/api/tasks/x/runs"),
             ("GET", "/api/runs/x"), ("POST", "/api/scheduled-tasks"), ("GET", "/api/scheduled-tasks"),
             ("GET", "/api/logs"), ("GET", "/api/registered-tasks"), ("GET", "/api/tokens"),
             ("POST", "/api/tokens"), ("DELETE", "/api/tokens/x"), ("GET", "/api/audit"), ("GET", "/metrics"),
             ("GET", "/api/metrics")]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_endpoint_but_health_refuses_a_missing_or_wrong_token(api, method, path):
    for headers in ({}, {"Authorization": "Bearer tm_not-a-real-token"}, {"Authorization": "Basic dXNlcjpwdw=="},
                    {"Authorization": "Bearer"}):
        response = httpx.request(method, f"{api.url}{path}", headers=headers, json={"name": "x"}, timeout=10)
        body = error_of(response, 401)
        assert body["error"] == "Unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_revoked_token_is_refused_at_once(api, stack):
    secret, _ = auth.create(stack.store, f"short-lived-{uuid.uuid4().hex[:6]}", "viewer")
    headers = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(f"{api.url}/api/tasks", headers=headers, params={"limit": 1}).status_code == 200
    auth.revoke(stack.store, auth.verify(stack.store, secret).name)
    assert error_of(httpx.get(f"{api.url}/api/tasks", headers=headers), 401)["message"]


def test_role_boundaries(clients, stack, http_server):
    name = marker()
    code = stack.create(code_spec(f"{name}-code", cron_expression=FAR_CRON)).id
    api_task = stack.create(api_spec(f"{name}-api", f"{http_server.base_url}/get", delay_seconds=FAR_DELAY)).id
    to_code = {"function_code": "def g():\n    return 1", "function_name": "g"}
    steps = [
        ("viewer", "GET", "/api/tasks", None, 200),
        ("viewer", "GET", f"/api/tasks/{code}", None, 200),
        ("viewer", "GET", f"/api/tasks/{code}/runs", None, 200),
        ("viewer", "GET", "/metrics", None, 200),
        ("viewer", "POST", "/api/tasks", api_spec(f"{name}-v", f"{http_server.base_url}/get",
                                                  delay_seconds=FAR_DELAY), 403),
        ("viewer", "POST", f"/api/tasks/{api_task}/stop", None, 403),
        ("viewer", "POST", f"/api/tasks/{api_task}/run", None, 403),
        ("viewer", "DELETE", f"/api/tasks/{api_task}", None, 403),
        ("viewer", "GET", "/api/tokens", None, 403),
        ("viewer", "GET", "/api/audit", None, 403),
        ("operator", "POST", "/api/tasks", code_spec(f"{name}-op-code", delay_seconds=FAR_DELAY), 403),
        ("operator", "POST", "/api/scheduled-tasks", code_spec(f"{name}-op-cron", cron_expression=FAR_CRON), 403),
        ("operator", "POST", "/api/tasks", [api_spec(f"{name}-op-1", f"{http_server.base_url}/get",
                                                     delay_seconds=FAR_DELAY),
                                            code_spec(f"{name}-op-2", delay_seconds=FAR_DELAY)], 403),
        ("operator", "PATCH", f"/api/tasks/{code}", {"name": "renamed"}, 403),
        ("operator", "PATCH", f"/api/tasks/{api_task}", to_code, 403),
        ("operator", "POST", f"/api/tasks/{code}/run", None, 403),
        ("operator", "DELETE", f"/api/tasks/{code}", None, 403),
        ("operator", "POST", f"/api/tasks/{code}/pause", None, 200),
        ("operator", "POST", f"/api/tasks/{code}/resume", None, 403),
        ("operator", "POST", f"/api/tasks/{code}/stop", None, 200),
        ("operator", "GET", "/api/tokens", None, 403),
        ("operator", "POST", "/api/tokens", {"name": f"{name}-tok", "role": "admin"}, 403),
        ("operator", "GET", "/api/audit", None, 403),
        ("operator", "PATCH", f"/api/tasks/{api_task}", {"name": f"{name}-api-renamed"}, 200),
        ("operator", "POST", f"/api/tasks/{api_task}/pause", None, 200),
        ("operator", "POST", f"/api/tasks/{api_task}/resume", None, 200),
        ("admin", "POST", f"/api/tasks/{code}/resume", None, 200),
        ("admin", "PATCH", f"/api/tasks/{code}", {"name": f"{name}-code-renamed"}, 200),
        ("admin", "GET", "/api/tokens", None, 200),
        ("admin", "GET", "/api/audit", None, 200),
        ("operator", "DELETE", f"/api/tasks/{api_task}", None, 200),
        ("admin", "DELETE", f"/api/tasks/{code}", None, 200),
    ]
    failures = []
    for role, method, path, body, status in steps:
        response = clients[role].request(method, path, json=body) if body is not None else \
            clients[role].request(method, path)
        if response.status_code != status:
            failures.append(f"{role} {method} {path} → {response.status_code} (wanted {status}): {response.text}")
        elif status == 403:
            error = response.json()
            assert error["error"] == "Forbidden" and role in error["message"], error
    assert not failures, "\n".join(failures)
    assert clients["viewer"].get("/api/tasks", params={"name": name}).json() == []


# -- tasks -----------------------------------------------------------------------------------------


def test_create_one_answers_the_same_json_as_the_command_line(clients, taskman_env):
    name = marker()
    response = clients["admin"].post("/api/tasks", json=code_spec(name, delay_seconds=FAR_DELAY))
    assert response.status_code == 201
    task = response.json()
    assert TASK_KEYS <= set(task)
    assert (task["name"], task["kind"], task["mode"], task["state"], task["runs"]) == (name, "code", "delayed",
                                                                                         "active", [])
    assert response.headers["location"] == f"/api/tasks/{task['id']}"
    fetched = clients["viewer"].get(f"/api/tasks/{task['id']}").json()
    shown = json.loads(cli(taskman_env, "show", task["id"], "--json").stdout)
    assert fetched == shown == task
    listed = clients["viewer"].get("/api/tasks", params={"name": name}).json()
    assert listed == json.loads(cli(taskman_env, "list", "--name", name, "--json").stdout) == [task]


def test_create_many_is_all_or_none(clients, http_server):
    name = marker()
    good = api_spec(f"{name}-a", f"{http_server.base_url}/get", delay_seconds=FAR_DELAY)
    bad = api_spec(f"{name}-b", f"{http_server.base_url}/get", cron_expression="61 * * * *")
    error = error_of(clients["operator"].post("/api/tasks", json=[good, bad]), 422)
    assert error["field"].startswith("[1].cron_expression"), error
    assert clients["viewer"].get("/api/tasks", params={"name": name}).json() == []
    created = clients["operator"].post("/api/tasks", json=[good, {**good, "name": f"{name}-c"}])
    assert created.status_code == 201
    assert [task["name"] for task in created.json()] == [f"{name}-a", f"{name}-c"]
    assert len(clients["viewer"].get("/api/tasks", params={"name": name}).json()) == 2


def test_lists_filter_and_page(clients, http_server):
    name = marker()
    specs = [api_spec(f"{name}-{index}", f"{http_server.base_url}/get", delay_seconds=FAR_DELAY) for index in range(3)]
    specs.append(api_spec(f"{name}-cron", f"{http_server.base_url}/get", cron_expression=FAR_CRON))
    clients["operator"].post("/api/tasks", json=specs).raise_for_status()
    first = clients["viewer"].get("/api/tasks", params={"name": name, "limit": 2})
    assert [task["name"] for task in first.json()] == [f"{name}-cron", f"{name}-2"]
    assert 'rel="next"' in first.headers["link"] and "offset=2" in first.headers["link"]
    rest = clients["viewer"].get("/api/tasks", params={"name": name, "limit": 2, "offset": 2}).json()
    assert [task["name"] for task in rest] == [f"{name}-1", f"{name}-0"]
    assert clients["viewer"].get("/api/tasks", params={"name": name, "offset": 4}).json() == []
    delayed = clients["viewer"].get("/api/tasks", params={"name": name, "mode": "delayed", "kind": "api",
                                                          "state": "active"}).json()
    assert len(delayed) == 3 and {task["mode"] for task in delayed} == {"delayed"}
    assert clients["viewer"].get("/api/tasks", params={"name": name, "kind": "code"}).json() == []
    scheduled = clients["viewer"].get("/api/scheduled-tasks", params={"name": name}).json()
    assert [task["name"] for task in scheduled] == [f"{name}-cron"]
    unfiltered = clients["viewer"].get("/api/tasks", params={"limit": 1})
    assert int(unfiltered.headers["x-total-count"]) >= 4


def test_edit_stop_pause_resume_delete(clients, http_server):
    name = marker()
    task = clients["operator"].post("/api/tasks", json=api_spec(name, f"{http_server.base_url}/get",
                                                                cron_expression=FAR_CRON)).json()
    path = f"/api/tasks/{task['id']}"
    edited = clients["operator"].patch(path, json={"cron_expression": "0 0 1 6 *", "timeout": 7})
    assert edited.status_code == 200, edited.text
    assert edited.json()["spec"]["cron_expression"] == "0 0 1 6 *" and edited.json()["spec"]["timeout"] == 7
    assert "-06-01T00:00:00" in edited.json()["next_run_at"]
    assert error_of(clients["operator"].patch(path, json={"cron_expression": "whenever"}), 422)["field"] == \
        "cron_expression"
    assert error_of(clients["operator"].patch(path, json={}), 422)["field"] == "body"
    assert error_of(clients["operator"].patch(path, json=[1]), 422)["field"] == "body"
    assert clients["operator"].post(f"{path}/pause").json()["state"] == "paused"
    assert clients["operator"].post(f"{path}/pause").json()["state"] == "paused"  # pausing twice is harmless
    resumed = clients["operator"].post(f"{path}/resume").json()
    assert resumed["state"] == "active" and resumed["next_run_at"]
    stopped = clients["operator"].post(f"{path}/stop").json()
    assert (stopped["state"], stopped["next_run_at"]) == ("paused", None)
    assert clients["operator"].delete(path).json() == {"deleted": task["id"]}
    for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/stop"), ("POST", "/run"), ("PATCH", "")):
        body = {"name": "x"} if method == "PATCH" else None
        response = clients["admin"].request(method, f"{path}{suffix}", json=body)
        assert error_of(response, 404)["error"] == "NotFound"
    immediate = clients["operator"].post("/api/tasks", json=api_spec(f"{name}-now", f"{http_server.base_url}/get"))
    assert error_of(clients["operator"].post(f"/api/tasks/{immediate.json()['id']}/pause"), 409)


def test_run_now_and_run_records(clients):
    name = marker()
    task = clients["admin"].post("/api/tasks", json=code_spec(name, cron_expression=FAR_CRON, args=[5])).json()
    queued = clients["admin"].post(f"/api/tasks/{task['id']}/run")
    assert queued.status_code == 202
    run = queued.json()
    assert (run["task_id"], run["state"], run["trigger"]) == (task["id"], "queued", "manual")
    assert queued.headers["location"] == f"/api/runs/{run['id']}"
    done = final_run(clients["viewer"], task["id"])
    assert done["id"] == run["id"] and done["state"] == "succeeded", done
    assert done["result"] == 105 and done["output"] == "computing 5\n"
    assert clients["viewer"].get(f"/api/runs/{run['id']}").json() == done
    assert clients["viewer"].get(f"/api/tasks/{task['id']}/runs", params={"state": "succeeded"}).json() == [done]
    assert clients["viewer"].get(f"/api/tasks/{task['id']}/runs", params={"state": "failed"}).json() == []
    assert clients["viewer"].get(f"/api/tasks/{task['id']}", params={"runs": 0}).json()["runs"] == []
    assert error_of(clients["viewer"].get("/api/runs/nope"), 404)["error"] == "NotFound"
    assert error_of(clients["viewer"].get("/api/tasks/nope/runs"), 404)


def test_scheduled_tasks_endpoint_creates_only_scheduled_tasks(clients, http_server):
    name = marker()
    url = f"{http_server.base_url}/status/200"
    immediate = error_of(clients["operator"].post("/api/scheduled-tasks", json=api_spec(name, url,
                                                                                         task_type="immediate")), 422)
    assert immediate["field"] == "task_type" and "scheduled" in immediate["message"]
    delayed = error_of(clients["operator"].post("/api/scheduled-tasks", json=api_spec(name, url, delay_seconds=5)), 422)
    assert delayed["field"] in ("task_type", "delay_seconds")
    no_cron = error_of(clients["operator"].post("/api/scheduled-tasks", json=api_spec(name, url)), 422)
    assert no_cron["field"] == "cron_expression"
    assert clients["viewer"].get("/api/tasks", params={"name": name}).json() == []
    created = clients["operator"].post("/api/scheduled-tasks", json=api_spec(name, url, cron_expression="*/5 * * * *"))
    assert created.status_code == 201 and created.json()["mode"] == "scheduled"
    listed = clients["viewer"].get("/api/scheduled-tasks", params={"limit": 1000}).json()
    assert created.json()["id"] in {task["id"] for task in listed}
    assert {task["mode"] for task in listed} == {"scheduled"}


def test_an_operator_runs_a_registered_task(clients):
    names = clients["viewer"].get("/api/registered-tasks").json()
    assert "taskman.echo" in names and "ops.add" in names
    task = clients["operator"].post("/api/tasks", json={"name": marker(), "task_name": "taskman.echo",
                                                         "args": ["hi"], "kwargs": {"n": 1}}).json()
    run = final_run(clients["viewer"], task["id"])
    assert run["state"] == "succeeded", run
    assert run["result"] == {"args": ["hi"], "kwargs": {"n": 1}}


# -- bad input -------------------------------------------------------------------------------------


def test_bad_input_gets_a_4xx_json_error_never_a_500(clients, api):
    admin = clients["admin"]
    cases = [
        (admin.post("/api/tasks", content=b'{"name": "x",'), 422, "body"),
        (admin.post("/api/tasks", content=b""), 422, "body"),
        (admin.post("/api/tasks", content=b'{"name": "x", "timeout": NaN}'), 422, "body"),
        (admin.post("/api/tasks", content=b"[" * 100_000), 422, "body"),
        (admin.post("/api/tasks", content=b"\xff\xfe\x00garbage"), 422, "body"),
        (admin.post("/api/tasks", json="a string"), 422, ""),
        (admin.post("/api/tasks", json={"name": "x", "api_url": "ftp://x"}), 422, "api_url"),
        (admin.post("/api/tasks", json={"name": "x", "api_url": "http://127.0.0.1:9/", "timeout": "soon"}), 422,
         "timeout"),
        (admin.post("/api/tasks", json={"name": "x", "bogus": 1, "api_url": "http://127.0.0.1:9/"}), 422, "bogus"),
        (admin.get("/api/tasks", params={"limit": "ten"}), 422, "limit"),
        (admin.get("/api/tasks", params={"limit": 10**30}), 422, "limit"),
        (admin.get("/api/tasks", params={"offset": -1}), 422, "offset"),
        (admin.get("/api/tasks", params={"state": "sleeping"}), 422, "state"),
        (admin.get("/api/tasks/x/runs", params={"state": "done"}), 422, "state"),
        (admin.get("/api/logs", params={"lines": -1}), 422, "lines"),
        (admin.get("/api/logs", headers={"Last-Event-ID": "yesterday"}), 422, "Last-Event-ID"),
        (admin.get("/api/logs", params={"task_id": "no-such-task"}), 404, None),
        (admin.get("/api/audit", params={"before": "x"}), 422, "before"),
        (admin.post("/api/tokens", json={"name": "bad name", "role": "viewer"}), 422, "name"),
        (admin.post("/api/tokens", json={"name": "fine", "role": "god"}), 422, "role"),
        (admin.post("/api/tokens", json={"name": "fine"}), 422, "role"),
        (admin.post("/api/tokens", json={"name": "fine", "role": "viewer", "extra": 1}), 422, "extra"),
        (admin.request("PUT", "/api/tasks"), 405, None),
        (admin.get("/api/nothing-here"), 404, None),
    ]
    for response, status, field in cases:
        body = error_of(response, status)
        if field is not None:
            assert body.get("field") == field, (response.request.url, body)
    too_big = admin.post("/api/tasks", content=b" " * (2 * 1024 * 1024 + 1))
    assert error_of(too_big, 413)["error"] == "BodyTooLarge"
    chunked = admin.post("/api/tasks", content=iter([b" " * 1024 * 1024] * 3))
    assert error_of(chunked, 413)["error"] == "BodyTooLarge"
    assert "Traceback" not in api.log()


# -- live logs (Server-Sent Events) ----------------------------------------------------------------


def read_events(lines, until, limit: float = 20.0) -> list[dict]:
    """Parse SSE events from ``lines`` (a response's ``iter_lines()``) until ``until(event)`` holds for one.

    Leaves ``lines`` open: discarding an ``iter_lines`` generator makes httpx close the connection.
    """
    events, current = [], {}
    deadline = time.monotonic() + limit
    for line in lines:
        if time.monotonic() > deadline:
            raise AssertionError(f"no final event within {limit}s: {events}")
        if line == "":
            if "data" in current:
                current["data"] = json.loads(current["data"])
                events.append(current)
                if until(current):
                    return events
            current = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            current[key] = value
    raise AssertionError(f"the stream ended early: {events}")


def test_sse_delivers_the_log_lines_of_a_real_run_and_resumes(clients, api, tokens):
    name = marker()
    code = ("def report(n=3):\n    for i in range(n):\n        print('line', i)\n    return n")
    task = clients["admin"].post("/api/tasks", json={"name": name, "task_type": "delayed", "delay_seconds": 1.5,
                                                     "function_code": code, "function_name": "report"}).json()
    headers = {"Authorization": f"Bearer {tokens['viewer']}"}
    finished = lambda event: "succeeded" in event["data"]["msg"]  # noqa: E731
    with httpx.Client(base_url=api.url, headers=headers, timeout=httpx.Timeout(10, read=20)) as client:
        with client.stream("GET", "/api/logs", params={"task_id": task["id"]}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = read_events(response.iter_lines(), finished)
        all_lines = [event for event in events if event["event"] == "log"]
        messages = [event["data"]["msg"] for event in all_lines]
        assert any(message.startswith("run ") and "started on" in message for message in messages), messages
        assert [m for m in messages if m.startswith("line ")] == ["line 0", "line 1", "line 2"]
        assert {event["data"]["task"] for event in all_lines} == {task["id"]}
        assert set(events[0]["data"]) == {"ts", "task", "run", "level", "msg"}

        with client.stream("GET", "/api/logs", headers={"Last-Event-ID": all_lines[0]["id"]},
                           params={"task_id": task["id"]}) as response:
            resumed = read_events(response.iter_lines(), finished)
        assert [event["id"] for event in resumed] == [event["id"] for event in all_lines[1:]]

        with client.stream("GET", "/api/logs", params={"task_id": task["id"], "lines": 100}) as response:
            lines = response.iter_lines()
            assert next(lines) == "retry: 2000"
            assert clients["viewer"].get("/api/health").json()["log_streams"] == 1
            history = read_events(lines, finished)
            assert clients["viewer"].get("/api/health").json()["log_streams"] == 1
        assert [event["id"] for event in history] == [event["id"] for event in all_lines]

    wait_for(lambda: clients["viewer"].get("/api/health").json()["log_streams"] == 0, timeout=5,
             message="the server to drop the streams of clients that went away")


def test_sse_without_a_filter_carries_every_task(clients, api, tokens, http_server):
    headers = {"Authorization": f"Bearer {tokens['viewer']}"}
    with httpx.Client(base_url=api.url, headers=headers, timeout=httpx.Timeout(10, read=20)) as client:
        with client.stream("GET", "/api/logs") as response:
            lines = response.iter_lines()
            assert next(lines) == "retry: 2000"
            task = clients["operator"].post("/api/tasks", json=api_spec(marker(), f"{http_server.base_url}/get"))
            task_id = task.json()["id"]
            events = read_events(lines, lambda e: e["data"]["task"] == task_id and "→ 200" in e["data"]["msg"])
    assert any(event["data"]["task"] == task_id for event in events)


# -- the seed's examples ---------------------------------------------------------------------------


def seed_bodies(base_url: str) -> list[dict]:
    """The six example bodies of the seed, as written there, except: httpbin.org is the local HTTP
    server, and the delays (60 s and 300 s in the seed) are 1 s and 2 s so the test sees them run."""
    return [
        {"name": "立即计算任务", "task_type": "immediate",
         "function_code": "def hello_world():\n    return 'Hello World!'", "function_name": "hello_world"},
        {"name": "延时计算任务", "task_type": "delayed", "delay_seconds": 1,
         "function_code": "def calculate():\n    return 1 + 2 * 3", "function_name": "calculate"},
        {"name": "定时计算任务", "task_type": "scheduled", "cron_expression": "0 0 * * *",
         "function_code": "def daily_report():\n    return '日报生成完成'", "function_name": "daily_report"},
        {"name": "立即API请求", "task_type": "immediate", "api_url": f"{base_url}/get", "method": "GET",
         "timeout": 30},
        {"name": "延时API请求", "task_type": "delayed", "delay_seconds": 2, "api_url": f"{base_url}/post",
         "method": "POST", "data": {"message": "延时请求"}, "timeout": 30},
        {"name": "定时API请求", "task_type": "scheduled", "cron_expression": "*/5 * * * *",
         "api_url": f"{base_url}/status/200", "method": "GET", "timeout": 30},
    ]


def test_the_seeds_six_bodies_posted_as_is_create_tasks_that_run(clients, http_server):
    admin = clients["admin"]
    tasks = []
    for body in seed_bodies(http_server.base_url):
        endpoint = "/api/scheduled-tasks" if body["task_type"] == "scheduled" else "/api/tasks"
        response = admin.post(endpoint, json=body)
        assert response.status_code == 201, response.text
        tasks.append(response.json())
    assert [(t["name"], t["kind"], t["mode"]) for t in tasks] == [
        ("立即计算任务", "code", "immediate"), ("延时计算任务", "code", "delayed"),
        ("定时计算任务", "code", "scheduled"),
        ("立即API请求", "api", "immediate"), ("延时API请求", "api", "delayed"), ("定时API请求", "api", "scheduled")]
    assert tasks[2]["next_run_at"].endswith("T00:00:00.000+00:00")
    minute = int(tasks[5]["next_run_at"][14:16])
    assert minute % 5 == 0
    for scheduled in (tasks[2], tasks[5]):  # their next fire is minutes or hours away: run them now as well
        assert admin.post(f"/api/tasks/{scheduled['id']}/run").status_code == 202
    runs = [final_run(clients["viewer"], task["id"], timeout=30) for task in tasks]
    assert all(run["state"] == "succeeded" for run in runs), runs
    assert [runs[0]["result"], runs[1]["result"], runs[2]["result"]] == ["Hello World!", 7, "日报生成完成"]
    assert runs[3]["result"]["status_code"] == 200 and runs[5]["result"]["status_code"] == 200
    assert runs[4]["result"]["status_code"] == 200
    posted = [r for r in http_server.requests if r["method"] == "POST" and r["path"] == "/post"]
    assert any("延时请求" in (r["body"] or "") for r in posted)
    delayed_code = clients["viewer"].get(f"/api/tasks/{tasks[1]['id']}").json()
    assert delayed_code["state"] == "done"


# -- audit -----------------------------------------------------------------------------------------


def audit_for(clients, target: str) -> list[tuple[str, str]]:
    """(actor, action) of the audit entries about ``target``, oldest first."""
    entries = clients["admin"].get("/api/audit", params={"limit": 1000}).json()
    return [(entry["actor"], entry["action"]) for entry in reversed(entries) if entry["target"] == target]


def test_changes_through_the_api_are_audited_with_the_token_name(clients, tokens, http_server):
    operator, admin = f"api:{tokens['operator:name']}", f"api:{tokens['admin:name']}"
    task = clients["operator"].post("/api/tasks", json=api_spec(marker(), f"{http_server.base_url}/get",
                                                                cron_expression=FAR_CRON)).json()
    path = f"/api/tasks/{task['id']}"
    clients["operator"].patch(path, json={"timeout": 9}).raise_for_status()
    clients["operator"].post(f"{path}/run").raise_for_status()
    clients["operator"].post(f"{path}/pause").raise_for_status()
    clients["admin"].post(f"{path}/resume").raise_for_status()
    clients["operator"].post(f"{path}/stop").raise_for_status()
    clients["admin"].delete(path).raise_for_status()
    assert audit_for(clients, task["id"]) == [(operator, "create"), (operator, "edit"), (operator, "run"),
                                              (operator, "pause"), (admin, "resume"), (operator, "stop"),
                                              (admin, "delete")]
    refused = clients["viewer"].post(f"/api/tasks/{task['id']}/run")
    assert refused.status_code in (403, 404)
    token_name = f"made-by-api-{uuid.uuid4().hex[:6]}"
    created = clients["admin"].post("/api/tokens", json={"name": token_name, "role": "viewer"})
    assert created.status_code == 201 and created.json()["token"].startswith("tm_")
    secret = created.json()["token"]
    assert httpx.get(f"{clients['admin'].base_url}/api/tasks", params={"limit": 1},
                     headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    listed = clients["admin"].get("/api/tokens").json()
    assert token_name in {t["name"] for t in listed} and secret not in json.dumps(listed)
    assert clients["admin"].delete(f"/api/tokens/{token_name}").json()["name"] == token_name
    assert httpx.get(f"{clients['admin'].base_url}/api/tasks",
                     headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    assert audit_for(clients, token_name) == [(admin, "token.create"), (admin, "token.revoke")]


def test_changes_through_the_cli_and_the_service_are_audited(clients, taskman_env, stack, http_server):
    actor = f"cli:{getpass.getuser()}"
    spec = api_spec(marker(), f"{http_server.base_url}/get", delay_seconds=FAR_DELAY)
    task = json.loads(cli(taskman_env, "submit", "-", "--json", input=json.dumps(spec)).stdout)
    cli(taskman_env, "edit", task["id"], "--set", "timeout=4")
    cli(taskman_env, "pause", task["id"])
    cli(taskman_env, "resume", task["id"])
    cli(taskman_env, "delete", task["id"])
    assert audit_for(clients, task["id"]) == [(actor, "create"), (actor, "edit"), (actor, "pause"),
                                              (actor, "resume"), (actor, "delete")]
    trail = json.loads(cli(taskman_env, "audit", "-n", "50", "--json").stdout)
    assert trail == clients["admin"].get("/api/audit", params={"limit": 50}).json()
    human = cli(taskman_env, "audit", "-n", "5").stdout
    assert actor in human and "delete" in human and task["id"] in human

    token_name = f"cli-made-{uuid.uuid4().hex[:6]}"
    made = json.loads(cli(taskman_env, "token", "create", "--role", "operator", "--name", token_name,
                          "--json").stdout)
    assert made["token"].startswith("tm_") and made["role"] == "operator"
    listed = cli(taskman_env, "token", "list").stdout
    assert token_name in listed and made["token"] not in listed
    cli(taskman_env, "token", "revoke", token_name)
    assert audit_for(clients, token_name) == [(actor, "token.create"), (actor, "token.revoke")]

    by_service = stack.create(api_spec(marker(), f"{http_server.base_url}/get", delay_seconds=FAR_DELAY))
    stack.acting_as("console:tester").delete(by_service.id)
    assert audit_for(clients, by_service.id) == [("system", "create"), ("console:tester", "delete")]


# -- metrics ---------------------------------------------------------------------------------------


def scrape(client: httpx.Client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def test_metrics_move_with_real_runs(clients, stack, http_server):
    before = scrape(clients["viewer"])
    succeeded = ("taskman_runs_total", (("kind", "code"), ("state", "succeeded")))
    failed_api = ("taskman_runs_total", (("kind", "api"), ("state", "failed")))
    count = ("taskman_run_duration_seconds_count", (("kind", "code"),))
    lag_count = ("taskman_scheduler_lag_seconds_count", ())
    admin = clients["admin"]
    now = admin.post("/api/tasks", json=code_spec(marker())).json()
    later = admin.post("/api/tasks", json=code_spec(marker(), delay_seconds=0.5)).json()
    broken = clients["operator"].post("/api/tasks", json=api_spec(marker(), f"{http_server.base_url}/status/500",
                                                                  max_retries=1, retry_backoff=0.2)).json()
    for task in (now, later, broken):
        final_run(clients["viewer"], task["id"])
    wait_for(lambda: final_run(clients["viewer"], broken["id"])["attempt"] == 2, timeout=20,
             message="the retry of the failing API task")
    after = scrape(clients["viewer"])
    assert after[succeeded] - before.get(succeeded, 0) >= 2
    assert after[count] - before.get(count, 0) >= 2
    assert after[failed_api] - before.get(failed_api, 0) >= 1
    assert after[("taskman_run_retries_total", (("kind", "api"),))] >= 1
    assert after[lag_count] - before.get(lag_count, 0) >= 2  # the delayed run's fire and the retry's
    assert after[("taskman_workers_alive", ())] >= 2
    assert after[("taskman_scheduler_leader", ())] == 1
    assert after[("taskman_due_entries", ())] == stack.store.due_count()
    for queue in ("code", "http", "registered"):
        assert ("taskman_queue_depth", (("queue", queue),)) in after
    inf = ("taskman_run_duration_seconds_bucket", (("kind", "code"), ("le", "+Inf")))
    assert after[inf] == after[count]
    as_json = clients["viewer"].get("/api/metrics").json()
    assert as_json["workers"] >= 2 and as_json["due"] == stack.store.due_count()
