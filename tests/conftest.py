"""Shared fixtures: a private redis-server, real Celery workers and scheduler, a local HTTP server.

Nothing here fakes Redis or runs Celery eagerly. The session starts its own ``redis-server`` on a
free port (never the one on 6379), its own worker and beat processes, and stops them by PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
for name in list(os.environ):
    if name.startswith("TASKMAN_"):
        del os.environ[name]
os.environ["TASKMAN_CONFIG"] = str(ROOT / "tests" / "no-such-config.toml")

# -- Hypothesis profiles ---------------------------------------------------------------------------
# CI (env CI set, as CI services do) runs the same examples every time, so a red build can be
# reproduced and a green one is not luck; "dev" keeps random exploration. Both drop the deadline:
# a loaded machine must not turn a slow example into a failure. ``--hypothesis-profile`` overrides.
from hypothesis import settings as hypothesis_settings  # noqa: E402

from core.allowed_imports import SANDBOX_IMPORTS  # noqa: E402
from core.config import Settings  # noqa: E402
from core.embedded import RedisServer, killed_with_parent  # noqa: E402

hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
hypothesis_settings.register_profile("dev", deadline=None)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "dev")


# -- figures ----------------------------------------------------------------------------------------
# Tests that measure something (the fault suite's recovery times) attach it to their report as a user
# property named "figure: ..."; the run's summary prints them, also when pytest-xdist ran the tests in
# other processes (reports, unlike module globals, travel back to the controller).
FIGURE_PREFIX = "figure: "
_figures: dict[str, str] = {}


def pytest_runtest_logreport(report) -> None:
    for name, value in report.user_properties:
        if name.startswith(FIGURE_PREFIX):
            _figures[name.removeprefix(FIGURE_PREFIX)] = value


def pytest_terminal_summary(terminalreporter) -> None:
    if _figures:
        terminalreporter.section("fault suite: recovery figures")
        for name, figure in sorted(_figures.items()):
            terminalreporter.write_line(f"{name:58} {figure}")


LONG_FIRST = ("tests/faults/test_redis_trouble.py", "tests/faults/test_many_runs.py", "tests/faults/test_schedulers.py",
              "tests/tui/test_tmux_readme.py", "tests/e2e/test_api_fuzz.py", "tests/faults/", "tests/packaging/",
              "tests/tui/test_tmux.py")
"""Files whose tests take longest (mostly waiting: a 30 s Redis stall, a storm, cron slots passing), run first."""


def pytest_collection_modifyitems(items) -> None:
    """Long tests first: pytest-xdist hands tests out in this order, so none of them starts last and keeps
    the run going while the other processes sit idle. (Every process sorts alike, as xdist requires.)"""
    def rank(item) -> int:
        return next((index for index, start in enumerate(LONG_FIRST) if item.nodeid.startswith(start)),
                    len(LONG_FIRST))

    items.sort(key=rank)


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, message: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False, die_with_parent=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def namespace() -> str:
    return f"test{uuid.uuid4().hex[:8]}"


IDLE_RUN = "import time\n    time.sleep(60)"
"""The body of a code task (``def f():``) that keeps its run running for a minute without using the CPU:
the tests that need a run in progress use it, so a spinning loop does not slow the tests beside them.
(The stop, timeout and limit tests keep their spinning loops: a run that never yields is their point.)"""


@pytest.fixture(scope="session")
def taskman_env(redis_server, namespace, tmp_path_factory) -> dict[str, str]:
    """Environment for every taskman process the tests start."""
    return {
        "TASKMAN_REDIS_URL": redis_server.url,
        "TASKMAN_NAMESPACE": namespace,
        "TASKMAN_HTTP_ALLOW": "127.0.0.1",
        "TASKMAN_DEFAULT_TIMEOUT": "20",
        "TASKMAN_MAX_TIMEOUT": "120",
        "TASKMAN_KILL_GRACE": "1",
        "TASKMAN_IMPORTS": "tests.e2e.operator_tasks",
        "TASKMAN_SCHEDULER_INTERVAL": "0.05",
        "TASKMAN_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "TASKMAN_SANDBOX_IMPORTS": ",".join([*SANDBOX_IMPORTS, "time"]),  # for IDLE_RUN
    }


@pytest.fixture(scope="session")
def settings(taskman_env) -> Settings:
    values = {key.removeprefix("TASKMAN_").lower(): value for key, value in taskman_env.items()}
    return Settings(**values)


def _process_env(taskman_env: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **taskman_env}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


class Processes:
    """Child processes started by the tests, stopped by PID (their whole process group)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.children: list[subprocess.Popen] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        child = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker", *args], cwd=ROOT, env=self.env,
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, preexec_fn=killed_with_parent)
        log.close()
        self.children.append(child)
        return child

    def stop(self, child: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if child.poll() is None:
            os.killpg(child.pid, sig)
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in list(self.children):
            self.stop(child)


@pytest.fixture(scope="session")
def processes(taskman_env, tmp_path_factory):
    procs = Processes(_process_env(taskman_env), tmp_path_factory.mktemp("logs"))
    yield procs
    procs.stop_all()


@pytest.fixture(scope="session")
def service(settings, redis_server):
    from core.service import Service

    return Service.from_settings(settings)


@pytest.fixture(scope="session")
def workers(processes, service):
    """A prefork worker for code + registered runs and a threads worker for http runs."""
    processes.start("worker-code", "worker", "-Q", "code,registered", "-P", "prefork", "-c", "2", "-n",
                    "code@%h", "-l", "INFO", "--without-mingle", "--without-gossip")
    processes.start("worker-http", "worker", "-Q", "http", "-P", "threads", "-c", "8", "-n", "http@%h",
                    "-l", "INFO", "--without-mingle", "--without-gossip")
    wait_for(lambda: {worker.split("@")[0] for worker in service.store.worker_reports()} >= {"code", "http"},
             timeout=60, message="workers to report ready")
    time.sleep(1.0)
    return processes


@pytest.fixture(scope="session")
def scheduler(processes, service):
    processes.start("beat", "beat", "-l", "INFO", "--pidfile=")
    wait_for(lambda: service.store.redis.get(service.store.keys.scheduler_lock), timeout=30,
             message="the scheduler to take its lock")
    return processes


@pytest.fixture(scope="session")
def stack(workers, scheduler, service):
    """Workers and scheduler running; yields the service to drive them."""
    return service


class Recorder(BaseHTTPRequestHandler):
    """A small HTTP service for API tasks: echoes, fixed statuses, flaky and slow endpoints."""

    requests: list[dict] = []
    counters: dict[str, int] = {}
    lock = threading.Lock()

    def log_message(self, *args) -> None:
        pass

    def _reply(self, status: int, body: object, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _handle(self) -> None:
        url = urlparse(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        record = {"method": self.command, "path": url.path, "query": query, "body": body,
                  "headers": dict(self.headers), "at": time.time()}
        with self.lock:
            self.requests.append(record)
        parts = url.path.strip("/").split("/")
        if parts[0] == "status":
            self._reply(int(parts[1]), {"status": int(parts[1])})
        elif parts[0] == "flaky":
            key, failures = parts[1], int(query.get("fail", "2"))
            with self.lock:
                self.counters[key] = self.counters.get(key, 0) + 1
                count = self.counters[key]
            self._reply(503 if count <= failures else 200, {"attempt": count})
        elif parts[0] == "slow":
            time.sleep(float(query.get("seconds", "2")))
            self._reply(200, {"slept": True})
        else:
            self._reply(200, {"method": self.command, "path": url.path, "args": query,
                              "json": json.loads(body) if body else None})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


def serve_locally(handler: type[BaseHTTPRequestHandler]):
    """A threading HTTP server for ``handler`` on a free loopback port (``.base`` is its URL) while the
    generator is suspended; shut down after. For module fixtures: ``yield from serve_locally(Handler)``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    server.base = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    server.requests = Recorder.requests
    yield server
    server.shutdown()
    server.server_close()
