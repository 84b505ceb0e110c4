"""``taskman api --workers N``: N processes serve one port and share what lives in Redis (tokens, the rate)."""

from __future__ import annotations

import subprocess
import uuid

import httpx
import pytest

from core import auth
from tests.conftest import wait_for
from tests.e2e.apiserver import ApiServer, process_env

RATE = 12


@pytest.fixture(scope="module")
def two_workers(taskman_env, tmp_path_factory):
    server = ApiServer(process_env(taskman_env, TASKMAN_API_RATE_PER_MINUTE=str(RATE)),
                       tmp_path_factory.mktemp("workers") / "api.log", "--workers", "2").start()
    yield server
    server.stop()


def _processes_in(group: int) -> list[int]:
    listed = subprocess.run(["ps", "-o", "pid=", "-g", str(group)], capture_output=True, text=True).stdout
    return [int(pid) for pid in listed.split()]


def test_two_processes_serve_one_port_and_share_the_tokens_and_the_rate(two_workers, stack, http_server):
    assert two_workers.process is not None
    wait_for(lambda: len(_processes_in(two_workers.process.pid)) >= 3, timeout=30,
             message="the command and its two serving processes")
    secret, _ = auth.create(stack.store, f"workers-{uuid.uuid4().hex[:6]}", "operator", actor="test")
    spec = {"api_url": f"{http_server.base_url}/get", "delay_seconds": 86_400}
    answers = []
    for index in range(RATE + 6):  # a new connection each time: the kernel hands them to either process
        with httpx.Client(base_url=two_workers.url, headers={"Authorization": f"Bearer {secret}"}) as client:
            answers.append(client.post("/api/tasks", json={"name": f"w-{index}", **spec}).status_code)
    assert set(answers) == {201, 429}, answers
    assert RATE - 2 <= answers.count(201) <= RATE + 2, answers  # one allowance, in Redis, for both processes
    with httpx.Client(base_url=two_workers.url) as client:
        assert client.get("/api/tasks", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert "Traceback" not in two_workers.log()
