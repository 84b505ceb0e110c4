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
import select
import socket
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

from core import auth
from core.models import RunState
from tests.conftest import serve_locally, wait_for
from tests.e2e.apiserver import ApiServer, process_env
from tests.e2e.conftest import role_clients, token_client
from tests.e2e.test_hostile import assert_stack_up, cli_bytes, final_run, marker

FAR_DELAY = 30 * 24 * 3600


@pytest.fixture(scope="module")
def clients(api, stack):
    yield from role_clients(api, stack.store, "f")


def cli(taskman_env, *args: str):
    """``taskman ARGS``, output captured as text."""
    done = cli_bytes(taskman_env, *args)
    done.stdout, done.stderr = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    return done


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


def refused_while_spent(call, audited: list[str], target: str, tries: int = 3) -> bool:
    """True once ``call`` is refused with 429. The allowance refills one change every ``60 / RATE`` s, so on a
    slow machine a call made after the burst may find a change refilled and pass (and be audited, on
    ``target``); it spent that change, so the same call made again at once is refused."""
    for _ in range(tries):
        answer = call()
        if answer.status_code == 429:
            return True
        assert answer.status_code == 200, answer.text
        audited.append(target)
    return False


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
        audited = list(created)
        for action in ("stop", "pause", "run"):
            assert refused_while_spent(lambda action=action: operator.post(f"/api/tasks/{created[0]}/{action}"),
                                       audited, created[0]), f"{action} was never refused"
        assert viewer.get(f"/api/tasks/{created[0]}").status_code == 200, "reads are not limited"

        after = audit_ids(stack)
        assert before <= after, "no entry written before the burst was pushed out"
        mine = [fields["target"] for _, fields in stack.store.redis.xrange(stack.store.keys.audit)
                if fields["actor"] == f"api:{name}"]
        assert mine == audited, "each change audited, no refused one"
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


# -- 8, 9. API tasks: decompression bombs, and requests that would never end ----------------------


def gzipped_zeros(size: int, layers: int = 1) -> bytes:
    """``size`` zero bytes gzipped ``layers`` times, compressed a MiB at a time (never held whole)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    chunk = b"\0" * (1 << 20)
    data = b"".join(packer.compress(chunk) for _ in range(size // len(chunk))) + packer.flush()
    for _ in range(layers - 1):
        data = gzip.compress(data, 9)
    return data


BOMB = gzipped_zeros(10 << 20)  # 10 MiB inflated, ~10 KB on the wire
DOUBLE_BOMB = gzipped_zeros(512 << 20, layers=2)  # 512 MiB inflated, a few KB on the wire


class Hostile(BaseHTTPRequestHandler):
    """Answers that attack the client: bombs, and a server that trickles one byte a second forever."""

    protocol_version = "HTTP/1.1"
    trickling = 0
    lock = threading.Lock()

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/trickle"):
            self._trickle()
            return
        body, coding = {"/bomb": (BOMB, "gzip"), "/gzip-gzip": (DOUBLE_BOMB, "gzip, gzip")}[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Encoding", coding)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _trickle(self) -> None:
        with self.lock:
            Hostile.trickling += 1
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            for _ in range(300):  # one byte a second until the client hangs up (or five minutes pass)
                self.wfile.write(b"a")
                self.wfile.flush()
                readable, _, _ = select.select([self.connection], [], [], 1.0)
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    return  # the client closed the connection (it sends nothing else)
        except OSError:
            pass
        finally:
            with self.lock:
                Hostile.trickling -= 1


@pytest.fixture(scope="module")
def hostile():
    yield from serve_locally(Hostile)


def http_worker(workers):
    """The threads-pool worker process serving the ``http`` queue, and its number of threads."""
    for child in workers.children:
        if "http" in child.args and "threads" in child.args:
            return child, int(child.args[child.args.index("-c") + 1])
    raise AssertionError("no http worker")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_decompression_bombs_fail_naming_the_cap_and_the_http_worker_stays_small(
        stack, workers, clients, http_server, hostile):
    operator, cap = clients["operator"], stack.settings.http_body_cap
    worker, _ = http_worker(workers)
    before, peak, sampling = rss_mb(worker.pid), [0.0], threading.Event()

    def sample() -> None:
        while not sampling.wait(0.02):
            peak[0] = max(peak[0], rss_mb(worker.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        ids = {}
        for path in ("/bomb", "/gzip-gzip"):
            created = operator.post("/api/tasks", json={"name": marker(), "api_url": hostile.base + path})
            assert created.status_code == 201, created.text
            ids[path] = created.json()["id"]
        bomb, double = (final_run(stack, ids[path]) for path in ("/bomb", "/gzip-gzip"))
    finally:
        sampling.set()
        sampler.join()
    assert bomb.state is RunState.FAILED and f"cap of {cap} bytes (http_body_cap)" in bomb.error, bomb.error
    assert "decompression bomb" in bomb.error and bomb.attempt == 1, "a bomb is not retried"
    assert double.state is RunState.FAILED and "Content-Encoding: gzip, gzip" in double.error, double.error
    assert "one layer at most" in double.error
    assert peak[0] - before < 40, f"http worker RSS {before:.0f} MB before, {peak[0]:.0f} MB at its peak"
    assert worker.poll() is None, "the http worker is alive"
    print(f"http worker RSS: {before:.1f} MB before, {peak[0]:.1f} MB peak during the bombs")
    assert_stack_up(stack, http_server, clients)


def test_a_trickling_server_cannot_outlast_the_timeout(stack, clients, http_server, hostile):
    created = clients["operator"].post("/api/tasks", json={"name": marker(), "api_url": hostile.base + "/trickle",
                                                           "timeout": 3})
    assert created.status_code == 201, created.text
    run = final_run(stack, created.json()["id"], timeout=30)
    took = run.finished_at - run.started_at
    assert run.state is RunState.TIMED_OUT and "timed out after 3s" in run.error, (run.state, run.error)
    assert 3 <= took < 4, f"ended {took:.2f} s after it started, its timeout is 3 s"
    assert wait_for(lambda: Hostile.trickling == 0, 5, message="the server to see the connection closed")
    assert_stack_up(stack, http_server, clients)


def test_stop_abandons_running_api_requests_and_frees_their_threads(stack, workers, clients, http_server, hostile):
    operator = clients["operator"]
    _, threads = http_worker(workers)
    tasks = []
    for _ in range(threads):  # every thread of the http worker held by a request that would last a minute
        created = operator.post("/api/tasks", json={"name": marker(), "api_url": hostile.base + "/trickle",
                                                    "timeout": 60})
        assert created.status_code == 201, created.text
        tasks.append(created.json()["id"])
    wait_for(lambda: Hostile.trickling == threads, 20, message=f"{threads} requests trickling")
    stopped_at = time.monotonic()
    for task_id in tasks:
        answer = operator.post(f"/api/tasks/{task_id}/stop")
        assert answer.status_code == 200, answer.text
    last_stop = time.monotonic()
    wait_for(lambda: Hostile.trickling == 0, 10, interval=0.02, message="every trickling request abandoned")
    abandoned_in = time.monotonic() - last_stop
    follower = operator.post("/api/tasks", json={"name": marker(), "api_url": f"{http_server.base_url}/get"})
    run = final_run(stack, follower.json()["id"], timeout=10)
    assert run.state is RunState.SUCCEEDED, (run.state, run.error)
    followed_in = time.monotonic() - last_stop
    print(f"{threads} stops sent in {last_stop - stopped_at:.2f} s; every request abandoned {abandoned_in:.2f} s "
          f"after the last; the next API task ended {followed_in:.2f} s after it")
    assert abandoned_in < 2 and followed_in < 5
    for task_id in tasks:
        assert stack.get(task_id).runs[0].state is RunState.STOPPED, "a late finish never overwrites the stop"
    assert_stack_up(stack, http_server, clients)


# -- 10. log streams that outlive their token ------------------------------------------------------


def test_a_log_stream_closes_within_seconds_of_its_token_being_revoked(taskman_env, stack, api, clients,
                                                                         http_server):
    name = f"stream-{uuid.uuid4().hex[:6]}"
    secret, _ = auth.create(stack.store, name, "viewer", actor="test")
    other_secret, _ = auth.create(stack.store, f"{name}-other", "viewer", actor="test")
    streams_before = clients["anonymous"].get("/api/health").json()["log_streams"]
    timeout = httpx.Timeout(10, read=30)
    with token_client(api, secret) as doomed, token_client(api, other_secret) as other:
        doomed.timeout = other.timeout = timeout
        with doomed.stream("GET", "/api/logs") as response, other.stream("GET", "/api/logs") as kept:
            assert response.status_code == 200 and kept.status_code == 200
            lines, kept_lines = response.iter_lines(), kept.iter_lines()
            assert next(lines) == "retry: 2000" and next(kept_lines) == "retry: 2000"
            revoked = cli(taskman_env, "token", "revoke", name)
            assert revoked.returncode == 0, revoked.stderr
            revoked_at = time.monotonic()
            rest = list(lines)  # ends when the server closes the stream
            closed_in = time.monotonic() - revoked_at
            assert closed_in < 5, f"the stream outlived its token by {closed_in:.1f} s"
            assert "event: error" in rest and any('"Unauthorized"' in line for line in rest), rest[-5:]
            print(f"the stream ended {closed_in:.2f} s after `taskman token revoke`")
            task = clients["operator"].post("/api/tasks", json={"name": marker(),
                                                                "api_url": f"{http_server.base_url}/get"})
            task_id = task.json()["id"]
            for line in kept_lines:  # a stream whose token stands carries on, with the new task's lines
                if task_id in line:
                    break
        assert doomed.get("/api/tasks").status_code == 401
    wait_for(lambda: clients["anonymous"].get("/api/health").json()["log_streams"] == streams_before, timeout=5,
             message="the streams' slots given back")
    assert_stack_up(stack, http_server, clients)


def test_only_the_http_worker_has_a_data_memory_limit(workers):
    """The threads-pool worker runs every API request in one process: its data memory is capped; the
    prefork code worker (whose children would inherit a limit) is not."""
    def max_data(pid: int) -> str:
        line = next(line for line in open(f"/proc/{pid}/limits") if line.startswith("Max data size"))
        return line.split()[3]

    by_queue = {("http" if "http" in child.args else "code"): child for child in workers.children
                if "worker" in child.args and child.poll() is None}
    assert max_data(by_queue["http"].pid) == str(1024 * 1024 * 1024)
    assert max_data(by_queue["code"].pid) == "unlimited"
