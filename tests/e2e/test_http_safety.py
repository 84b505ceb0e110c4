"""API tasks through the real http worker: the SSRF guard, and secrets that never come back.

The session's workers allow-list ``127.0.0.1`` only (``TASKMAN_HTTP_ALLOW``), so every other spelling of
an internal address must be refused -- without a connection, without a retry -- while the allow-listed
address keeps working. The local server here echoes what it was sent (headers, query, body), the way
httpbin does, so a secret the task sends would come straight back into the run record if nothing
masked it.
"""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import pytest

from core.models import RunState
from tests.conftest import serve_locally, wait_for

pytestmark = pytest.mark.usefixtures("stack")

SECRETS = {"Authorization": "Bearer tok-SECRET-1234", "X-Api-Key": "key-SECRET-5678",
           "Cookie": "session=cookie-SECRET-9012"}
QUERY_SECRET = "qs-SECRET-3456"


class Echo(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def log_message(self, *args) -> None:
        pass

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        record = {"path": parts.path, "raw": self.path, "args": {k: v[0] for k, v in parse_qs(parts.query).items()},
                  "headers": dict(self.headers.items())}
        self.seen.append(record)
        if parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", record["args"]["to"])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if parts.path == "/slow":
            time.sleep(3)
        status = 500 if parts.path == "/fail" else 200
        body = json.dumps({"echo": record, "url": f"http://127.0.0.1{self.path}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "server-session=srv-SECRET-7890")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _handle


@pytest.fixture(scope="module")
def echo():
    yield from serve_locally(Echo)


def final_runs(service, task_id, count=1, timeout=20.0):
    def done():
        runs = service.get(task_id).runs
        return runs if len(runs) >= count and all(run.state.final for run in runs) else None

    return wait_for(done, timeout, message=f"{count} final run(s) of {task_id}")


# --------------------------------------------------------------------------------------------
# The guard


def blocked_targets(port: int) -> dict[str, str]:
    return {
        "loopback other than the allowed one": f"http://127.0.0.2:{port}/",
        "loopback, decimal": f"http://2130706434:{port}/",
        "loopback, IPv6": f"http://[::1]:{port}/",
        "loopback, IPv4-mapped": f"http://[::ffff:127.0.0.2]:{port}/",
        "loopback, NAT64": f"http://[64:ff9b::7f00:2]:{port}/",
        "loopback, 6to4": f"http://[2002:7f00:2::]:{port}/",
        "unspecified": f"http://0.0.0.0:{port}/",
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "metadata, IPv4-mapped": "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "private": "http://10.0.0.1/",
        "private, hex": "http://0xa000001/",
        "shared address space": "http://100.64.0.1/",
        "multicast": "http://224.0.0.1/",
        "link-local IPv6": "http://[fe80::1]/",
    }


def test_blocked_addresses_fail_with_a_clear_reason_and_are_not_retried(stack, echo):
    before = len(Echo.seen)
    tasks = {label: stack.create({"name": f"ssrf {label}", "api_url": url, "max_retries": 2, "retry_backoff": 0.1})
             for label, url in blocked_targets(echo.server_address[1]).items()}
    allowed = stack.create({"name": "ssrf allowed", "api_url": f"{echo.base}/ok", "max_retries": 2})
    for label, task in tasks.items():
        runs = final_runs(stack, task.id)
        assert len(runs) == 1, f"{label}: a blocked address is not retried"
        assert runs[0].state is RunState.FAILED, label
        assert runs[0].error.startswith("blocked by the SSRF guard: "), (label, runs[0].error)
        assert "so no connection was made" in runs[0].error and "TASKMAN_HTTP_ALLOW" in runs[0].error
    ok = final_runs(stack, allowed.id)[0]
    assert ok.state is RunState.SUCCEEDED and ok.result["status_code"] == 200, ok.error
    assert [record["path"] for record in Echo.seen[before:]] == ["/ok"], "only the allowed target was reached"


def test_a_redirect_into_a_blocked_address_is_refused_at_that_hop(stack, echo):
    before = len(Echo.seen)
    target = f"http://127.0.0.2:{echo.server_address[1]}/inside"
    task = stack.create({"name": "ssrf redirect", "api_url": f"{echo.base}/redirect?to={target}", "max_retries": 2})
    run, = final_runs(stack, task.id)
    assert run.state is RunState.FAILED
    assert run.error.startswith("blocked by the SSRF guard: 127.0.0.2 is a loopback address")
    assert [record["path"] for record in Echo.seen[before:]] == ["/redirect"]


# --------------------------------------------------------------------------------------------
# Secrets


def everything_recorded_about(stack, processes, task_id: str) -> str:
    """All that taskman stored or logged about a task: run hashes as stored, the task as shown, its log
    lines and events, and the http worker's own log file."""
    redis, keys = stack.store.redis, stack.store.keys
    task = stack.get(task_id)
    parts = [json.dumps(task.to_dict(), ensure_ascii=False)]
    parts += [json.dumps(redis.hgetall(keys.run(run.id)), ensure_ascii=False) for run in task.runs]
    parts += [json.dumps(entry, ensure_ascii=False) for _, entry in stack.store.stream_tail("logs", 5000)
              if entry.get("task") == task_id]
    parts += [entry["event"] for _, entry in stack.store.stream_tail("events", 5000) if task_id in entry["event"]]
    parts.append((processes.log_dir / "worker-http.log").read_text(errors="replace"))
    return "\n".join(parts)


def secret_strings() -> list[str]:
    return ["tok-SECRET-1234", "key-SECRET-5678", "cookie-SECRET-9012", QUERY_SECRET, "srv-SECRET-7890"]


@pytest.mark.parametrize("path, state, timeout", [("/echo", RunState.SUCCEEDED, 10), ("/fail", RunState.FAILED, 10),
                                                  ("/slow", RunState.TIMED_OUT, 1)],
                         ids=["answered", "answered-500", "timed-out"])
def test_secrets_sent_never_appear_in_records_logs_or_errors(stack, processes, echo, path, state, timeout):
    before = len(Echo.seen)
    task = stack.create({"name": f"secrets {path}", "api_url": f"{echo.base}{path}?api_key={QUERY_SECRET}&page=2",
                         "headers": SECRETS, "timeout": timeout})
    run, = final_runs(stack, task.id, timeout=20)
    assert run.state is state, run.error
    sent = Echo.seen[before]
    assert sent["headers"]["Authorization"] == SECRETS["Authorization"] and sent["args"]["api_key"] == QUERY_SECRET
    if state is not RunState.TIMED_OUT:
        body = run.result["body"]
        assert body["echo"]["headers"]["Authorization"] == "***"
        assert body["echo"]["headers"]["X-Api-Key"] == "***"
        assert body["echo"]["args"] == {"api_key": "***", "page": "2"}
        assert run.result["headers"]["set-cookie"] == "***"
        assert "api_key=***" in run.result["url"]
    else:
        assert "api_key=***" in run.error
    recorded = everything_recorded_about(stack, processes, task.id)
    for secret in secret_strings():
        assert secret not in recorded, f"{secret} leaked"
    shown = task.to_dict()["spec"]
    assert shown["headers"]["Authorization"] == "Bearer ***" and "api_key=***" in shown["api_url"]
