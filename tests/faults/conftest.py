"""The fault suite's shared parts: a stack on a Redis of its own, and the recovery figures it reports.

Every scenario that stops, kills or restarts Redis or a scheduler runs on a private ``redis-server``
(append-only, ``appendfsync always``, ``noeviction``) in a namespace of its own, with worker and
scheduler processes it starts and stops by PID, so nothing it does reaches another test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from core.config import Settings
from core.embedded import RedisServer
from tests.conftest import FIGURE_PREFIX, Processes, _process_env

FIGURES: dict[str, str] = {}
"""What each fault test measured (time to recover, runs lost, duplicate fires), by scenario."""

CODE = "def main():\n    return 'ran'\n"
EVERY_2S = "* * * * * */2"


def code_worker(name: str, concurrency: int = 1) -> tuple[str, ...]:
    """Arguments of a prefork worker serving code and registered runs."""
    return ("worker", "-Q", "code,registered", "-P", "prefork", "-c", str(concurrency), "-n", f"{name}@%h",
            "-l", "INFO", "--without-mingle", "--without-gossip")


BEAT = ("beat", "-l", "INFO", "--pidfile=")


@dataclass
class PrivateStack:
    """A private Redis, the environment of taskman processes on it, their processes and a service."""

    server: RedisServer
    env: dict[str, str]
    procs: Processes
    logs: Path
    service: object = field(default=None)

    def settings(self) -> Settings:
        return Settings(**{key.removeprefix("TASKMAN_").lower(): value for key, value in self.env.items()})

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


@pytest.fixture
def private_stack(taskman_env, tmp_path) -> Iterator[PrivateStack]:
    """An append-only Redis (fsync always) of the test's own, a namespace, and no processes yet.

    Short scheduler lock (3 s) and claim lease (20 s), so takeovers happen within a bounded test.
    """
    from core.service import Service

    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", appendonly=True, appendfsync="always", die_with_parent=True).start()
    env = {**taskman_env, "TASKMAN_REDIS_URL": server.url, "TASKMAN_NAMESPACE": f"fault{uuid.uuid4().hex[:6]}",
           "TASKMAN_SCHEDULER_LOCK_TTL": "3", "TASKMAN_CLAIM_LEASE": "20"}
    stack = PrivateStack(server, env, Processes(_process_env(env), tmp_path), tmp_path)
    stack.service = Service.from_settings(stack.settings())
    try:
        yield stack
    finally:
        stack.procs.stop_all()
        server.stop()


@pytest.fixture(autouse=True)
def _report_figures(request):
    """Hand what a test put in ``FIGURES`` to its report, which reaches the run's summary (see
    ``tests/conftest.py``) from whichever process ran the test."""
    before = dict(FIGURES)
    yield
    for name, figure in FIGURES.items():
        if before.get(name) != figure:
            request.node.user_properties.append((f"{FIGURE_PREFIX}{name}", figure))
