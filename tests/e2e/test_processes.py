"""The process commands: ``taskman worker`` with its three workers, and ``taskman up`` on an embedded Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from core.config import Settings
from core.service import Service
from tests.conftest import ROOT, _process_env, wait_for

TASKMAN = [sys.executable, "-m", "tui.cli"]


def taskman(env, *args, input_text=None, timeout=30):
    return subprocess.run([*TASKMAN, *args], cwd=ROOT, env=env, input=input_text, capture_output=True,
                          text=True, timeout=timeout)


def stop(child: subprocess.Popen, sig=signal.SIGTERM, timeout=30) -> int:
    if child.poll() is None:
        os.killpg(child.pid, sig)
        try:
            return child.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            raise
    return child.returncode


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie whose parent died is not reaped here, so it counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_done(env, task_id, timeout=60):
    def done():
        shown = json.loads(taskman(env, "show", task_id, "--json").stdout)
        return shown["runs"] and shown["runs"][0]["state"] not in ("queued", "running") and shown["runs"][0]

    return wait_for(done, timeout, interval=0.3, message=f"a run of {task_id}")


def celery_children(parent: int) -> list[int]:
    """The Celery processes (workers, scheduler) ``parent`` started."""
    found = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found if b"celery" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def a_delayed_task_runs(env) -> None:
    """A delayed code task, submitted through the command line, is fired by the scheduler and run by a worker."""
    created = json.loads(taskman(env, "submit", "-", "--json", input_text=json.dumps(
        {"name": "soon", "delay_seconds": 1, "function_code": "def f():\n    return 6 * 7",
         "function_name": "f"})).stdout)
    assert wait_done(env, created["id"])["result"] == 42


def test_taskman_worker_serves_code_and_http_with_their_own_pools(taskman_env, http_server, tmp_path):
    namespace = f"w{uuid.uuid4().hex[:6]}"
    inherited = "0123456789abcdef"  # a start's name that only `taskman up` gives: not taken over from the shell
    env = _process_env({**taskman_env, "TASKMAN_NAMESPACE": namespace, "TASKMAN_WORKER_LIFE": inherited})
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([*TASKMAN, "worker", "-l", "INFO"], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = json.loads(taskman(env, "submit", "-", "--json", input_text=json.dumps(
            {"name": "c", "function_code": "def f():\n    return 'code'", "function_name": "f"})).stdout)
        api = json.loads(taskman(env, "submit", "-", "--json", input_text=json.dumps(
            {"name": "a", "api_url": f"{http_server.base_url}/get"})).stdout)
        assert wait_done(env, code["id"])["result"] == "code"
        assert wait_done(env, api["id"])["result"]["status_code"] == 200
        store = Service.from_settings(Settings(redis_url=taskman_env["TASKMAN_REDIS_URL"], namespace=namespace)).store
        nodes = [store.run_owner(wait_done(env, task["id"])["id"])[1] for task in (code, api)]
        assert all("#" in node and not node.endswith(inherited) for node in nodes), nodes

        def ahead() -> dict[str, int] | None:
            shown = json.loads(taskman(env, "workers", "--json").stdout)["workers"]
            found = {worker["name"].partition("@")[0]: worker["prefetch"] for worker in shown if worker["alive"]}
            return found if len(found) == 3 and None not in found.values() else None

        assert wait_for(ahead, timeout=30, message="three workers saying how many they take ahead") == {
            "code": 1, "registered": 4, "http": 1}, "a worker per queue, each with its prefetch setting"
        children = subprocess.run(["pgrep", "-f", "-g", str(worker.pid), "celery -A worker worker"],
                                  capture_output=True, text=True).stdout
        assert children.count("\n") >= 2
    finally:
        assert stop(worker) == 0
    text = (tmp_path / "worker.log").read_text()
    assert "(prefork)" in text and "(thread)" in text


def test_up_starts_an_embedded_redis_that_other_commands_find(tmp_path):
    env = _process_env({"TASKMAN_DATA_DIR": str(tmp_path / "data"), "TASKMAN_NAMESPACE": "up",
                        "TASKMAN_SCHEDULER_INTERVAL": "0.05"})
    assert "TASKMAN_REDIS_URL" not in env
    refused = taskman(env, "list")
    assert refused.returncode == 1 and "taskman up" in refused.stderr
    log = open(tmp_path / "up.log", "wb")
    up = subprocess.Popen([*TASKMAN, "up", "--no-console"], cwd=ROOT, env=env, stdout=log,
                          stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = tmp_path / "data" / "redis.json"
        wait_for(address.exists, timeout=30, message="the address file")
        redis_pid = json.loads(address.read_text())["pid"]
        a_delayed_task_runs(env)
    finally:
        assert stop(up, signal.SIGINT) == 0
    assert not address.exists()
    assert not alive(redis_pid)
    assert (tmp_path / "data" / "redis" / "appendonlydir").is_dir()
    again = taskman(env, "list")
    assert again.returncode == 1


def test_up_killed_outright_leaves_no_workers_and_the_next_up_adopts_its_redis(tmp_path):
    env = _process_env({"TASKMAN_DATA_DIR": str(tmp_path / "data"), "TASKMAN_NAMESPACE": "up2",
                        "TASKMAN_SCHEDULER_INTERVAL": "0.05"})
    address = tmp_path / "data" / "redis.json"
    first = subprocess.Popen([*TASKMAN, "up", "--no-console"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    redis_pid = None
    try:
        wait_for(address.exists, timeout=30, message="the address file")
        redis_pid = json.loads(address.read_text())["pid"]

        def workers_and_scheduler():
            pids = celery_children(first.pid)
            names = b" ".join(Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids)
            whole = all(word in names for word in (b"code@", b"registered@", b"http@", b"beat"))
            return pids if whole and len(pids) == 4 else None

        children = wait_for(workers_and_scheduler, timeout=30, message="three workers and the scheduler")
    except BaseException:
        if redis_pid is not None and alive(redis_pid):  # the workers die with their parent; Redis does not
            os.kill(redis_pid, signal.SIGKILL)
        raise
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGKILL)
        first.wait()
    wait_for(lambda: not any(alive(pid) for pid in children), timeout=30,
             message="the orphaned workers to stop")
    assert alive(redis_pid)
    second = subprocess.Popen([*TASKMAN, "up", "--no-console"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: json.loads(address.read_text()).get("owner") == second.pid, timeout=30,
                 message="the second up to adopt the Redis")
        created = json.loads(taskman(env, "submit", "-", "--json", input_text=json.dumps(
            {"name": "after-crash", "function_code": "def f():\n    return 'ok'", "function_name": "f"})).stdout)
        assert wait_done(env, created["id"])["result"] == "ok"
    finally:
        assert stop(second, signal.SIGTERM) == 0
    assert not alive(redis_pid)
    assert not address.exists()


def test_up_on_a_redis_of_ones_own_starts_the_workers_and_the_scheduler_and_leaves_redis_alone(taskman_env,
                                                                                                 tmp_path):
    """With ``TASKMAN_REDIS_URL`` set, ``up`` starts no Redis but still everything else: a delayed task (the
    scheduler) runs as code (a worker). Stopped, it stops what it started; that Redis keeps serving."""
    import redis

    env = _process_env({**taskman_env, "TASKMAN_NAMESPACE": f"own{uuid.uuid4().hex[:6]}",
                        "TASKMAN_DATA_DIR": str(tmp_path / "data"), "TASKMAN_SCHEDULER_INTERVAL": "0.05"})
    log = open(tmp_path / "up.log", "wb")
    up = subprocess.Popen([*TASKMAN, "up", "--no-console"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
    log.close()
    try:
        children = wait_for(lambda: len(pids := celery_children(up.pid)) == 4 and pids, timeout=30,
                            message="three workers and the scheduler")
        a_delayed_task_runs(env)
    finally:
        assert stop(up, signal.SIGINT) == 0
    assert not any(alive(pid) for pid in children)
    assert not (tmp_path / "data" / "redis.json").exists(), "no embedded Redis was started"
    assert redis.Redis.from_url(env["TASKMAN_REDIS_URL"]).ping()
    assert f"taskman is up on {env['TASKMAN_REDIS_URL'].rsplit('@', 1)[-1]}" in (tmp_path / "up.log").read_text()
