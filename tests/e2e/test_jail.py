"""The jail through real workers: walls reported, the language wall switched off, crashes contained.

A worker started with the test-only switch ``TASKMAN_TEST_UNRESTRICTED_CODE=1`` (in a namespace of its
own, so no other test's run reaches it) runs code tasks as plain Python inside the jail. What such code
still cannot do is what an attacker who breaks RestrictedPython could not do either.
"""

from __future__ import annotations

import os
import textwrap
import uuid

import pytest

from core.config import Settings
from core.models import RunState
from tests.conftest import Processes, _process_env, wait_for

WORKER = ("worker", "-Q", "code", "-P", "prefork", "-c", "1", "-n", "jail@%h", "-l", "INFO",
          "--without-mingle", "--without-gossip")

PROBES = r'''
import os, socket, signal

def attempt(action):
    try:
        return "allowed: " + repr(action())[:200]
    except BaseException as exc:
        return "refused: " + repr(exc)[:200]

def read(path):
    with open(path, "rb") as handle:
        return handle.read(100)

def connect(port):
    sock = socket.socket()
    sock.connect(("127.0.0.1", port))
    return "connected"

def write(path):
    with open(path, "w") as handle:
        handle.write("x")
    return "wrote"

def main(redis_port, http_port, redis_dir, victim):
    return {
        "environment": sorted(name for name in os.environ if "TASKMAN" in name or "REDIS" in name) or "refused: none",
        "redis port": attempt(lambda: connect(redis_port)),
        "http port": attempt(lambda: connect(http_port)),
        "own environ": attempt(lambda: b"TASKMAN" in read("/proc/self/environ") or ValueError("no secrets")),
        "parent environ": attempt(lambda: read(f"/proc/{os.getppid()}/environ")),
        "worker environ": attempt(lambda: read(f"/proc/{victim}/environ")),
        "redis data": attempt(lambda: os.listdir(redis_dir)),
        "shadow": attempt(lambda: read("/etc/shadow")),
        "write tmp": attempt(lambda: write("/tmp/taskman-jail-e2e")),
        "exec": attempt(lambda: os.execv("/bin/sh", ["sh", "-c", "id"])),
        "fork": attempt(os.fork),
        "signal worker": attempt(lambda: os.kill(victim, signal.SIGKILL)),
        "memory": attempt(lambda: len(bytearray(2 * 1024 ** 3))),
    }
'''


@pytest.fixture(scope="module")
def open_worker(taskman_env, tmp_path_factory):
    """(service, worker process) for a namespace whose one worker runs code without the language wall."""
    from core.service import Service

    env = {**taskman_env, "TASKMAN_NAMESPACE": f"jail{uuid.uuid4().hex[:6]}", "TASKMAN_TEST_UNRESTRICTED_CODE": "1",
           "TASKMAN_MEMORY_LIMIT_MB": "256"}
    procs = Processes(_process_env(env), tmp_path_factory.mktemp("jail-logs"))
    values = {key.removeprefix("TASKMAN_").lower(): value for key, value in env.items()
              if key != "TASKMAN_TEST_UNRESTRICTED_CODE"}
    service = Service.from_settings(Settings(**values))
    worker = procs.start("worker-jail", *WORKER)
    wait_for(lambda: service.store.worker_reports(), timeout=60, message="the unrestricted worker to be ready")
    yield service, worker
    procs.stop_all()


def final_run(service, task_id: str):
    return wait_for(lambda: (r := service.get(task_id).runs) and r[0].state.final and r[0], timeout=40,
                    message="the run to end")


def test_code_workers_report_their_walls(stack):
    reports = stack.store.worker_reports()
    isolation = [detail["isolation"] for detail in reports.values() if "code" in detail.get("queues", ())]
    assert isolation, reports
    for report in isolation:
        assert report["missing"] == [], report
        assert all(report["up"].values()), report


def test_a_worker_with_a_wall_down_is_named_everywhere(settings, redis_server):
    """What front ends say when a code worker reports a missing wall (its real report is tested above)."""
    from core.service import Service

    service = Service.from_settings(settings.replace(namespace=f"weak{uuid.uuid4().hex[:6]}"))
    service.store.record_registered([], "code@weak", ["code"], isolation={
        "up": {"landlock": False}, "why": {"landlock": "the kernel offers no Landlock"}, "missing": ["landlock"],
        "accept_weak": False})
    service.store.heartbeat("code@weak")
    service.store.record_registered([], "code@gone", ["code"], isolation={"up": {}, "missing": ["seccomp"]})
    ok, summary = service.isolation_summary()
    assert not ok
    assert summary == "isolation walls down - code@weak: landlock down, refuses code runs"


def test_the_jail_holds_with_the_language_wall_down(open_worker, redis_server, http_server):
    service, worker = open_worker
    task = service.create({"name": "probes", "function_code": PROBES, "function_name": "main",
                           "args": [redis_server.port, http_server.server_address[1], str(redis_server.directory),
                                    worker.pid]})
    run = final_run(service, task.id)
    assert run.state is RunState.SUCCEEDED, run.error
    refused = {name: outcome for name, outcome in run.result.items()}
    leaks = {name: outcome for name, outcome in refused.items() if not str(outcome).startswith("refused")}
    assert not leaks, leaks
    assert "MemoryError" in refused["memory"]
    assert not os.path.exists("/tmp/taskman-jail-e2e")
    assert worker.poll() is None, "the worker survived"


def test_a_crashing_run_fails_cleanly_once_and_the_worker_goes_on(open_worker):
    service, worker = open_worker
    crash = service.create({"name": "segfault", "function_name": "main", "max_retries": 2,
                            "function_code": "import os, signal\n\n"
                                             "def main():\n    os.kill(os.getpid(), signal.SIGSEGV)\n"})
    run = final_run(service, crash.id)
    assert run.state is RunState.FAILED
    assert run.error == "the run's process crashed: SIGSEGV"
    assert len(service.get(crash.id).runs) == 1, "a crash is not retried or redelivered"
    after = service.create({"name": "after", "function_name": "main",
                            "function_code": "def main():\n    return 'alive'\n"})
    assert final_run(service, after.id).result == "alive"
    assert worker.poll() is None


def test_restricted_code_recursing_deep_in_c_does_not_take_the_worker_down(stack):
    source = textwrap.dedent("""
        def main():
            t = ()
            for i in range(300000):
                t = (t,)
            return hash(t) != 0
    """)
    task = stack.create({"name": "deep-hash", "function_code": source, "function_name": "main"})
    run = final_run(stack, task.id)
    assert run.state is RunState.SUCCEEDED and run.result is True, run.error


REVIEW_ESCAPES = {
    "UserString.format": "collections.UserString('{0.__init__.__globals__[_sys].modules[os].environ}').format("
                         "collections.UserString)",
    "UserString.format_map": "collections.UserString('{x.__init__.__globals__[_sys].modules[os].environ}')"
                             ".format_map({'x': collections.UserString})",
    "super().format": "super(Text, Text('{0.__init__.__globals__[_sys].modules[os].environ}')).format("
                      "collections.UserString)",
    "AttributeError.obj": "[e.obj for e in [None] if False] or catch()",
}
ESCAPE_SOURCE = """
import collections
class Text(str):
    pass
def catch():
    try:
        collections.UserString('x').nothing_here
    except AttributeError as e:
        return e.obj
def main():
    return {expression}
"""


@pytest.mark.parametrize("name", sorted(REVIEW_ESCAPES))
def test_the_reviews_escapes_fail_through_a_real_worker(stack, name):
    task = stack.create({"name": f"escape-{name}", "function_name": "main",
                         "function_code": ESCAPE_SOURCE.format(expression=REVIEW_ESCAPES[name])})
    run = final_run(stack, task.id)
    assert run.state is RunState.FAILED, (run.result, run.error)
    shown = f"{run.result} {run.error} {run.traceback} {run.output}"
    assert "TASKMAN_" not in shown and "redis://" not in shown
