"""Hostile input that floods, blinds or outlasts (issue 9, items 6-10), each through the front end the attack
used, each ending with the stack shown to be still up (workers alive, ``/api/health`` 200, other tasks' runs
and log lines intact):

- the audit trail cannot be flushed: it is kept by time, and API tokens are rate-limited (REST API);
- one run cannot flood everyone's logs: lines per run are capped, the run keeps its result (a real worker);
- decompression bombs: decoded bytes are capped as they stream, one content-coding layer at most (http worker);
- runs that cannot end: every API-task request obeys an overall deadline, and stop abandons it (http worker);
- log streams that outlive their token close within seconds of its revocation (REST API).
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from core import auth
from core.models import RunState
from tests.conftest import wait_for
from tests.e2e.apiserver import ApiServer, process_env
from tests.e2e.test_hostile import assert_stack_up, final_run, marker

FAR_DELAY = 30 * 24 * 3600


def token_client(api: ApiServer, secret: str) -> httpx.Client:
    return httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {secret}"}, timeout=15)


@pytest.fixture(scope="module")
def api(taskman_env, stack, tmp_path_factory):
    server = ApiServer(process_env(taskman_env), tmp_path_factory.mktemp("api") / "api.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clients(api, stack):
    made = {}
    for role in ("viewer", "operator", "admin"):
        secret, _ = auth.create(stack.store, f"f-{role}-{uuid.uuid4().hex[:6]}", role, actor="test")
        made[role] = token_client(api, secret)
    made["anonymous"] = httpx.Client(base_url=api.url, timeout=15)
    yield made
    for client in made.values():
        client.close()


def audit_ids(service) -> set[str]:
    return {entry_id for entry_id, _ in service.store.redis.xrange(service.store.keys.audit)}


# -- 6. the audit trail cannot be flushed ----------------------------------------------------------

RATE = 30


@pytest.fixture(scope="module")
def slow_apis(taskman_env, stack, tmp_path_factory):
    """Two API processes on one Redis, each allowing a token ``RATE`` changes a minute: they share the count."""
    env = process_env(taskman_env, TASKMAN_API_RATE_PER_MINUTE=str(RATE))
    servers = [ApiServer(env, tmp_path_factory.mktemp("rate") / f"api{index}.log").start() for index in (1, 2)]
    yield servers
    for server in servers:
        server.stop()


def test_a_burst_of_changes_gets_429_and_cannot_flush_the_audit_trail(slow_apis, stack, clients, http_server):
    first, second = slow_apis
    name = f"flood-{uuid.uuid4().hex[:6]}"
    secret, _ = auth.create(stack.store, name, "operator", actor="test")
    viewer_secret, _ = auth.create(stack.store, f"{name}-viewer", "viewer", actor="test")
    operator, other_process, viewer = token_client(first, secret), token_client(second, secret), \
        token_client(first, viewer_secret)
    spec = {"api_url": f"{http_server.base_url}/get", "delay_seconds": FAR_DELAY}
    before = audit_ids(stack)
    assert before, "the session's earlier changes are in the trail"
    created, refused = [], None
    try:
        poisoned = operator.post("/api/tasks", json={"name": marker(), **spec})
        assert poisoned.status_code == 201, poisoned.text
        created.append(poisoned.json()["id"])
        for attempt in range(RATE + 10):
            client = other_process if attempt % 2 else operator  # both processes draw on one allowance
            answer = client.post("/api/tasks", json={"name": marker(), **spec})
            if answer.status_code == 429:
                refused = answer
                break
            assert answer.status_code == 201, answer.text
            created.append(answer.json()["id"])
        assert refused is not None, f"{len(created)} creates in a burst and no 429"
        assert RATE - 2 <= len(created) <= RATE + 2, len(created)
        assert refused.json()["error"] == "RateLimited" and str(RATE) in refused.json()["message"]
        wait = int(refused.headers["Retry-After"])
        assert 1 <= wait <= 60 // RATE + 1, wait
        batch = other_process.post("/api/tasks", json=[{"name": marker(), **spec} for _ in range(5)])
        assert batch.status_code == 429, "a batch is refused as a whole while the allowance is spent"
        for action in ("stop", "pause", "run"):
            assert operator.post(f"/api/tasks/{created[0]}/{action}").status_code == 429
        assert viewer.get(f"/api/tasks/{created[0]}").status_code == 200, "reads are not limited"

        after = audit_ids(stack)
        assert before <= after, "no entry written before the burst was pushed out"
        mine = [fields["target"] for _, fields in stack.store.redis.xrange(stack.store.keys.audit)
                if fields["actor"] == f"api:{name}"]
        assert mine == created, "each change audited, no refused one"
        time.sleep(wait)
        again = operator.post("/api/tasks", json={"name": marker(), **spec})
        assert again.status_code == 201, again.text
        created.append(again.json()["id"])
    finally:
        for task_id in created:
            stack.delete(task_id)
        for client in (operator, other_process, viewer):
            client.close()
    assert before <= audit_ids(stack)
    assert_stack_up(stack, http_server, clients)


# -- 7. one run cannot flood everyone's logs -------------------------------------------------------

FLOODS = {
    "newlines": ("def f():\n    print('\\n' * 65000)\n    return 'done'", {}),  # under the 64 KiB output cap
    "loop": ("def f():\n    for i in range(100000):\n        print(i)\n    return 'done'", {"output_cap": 1 << 20}),
}


def run_log(service, run_id: str) -> list[tuple[str, dict]]:
    return [(entry_id, entry) for entry_id, entry in service.store.redis.xrange(service.store.keys.logs)
            if entry.get("run") == run_id]


def test_one_run_cannot_flood_the_log_stream_and_keeps_its_result(stack, clients, http_server):
    admin, cap = clients["admin"], stack.settings.log_lines_cap
    neighbour = admin.post("/api/tasks", json={"name": marker(), "function_name": "f",
                                               "function_code": "def f():\n    print('neighbour line')\n    return 1"})
    assert neighbour.status_code == 201, neighbour.text
    neighbour_run = final_run(stack, neighbour.json()["id"])
    neighbour_lines = run_log(stack, neighbour_run.id)
    assert any(entry["msg"] == "neighbour line" for _, entry in neighbour_lines)
    for label, (code, limits) in FLOODS.items():
        created = admin.post("/api/tasks", json={"name": marker(), "function_code": code, "function_name": "f",
                                                 **limits})
        assert created.status_code == 201, created.text
        run = final_run(stack, created.json()["id"], timeout=60)
        assert run.state is RunState.SUCCEEDED and run.result == "done", (label, run.state, run.error)
        lines = run_log(stack, run.id)
        assert len(lines) <= cap + 1, (label, len(lines))
        printed = [entry for _, entry in lines if entry["level"] == "print"]
        assert len(printed) >= cap - 10, "the first part of the output is kept"
        dropped = [entry["msg"] for _, entry in lines if "were dropped" in entry["msg"]]
        assert len(dropped) == 1 and "log_lines_cap" in dropped[0], (label, dropped)
        assert int(dropped[0].split()[0]) + len(printed) >= 65001, dropped[0]
        assert "succeeded" in lines[-1][1]["msg"], "the run's summary closes its lines"
    stream = {entry_id for entry_id, _ in stack.store.redis.xrange(stack.store.keys.logs)}
    assert {entry_id for entry_id, _ in neighbour_lines} <= stream, "another task's earlier lines are still there"
    assert_stack_up(stack, http_server, clients)
