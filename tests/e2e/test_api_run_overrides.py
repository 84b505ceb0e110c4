"""The REST API's side of issue 12: ``POST /api/tasks/{id}/run`` with an optional body (one run with other
arguments, the task unchanged; no body runs it as it is) and ``GET /api/workers``."""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.conftest import role_clients
from tests.e2e.test_api import error_of, final_run

pytestmark = pytest.mark.usefixtures("stack")
FAR_CRON = "0 0 1 1 *"


@pytest.fixture(scope="module")
def clients(api, stack):
    yield from role_clients(api, stack.store, "run-with")


def code_task(clients) -> dict:
    spec = {"name": f"api-with-{uuid.uuid4().hex[:8]}", "cron_expression": FAR_CRON, "function_name": "f",
            "args": [2], "function_code": "def f(x=1, y=0):\n    return {'x': x, 'y': y}"}
    created = clients["admin"].post("/api/tasks", json=spec)
    assert created.status_code == 201, created.text
    return created.json()


def test_a_run_with_a_body_takes_its_arguments_and_one_without_runs_the_task_as_it_is(clients):
    task = code_task(clients)
    queued = clients["admin"].post(f"/api/tasks/{task['id']}/run", json={"args": [5], "kwargs": {"y": 7}})
    assert queued.status_code == 202, queued.text
    assert queued.json()["overrides"] == {"args": [5], "kwargs": {"y": 7}}
    done = final_run(clients["viewer"], task["id"])
    assert done["result"] == {"x": 5, "y": 7} and done["overrides"] == {"args": [5], "kwargs": {"y": 7}}
    plain = clients["admin"].post(f"/api/tasks/{task['id']}/run")  # no body at all: as before
    assert plain.status_code == 202 and plain.json()["overrides"] is None
    assert final_run(clients["viewer"], task["id"])["result"] == {"x": 2, "y": 0}
    assert clients["viewer"].get(f"/api/tasks/{task['id']}").json()["spec"]["args"] == [2]
    empty = clients["admin"].post(f"/api/tasks/{task['id']}/run", json={})
    assert empty.status_code == 202 and empty.json()["overrides"] is None


def test_an_operator_sends_another_request_body_masked_where_shown(clients, http_server):
    spec = {"name": f"api-body-{uuid.uuid4().hex[:8]}", "cron_expression": FAR_CRON, "method": "POST",
            "api_url": f"{http_server.base_url}/post", "json": {"from": "the task"}}
    task = clients["operator"].post("/api/tasks", json=spec).json()
    queued = clients["operator"].post(f"/api/tasks/{task['id']}/run",
                                      json={"json": {"from": "the API", "password": "hunter2"}})
    assert queued.status_code == 202, queued.text
    assert queued.json()["overrides"] == {"json": {"from": "the API", "password": "***"}}
    done = final_run(clients["viewer"], task["id"])
    assert done["result"]["body"]["json"]["from"] == "the API"
    assert "hunter2" not in str(done)


@pytest.mark.parametrize("body, field", [
    ({"args": {"a": 1}}, "args"),
    ({"data": {"a": 1}}, "data"),
    ({"function_code": "x"}, "function_code"),
    ([1, 2], ""),
])
def test_refused_overrides_get_422_naming_the_field_and_queue_nothing(clients, body, field):
    task = code_task(clients)
    refused = error_of(clients["admin"].post(f"/api/tasks/{task['id']}/run", json=body), 422)
    assert refused["error"] == "InvalidSpec" and refused.get("field", "") == field, refused
    assert clients["viewer"].get(f"/api/tasks/{task['id']}/runs").json() == []
    assert error_of(clients["admin"].post(f"/api/tasks/{task['id']}/run", content=b"{not json"), 422)["field"] \
        == "body"


def test_roles_hold_for_runs_with_other_arguments(clients):
    task = code_task(clients)
    assert error_of(clients["viewer"].post(f"/api/tasks/{task['id']}/run", json={"args": [1]}), 403)
    assert error_of(clients["operator"].post(f"/api/tasks/{task['id']}/run", json={"args": [1]}), 403)
    assert error_of(clients["anonymous"].post(f"/api/tasks/{task['id']}/run", json={"args": [1]}), 401)


def test_the_audit_trail_records_the_overrides(clients):
    task = code_task(clients)
    run = clients["admin"].post(f"/api/tasks/{task['id']}/run", json={"kwargs": {"y": 1, "api_key": "k"}}).json()
    entries = clients["admin"].get("/api/audit", params={"limit": 50}).json()
    entry = next(e for e in entries if e["action"] == "run" and e["detail"].get("run_id") == run["id"])
    assert entry["detail"]["overrides"] == {"kwargs": {"y": 1, "api_key": "***"}}
    assert entry["actor"].startswith("api:run-with-admin-")


def test_get_workers_for_a_viewer(clients):
    body = clients["viewer"].get("/api/workers")
    assert body.status_code == 200, body.text
    data = body.json()
    assert {worker["pool"] for worker in data["workers"]} >= {"prefork", "threads"}
    assert all(worker["last_beat"] and worker["walls_summary"] for worker in data["workers"])
    assert {"code", "http", "registered"} <= {queue["name"] for queue in data["queues"]}
    assert "ops.add" in data["registered_tasks"]
    assert error_of(clients["anonymous"].get("/api/workers"), 401)
