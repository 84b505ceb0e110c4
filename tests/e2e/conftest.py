"""Fixtures the end-to-end modules share: a real ``taskman api`` process, and clients for each role."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from core import auth
from tests.e2e.apiserver import ApiServer, process_env


@pytest.fixture(scope="module")
def api(taskman_env, stack, tmp_path_factory) -> Iterator[ApiServer]:
    """``taskman api`` on a free port, on the session's Redis and stack (one per test module)."""
    server = ApiServer(process_env(taskman_env), tmp_path_factory.mktemp("api") / "api.log").start()
    yield server
    server.stop()


def token_client(api: ApiServer, secret: str) -> httpx.Client:
    return httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {secret}"}, timeout=15)


def role_clients(api: ApiServer, store, prefix: str) -> Iterator[dict[str, httpx.Client]]:
    """A client per role (a fresh token each, named ``<prefix>-<role>-…``) and an anonymous one."""
    made = {}
    for role in ("viewer", "operator", "admin"):
        secret, _ = auth.create(store, f"{prefix}-{role}-{uuid.uuid4().hex[:6]}", role, actor="test")
        made[role] = token_client(api, secret)
    made["anonymous"] = httpx.Client(base_url=api.url, timeout=15)
    yield made
    for client in made.values():
        client.close()
