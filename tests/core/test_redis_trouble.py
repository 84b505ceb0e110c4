"""A Redis that answers but refuses writes -- its disk full (``MISCONF``), or at its ``maxmemory`` -- is waited
out like an unreachable one: the scheduler backs off instead of crashing (under ``taskman up`` it was restarted
in a loop, then left down a minute as one that keeps dying), front ends say what Redis said, nothing is stored,
and everything goes on by itself once Redis takes writes again.

Each test runs its own redis-server: the session's Redis, shared by the tests beside these, must not refuse
writes. A disk that cannot be written is made by removing the server's folder before it saves (which stops root
too); Redis takes writes again once told not to stop them (``stop-writes-on-bgsave-error``), as it does by
itself once a save succeeds.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid

import httpx
import pytest
import redis

from core import metrics
from core.embedded import RedisServer, redis_answers, write_address
from core.errors import NoRedis
from core.redis_trouble import RedisCannotSave
from core.scheduler import Scheduler
from tests.conftest import _process_env
from tests.e2e.apiserver import ApiServer, process_env
from tests.e2e.test_processes import taskman
from tui import feed


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "redis", appendonly=False, die_with_parent=True).start()
    yield server
    try:
        redis.Redis.from_url(server.url).config_set("save", "")  # no last save into the removed folder on SIGTERM
    except redis.exceptions.RedisError:
        pass
    server.stop()


@pytest.fixture
def service(settings, own_redis):
    from core.service import Service

    return Service.from_settings(settings.replace(redis_url=own_redis.url, namespace=f"rt{uuid.uuid4().hex[:6]}"))


@pytest.fixture
def api(service, own_redis, tmp_path):
    """``taskman api`` on the test's own Redis, started while Redis still takes writes."""
    env = process_env({"TASKMAN_REDIS_URL": own_redis.url, "TASKMAN_NAMESPACE": service.settings.namespace})
    server = ApiServer(env, tmp_path / "api.log").start()
    yield server
    server.stop()


def cannot_save(client: redis.Redis, folder) -> None:
    """Make the server fail a save (its folder is gone), so it refuses writes (stop-writes-on-bgsave-error, which
    holds where saves are configured)."""
    client.config_set("save", "3600 1")
    shutil.rmtree(folder)
    client.bgsave()
    deadline = time.monotonic() + 10
    while client.info("persistence")["rdb_last_bgsave_status"] != "err":
        assert time.monotonic() < deadline, "the save did not fail"
        time.sleep(0.05)


def test_a_redis_that_cannot_save_refuses_writes_as_an_outage_and_everything_goes_on_after(service, own_redis, api,
                                                                                           tmp_path):
    client = service.store.redis
    sched = Scheduler(service.store, service.dispatcher, lock_ttl=2)
    sched.tick()
    assert sched.is_leader
    cannot_save(client, tmp_path / "redis")
    with pytest.raises(RedisCannotSave, match="cannot save to its disk"):
        client.set("x", "1")
    assert client.get("x") is None, "reads go on"
    with pytest.raises(NoRedis) as refused:
        service.create({"name": "while full", "task_name": "taskman.echo", "delay_seconds": 1})
    assert refused.value.answering and "cannot save to its disk" in refused.value.message
    assert "nothing was changed" in refused.value.message
    assert service.list_tasks() == [], "nothing stored"
    wait = sched.tick()  # waits it out, as for an unreachable Redis: said once, backed off
    assert sched.outage_since is not None and wait > 0
    data_dir = tmp_path / "data"  # as `taskman up` leaves it: the command line finds this server and says why
    data_dir.mkdir()
    write_address(data_dir, own_redis.url, own_redis.pid)
    env = _process_env({"TASKMAN_DATA_DIR": str(data_dir), "TASKMAN_NAMESPACE": service.settings.namespace})
    done = taskman(env, "submit", "-", input_text=json.dumps({"name": "cli", "task_name": "taskman.echo"}))
    assert done.returncode == 1 and done.stderr.startswith("error: Redis cannot save to its disk"), done.stderr
    assert "No Redis is configured" not in done.stderr
    assert redis_answers(own_redis.url), "an `up` looking at it finds it there (it neither replaces nor stops it)"
    assert service.status()["refuses_writes"] == "its last snapshot failed (is its disk full?)"
    assert feed.status(service)["walls"].startswith("REDIS REFUSES WRITES: its last snapshot failed"), \
        "the console's status line says it, in red"
    assert "taskman_redis_refuses_writes 1.0" in metrics.render(service.metrics_snapshot()).decode()
    health = httpx.get(f"{api.url}/api/health", timeout=10)
    assert health.status_code == 200, health.text  # reads still work: no reason to pull the API out of rotation
    assert health.json()["status"] == "degraded"
    assert health.json()["redis"] == "refuses writes: its last snapshot failed (is its disk full?)"
    client.config_set("stop-writes-on-bgsave-error", "no")  # as a save that succeeds does
    sched.tick()
    assert sched.outage_since is None
    task = service.create({"name": "after", "task_name": "taskman.echo"})
    assert [t.id for t in service.list_tasks()] == [task.id]


def test_a_full_redis_refuses_writes_as_an_outage_and_everything_goes_on_after(service):
    client = service.store.redis
    sched = Scheduler(service.store, service.dispatcher, lock_ttl=2)
    sched.tick()
    due = service.create({"name": "due", "task_name": "taskman.echo", "delay_seconds": 0.2})
    time.sleep(0.3)
    assert service.status()["refuses_writes"] is None
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", str(int(client.info("memory")["used_memory"]) // 2))  # over it already
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("x", "1")
    with pytest.raises(NoRedis) as refused:
        service.create({"name": "while full", "task_name": "taskman.echo"})
    assert refused.value.answering and "maxmemory" in refused.value.message
    assert service.status()["refuses_writes"] == "it is at its maxmemory"
    sched.tick()  # its fire is a write: waited out, said once
    assert sched.outage_since is not None and service.runs(due.id) == []
    client.config_set("maxmemory", "0")
    sched.tick()
    assert sched.outage_since is None
    assert len(service.runs(due.id)) == 1, "fired once Redis took writes again"
    assert service.status()["refuses_writes"] is None
    assert service.create({"name": "after", "task_name": "taskman.echo"}).name == "after"
    assert "taskman_redis_refuses_writes 0.0" in metrics.render(service.metrics_snapshot()).decode()
