"""The audit trail and the monitoring counters, on real Redis through the real service and runner code.

No workers: runs are queued into a namespace of the test's own (nobody consumes them, so queue depths
are exact) and finished by calling ``Runner`` directly, the same code a worker runs.
"""

from __future__ import annotations

import math
import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core import audit, metrics
from core.errors import InvalidSpec
from core.models import RunState
from core.runner import Runner
from core.service import Service

FAR = 30 * 24 * 3600


@pytest.fixture()
def service(settings, redis_server) -> Service:
    return Service.from_settings(settings.replace(namespace=f"mon{uuid.uuid4().hex[:8]}"))


def api_spec(**extra) -> dict:
    return {"name": "probe", "api_url": "http://127.0.0.1:9/x", "delay_seconds": FAR, **extra}


def trail(service: Service) -> list[tuple[str, str, str]]:
    """(actor, action, target) of every audit entry, oldest first."""
    return [(e["actor"], e["action"], e["target"]) for e in reversed(audit.recent(service.store, 1000))]


# -- audit -----------------------------------------------------------------------------------------


def test_every_change_through_the_service_is_audited_with_its_actor(service):
    task = service.create(api_spec())
    console = service.acting_as("console:dave")
    console.update(task.id, {"name": "renamed", "timeout": 5})
    console.pause(task.id)
    console.resume(task.id)
    run = console.run_now(task.id)
    console.stop(task.id)
    service.delete(task.id)
    assert trail(service) == [("system", "create", task.id), ("console:dave", "edit", task.id),
                              ("console:dave", "pause", task.id), ("console:dave", "resume", task.id),
                              ("console:dave", "run", task.id), ("console:dave", "stop", task.id),
                              ("system", "delete", task.id)]
    entries = {e["action"]: e for e in audit.recent(service.store, 100)}
    assert entries["create"]["detail"] == {"name": "probe", "kind": "api", "mode": "delayed"}
    assert entries["edit"]["detail"] == {"name": "renamed", "fields": ["name", "timeout"]}
    assert entries["run"]["detail"]["run_id"] == run.id
    assert entries["stop"]["detail"]["runs"] == [run.id]
    assert entries["delete"]["detail"]["name"] == "renamed"
    assert all(e["ts"].endswith("+00:00") for e in entries.values())


def test_a_batch_is_audited_per_task_and_a_refusal_leaves_no_entry(service):
    tasks = service.create_many([api_spec(name="a"), api_spec(name="b")])
    assert trail(service) == [("system", "create", tasks[0].id), ("system", "create", tasks[1].id)]
    with pytest.raises(InvalidSpec):
        service.update(tasks[0].id, {"cron_expression": "never"})
    with pytest.raises(InvalidSpec):
        service.create_many([api_spec(), {"name": "broken"}])
    assert len(trail(service)) == 2


def test_audit_pages_back_by_entry_id_and_refuses_bad_paging(service):
    for index in range(5):
        service.create(api_spec(name=f"t{index}"))
    newest = audit.recent(service.store, 2)
    older = audit.recent(service.store, 10, before=newest[-1]["id"])
    assert [e["detail"]["name"] for e in newest + older] == ["t4", "t3", "t2", "t1", "t0"]
    for kwargs in ({"limit": 0}, {"limit": 5000}, {"before": "yesterday"}, {"before": "1-2-3"}):
        with pytest.raises(InvalidSpec):
            audit.recent(service.store, **{"limit": 10, **kwargs})


# -- metrics ---------------------------------------------------------------------------------------


def test_run_increments_put_a_duration_in_exactly_one_bucket():
    counts, sums = metrics.run_increments("code", RunState.SUCCEEDED, 30.0)
    assert counts == {"runs:code:succeeded": 1, "duration:code:le:0.05": 1, "duration:code:count": 1}
    assert sums == {"duration:code:sum": pytest.approx(0.03)}
    counts, _ = metrics.run_increments("api", RunState.RETRYING, 5_000_000.0)
    assert counts["retries:api"] == 1 and counts["duration:api:le:+Inf"] == 1
    counts, sums = metrics.run_increments("api", RunState.STOPPED, None)
    assert counts == {"runs:api:stopped": 1} and sums == {}
    assert metrics.bucket_for(0.005, metrics.DURATION_BUCKETS) == "0.005"
    assert metrics.bucket_for(math.inf, metrics.DURATION_BUCKETS) == "+Inf"


def test_finishes_are_counted_once_and_a_finish_that_lost_to_a_stop_is_not(service, settings):
    runner = Runner(service.store, settings, "test-worker")
    task = service.create(api_spec(max_retries=1))
    first = service.run_now(task.id)
    started = runner.begin(first.id, task.id)
    assert runner.finish(started, RunState.FAILED, error="boom", retryable=True) is RunState.RETRYING
    second = service.run_now(task.id)
    started = runner.begin(second.id, task.id)
    assert runner.finish(started, RunState.SUCCEEDED, result={"ok": True}) is RunState.SUCCEEDED
    assert runner.finish(started, RunState.SUCCEEDED, result={"ok": True}) is None
    third = service.run_now(task.id)
    started = runner.begin(third.id, task.id)
    service.stop(task.id)
    assert runner.finish(started, RunState.SUCCEEDED) is None
    snap = metrics.snapshot(service.store)
    # stopped: the third run and the retry the first attempt had queued (its backoff was still running)
    assert snap.runs == {("api", "retrying"): 1, ("api", "succeeded"): 1, ("api", "stopped"): 2}
    assert snap.retries == {"api": 1}
    assert snap.durations["api"].count == 2
    assert snap.durations["api"].buckets[-1] == ("+Inf", 2)
    assert 0 <= snap.durations["api"].sum < 5
    assert snap.finished == 4 and snap.failed == 1


def test_gauges_read_the_real_celery_queue_the_due_set_and_heartbeats(service):
    task = service.create(api_spec())
    service.create(api_spec(name="later"))
    for _ in range(3):
        service.run_now(task.id)
    service.store.heartbeat("code@alive")
    service.store.heartbeat("http@stale", time.time() - 60)
    snap = metrics.snapshot(service.store, heartbeat_ttl=10)
    assert snap.queues["http"] == 3 and snap.queues["code"] == 0 and snap.queued == 3
    assert snap.due == 2 + 3 and snap.tasks == 2, "two tasks' entries, and the three queued runs' send guards"
    assert snap.workers == 1
    service.store.worker_gone("code@alive")
    assert metrics.snapshot(service.store).workers == 0


def test_scheduler_lag_histogram_and_prometheus_text(service):
    metrics.record_lags(service.store, [0.003, 0.2, 7.0])
    metrics.record_lags(service.store, [])
    snap = metrics.snapshot(service.store)
    assert snap.lag.count == 3 and snap.lag.sum == pytest.approx(7.203)
    assert dict(snap.lag.buckets)["0.01"] == 1 and dict(snap.lag.buckets)["0.25"] == 2
    assert dict(snap.lag.buckets)["10.0"] == 3 and snap.last_lag == 7.0
    families = {f.name: f for f in text_string_to_metric_families(metrics.render(snap).decode())}
    assert {"taskman_runs", "taskman_run_retries", "taskman_run_duration_seconds", "taskman_scheduler_lag_seconds",
            "taskman_queue_depth", "taskman_due_entries", "taskman_workers_alive", "taskman_unacked_messages",
            "taskman_scheduler_last_lag_seconds", "taskman_tasks", "taskman_scheduler_leader"} <= set(families)
    lag = {(s.name, s.labels.get("le")): s.value for s in families["taskman_scheduler_lag_seconds"].samples}
    assert lag[("taskman_scheduler_lag_seconds_count", None)] == 3
    assert lag[("taskman_scheduler_lag_seconds_bucket", "+Inf")] == 3
    depth = {s.labels["queue"]: s.value for s in families["taskman_queue_depth"].samples}
    assert depth == {"code": 0, "http": 0, "registered": 0}
