"""``api_threads``: a serving process runs request bodies on a few threads; the rest wait their turn, none fails."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from core import auth
from tests.e2e.apiserver import ApiServer, process_env

CLIENTS = 16
EACH = 5


@pytest.fixture(scope="module")
def one_thread(taskman_env, tmp_path_factory):
    server = ApiServer(process_env(taskman_env, TASKMAN_API_THREADS="1"),
                       tmp_path_factory.mktemp("threads") / "api.log").start()
    yield server
    server.stop()


def test_one_thread_answers_sixteen_clients_in_turn_and_health_meanwhile(one_thread, stack, http_server):
    secret, _ = auth.create(stack.store, f"threads-{uuid.uuid4().hex[:6]}", "operator", actor="test")
    spec = {"api_url": f"{http_server.base_url}/get", "delay_seconds": 86_400}
    prefix = f"thr-{uuid.uuid4().hex[:6]}"

    def client(number: int) -> list[tuple[int, str | None]]:
        answers = []
        with httpx.Client(base_url=one_thread.url, headers={"Authorization": f"Bearer {secret}"},
                          timeout=30) as http:
            for index in range(EACH):
                created = http.post("/api/tasks", json={"name": f"{prefix}-{number}-{index}", **spec})
                answers.append((created.status_code, created.json().get("id")))
                answers.append((http.get("/api/tasks", params={"limit": 20}).status_code, None))
                answers.append((http.get("/api/health").status_code, None))
        return answers

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = [answer for each in pool.map(client, range(CLIENTS)) for answer in each]
    assert sorted({status for status, _ in answers}) == [200, 201], answers
    created = [task_id for status, task_id in answers if status == 201]
    assert len(created) == CLIENTS * EACH
    assert all(stack.store.get_task(task_id) is not None for task_id in created)
    assert "Traceback" not in one_thread.log()
