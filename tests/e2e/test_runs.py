"""End to end: the seed's six examples and the semantics users rely on, on real processes.

Each test drives ``core.service`` against the session's private Redis, real Celery workers
(prefork for code, threads for http) and the real scheduler, with a local HTTP server standing in
for the seed's httpbin URLs.
"""

from __future__ import annotations

import json
import re
import time
from itertools import pairwise

import pytest

from core.errors import NotFound
from core.models import RunState
from core.store import due_member_for_task
from tests.conftest import wait_for

pytestmark = pytest.mark.usefixtures("stack")


def final_run(service, task_id, timeout=20.0, index=0):
    """Wait until the task's newest run (or the index-th newest) is final; return it."""

    def done():
        runs = service.get(task_id).runs
        return runs[index] if len(runs) > index and runs[index].state.final else None

    return wait_for(done, timeout, message=f"a final run of {task_id}")


def test_seed_immediate_code_returns_its_value(stack):
    task = stack.create({"name": "计算任务", "task_type": "immediate",
                         "function_code": "def calculate():\n    return 1 + 2 * 3", "function_name": "calculate"})
    run = final_run(stack, task.id)
    assert run.state is RunState.SUCCEEDED
    assert run.result == 7
    assert run.duration_ms is not None and run.duration_ms >= 0
    assert stack.get(task.id).state.value == "done"


def test_print_output_is_captured_and_streamed(stack):
    code = "def hello(who='x'):\n    print('hello', who)\n    print('line two')\n    return who.upper()"
    task = stack.create({"name": "hello", "function_code": code, "function_name": "hello",
                         "kwargs": {"who": "world"}})
    run = final_run(stack, task.id)
    assert run.state is RunState.SUCCEEDED, run.error
    assert run.result == "WORLD"
    assert run.output.splitlines() == ["hello world", "line two"]
    messages = [entry["msg"] for _, entry in stack.store.stream_tail("logs", 500) if entry["task"] == task.id]
    assert "hello world" in messages and "line two" in messages
    assert any("succeeded" in message for message in messages)


def test_seed_delayed_code_runs_after_its_delay_and_promptly(stack):
    created = time.time()
    task = stack.create({"name": "延时计算任务", "task_type": "delayed", "delay_seconds": 2,
                         "function_code": "def calculate():\n    return 1 + 2 * 3", "function_name": "calculate"})
    assert stack.get(task.id).next_run_at == pytest.approx(created + 2, abs=0.5)
    assert stack.get(task.id).runs == []
    run = final_run(stack, task.id, timeout=15)
    assert run.result == 7
    assert run.started_at >= created + 2
    assert run.started_at <= created + 2 + 1.5, f"started {run.started_at - created - 2:.2f}s late"
    assert stack.get(task.id).state.value == "done"


def test_seed_scheduled_code_fires_repeatedly(stack):
    task = stack.create({"name": "定时计算任务", "task_type": "scheduled", "cron_expression": "* * * * * */2",
                         "function_code": "def daily_report():\n    return '日报生成完成'",
                         "function_name": "daily_report"})
    try:
        wait_for(lambda: len([r for r in stack.get(task.id).runs if r.state.final]) >= 3, timeout=15,
                 message="three cron runs")
        runs = [r for r in stack.get(task.id).runs if r.state.final]
        assert all(run.result == "日报生成完成" for run in runs)
        fire_times = sorted(run.scheduled_for for run in runs)
        gaps = [b - a for a, b in pairwise(fire_times)]
        assert all(gap == pytest.approx(2.0, abs=0.01) for gap in gaps), gaps
        assert stack.get(task.id).next_run_at > time.time() - 1
    finally:
        stack.delete(task.id)


def test_seed_immediate_api_records_status_and_body(stack, http_server):
    task = stack.create({"name": "立即API请求", "task_type": "immediate", "api_url": f"{http_server.base_url}/get",
                         "method": "GET", "timeout": 30})
    run = final_run(stack, task.id)
    assert run.state is RunState.SUCCEEDED, run.error
    assert run.result["status_code"] == 200
    assert run.result["body"]["path"] == "/get"
    assert run.result["elapsed_ms"] > 0


def test_seed_delayed_api_posts_its_data(stack, http_server):
    marker = f"延时请求-{time.time()}"
    task = stack.create({"name": "延时API请求", "task_type": "delayed", "delay_seconds": 1,
                         "api_url": f"{http_server.base_url}/post", "method": "POST",
                         "data": {"message": marker}, "timeout": 30})
    run = final_run(stack, task.id)
    assert run.state is RunState.SUCCEEDED, run.error
    assert run.result["body"]["json"] == {"message": marker}
    sent = [r for r in http_server.requests if r["path"] == "/post" and marker in r["body"]]
    assert len(sent) == 1 and json.loads(sent[0]["body"]) == {"message": marker}


def test_seed_scheduled_api_fires(stack, http_server):
    task = stack.create({"name": "定时API请求", "task_type": "scheduled", "cron_expression": "* * * * * */2",
                         "api_url": f"{http_server.base_url}/status/200", "method": "GET", "timeout": 30})
    try:
        run = final_run(stack, task.id, timeout=10)
        assert run.state is RunState.SUCCEEDED
        assert run.result["status_code"] == 200
    finally:
        stack.delete(task.id)


def test_failing_api_task_retries_with_backoff(stack, http_server):
    key = f"k{time.time_ns()}"
    task = stack.create({"name": "flaky", "api_url": f"{http_server.base_url}/status/500?k={key}",
                         "max_retries": 2, "retry_backoff": 0.5})
    wait_for(lambda: len(stack.get(task.id).runs) == 3 and stack.get(task.id).runs[0].state.final, timeout=20,
             message="three attempts")
    runs = list(reversed(stack.get(task.id).runs))
    assert [run.attempt for run in runs] == [1, 2, 3]
    assert [run.state for run in runs] == [RunState.RETRYING, RunState.RETRYING, RunState.FAILED]
    assert all("500" in run.error for run in runs)
    assert runs[0].result["status_code"] == 500
    assert runs[1].started_at - runs[0].finished_at >= 0.5
    assert runs[2].started_at - runs[1].finished_at >= 1.0
    assert {run.series for run in runs[1:]} == {runs[0].id}
    hits = [r for r in http_server.requests if r["query"].get("k") == key]
    assert len(hits) == 3


def test_retry_then_success(stack, http_server):
    key = f"f{time.time_ns()}"
    task = stack.create({"name": "flaky-then-ok", "api_url": f"{http_server.base_url}/flaky/{key}?fail=1",
                         "max_retries": 3, "retry_backoff": 0.2})
    wait_for(lambda: stack.get(task.id).runs and stack.get(task.id).runs[0].state is RunState.SUCCEEDED,
             timeout=15, message="a successful retry")
    runs = list(reversed(stack.get(task.id).runs))
    assert [run.state for run in runs] == [RunState.RETRYING, RunState.SUCCEEDED]


def test_stop_before_a_delayed_run_means_it_never_runs(stack):
    task = stack.create({"name": "never", "delay_seconds": 1.5,
                         "function_code": "def f():\n    return 'ran'", "function_name": "f"})
    stopped = stack.stop(task.id)
    assert stopped.state.value == "paused"
    assert stack.store.due_score(due_member_for_task(task.id)) is None
    time.sleep(3)
    assert stack.get(task.id).runs == []


def test_stop_terminates_a_running_code_task_and_the_worker_goes_on(stack):
    task = stack.create({"name": "spin", "timeout": 60,
                         "function_code": "def spin():\n    while True:\n        pass", "function_name": "spin"})
    wait_for(lambda: stack.get(task.id).runs[0].state is RunState.RUNNING, timeout=15, message="the run to start")
    time.sleep(0.5)
    stack.stop(task.id)
    run = stack.get(task.id).runs[0]
    assert run.state is RunState.STOPPED
    assert run.id not in {run_id for run_id, _ in stack.store.running_runs()}, "it left the dead-worker watch"
    time.sleep(2)
    assert stack.get(task.id).runs[0].state is RunState.STOPPED
    assert len(stack.get(task.id).runs) == 1
    after = stack.create({"name": "after-stop", "function_code": "def f():\n    return 42", "function_name": "f"})
    assert final_run(stack, after.id).result == 42


def test_timeout_fails_the_run_with_a_reason(stack):
    task = stack.create({"name": "slow", "timeout": 1,
                         "function_code": "def spin():\n    while True:\n        pass", "function_name": "spin"})
    run = final_run(stack, task.id, timeout=15)
    assert run.state is RunState.TIMED_OUT
    assert run.error.startswith("limit 1 s")
    assert run.duration_ms < 5000
    [line] = [entry["msg"] for _, entry in stack.store.stream_tail("logs", 500)
              if entry["run"] == run.id and entry["level"] == "error"]
    assert re.fullmatch(rf"run {run.id} timed out after 1\.\d s \(limit 1 s.*\)", line), line


def test_delete_removes_definition_and_schedule(stack):
    task = stack.create({"name": "doomed", "cron_expression": "* * * * * */1",
                         "function_code": "def f():\n    return 1", "function_name": "f"})
    final_run(stack, task.id, timeout=10)
    stack.delete(task.id)
    with pytest.raises(NotFound):
        stack.get(task.id)
    assert stack.store.due_score(due_member_for_task(task.id)) is None
    assert task.id not in stack.store.task_ids()
    count = stack.store.redis.zcard(stack.store.keys.task_runs(task.id))
    time.sleep(2.5)
    assert stack.store.redis.zcard(stack.store.keys.task_runs(task.id)) == count


def test_editing_a_cron_tasks_code_changes_the_next_result(stack):
    task = stack.create({"name": "editable", "cron_expression": "* * * * * */1",
                         "function_code": "def f():\n    return 'old'", "function_name": "f"})
    try:
        final_run(stack, task.id, timeout=10)
        stack.update(task.id, {"function_code": "def f():\n    return 'new'"})
        edited_at = time.time()
        wait_for(lambda: any(run.result == "new" and run.queued_at > edited_at
                             for run in stack.get(task.id).runs), timeout=10, message="a run of the new code")
        assert stack.get(task.id).spec.function_code.endswith("'new'")
    finally:
        stack.delete(task.id)


def test_pause_and_resume_a_cron_task(stack):
    task = stack.create({"name": "pausable", "cron_expression": "* * * * * */1",
                         "function_code": "def f():\n    return 1", "function_name": "f"})
    try:
        final_run(stack, task.id, timeout=10)
        stack.pause(task.id)
        time.sleep(0.5)
        count = len(stack.get(task.id, runs=200).runs)
        time.sleep(2.5)
        assert len(stack.get(task.id, runs=200).runs) == count
        assert stack.resume(task.id).state.value == "active"
        wait_for(lambda: len(stack.get(task.id, runs=200).runs) > count, timeout=10, message="a fire after resume")
    finally:
        stack.delete(task.id)


def test_registered_task_runs_with_its_arguments(stack):
    task = stack.create({"name": "add", "task_name": "ops.add", "args": [2, 3]})
    run = final_run(stack, task.id)
    assert run.state is RunState.SUCCEEDED, run.error
    assert run.result == 5
    assert run.worker


def test_a_registered_tasks_result_does_not_show_its_secret_kwargs(stack):
    secret = "s3cr3t-token-value"
    task = stack.create({"name": "echoes a key", "task_name": "taskman.echo",
                         "kwargs": {"api_token": secret, "note": f"the key is {secret}"}})
    run = final_run(stack, task.id)
    assert run.state is RunState.SUCCEEDED, run.error
    assert run.result["kwargs"] == {"api_token": "***", "note": "the key is ***"}, run.result
    assert secret not in json.dumps([shown.to_dict() for shown in stack.get(task.id).runs])
    logs = [entry["msg"] for _, entry in stack.store.stream_tail("logs", 500) if entry["run"] == run.id]
    assert logs and not any(secret in line for line in logs), logs


def test_builtin_registered_task(stack):
    task = stack.create({"name": "echo", "task_name": "taskman.echo", "args": [1], "kwargs": {"a": "b"}})
    run = final_run(stack, task.id)
    assert run.result == {"args": [1], "kwargs": {"a": "b"}}


def test_registered_task_failure_retries_and_records_the_error(stack):
    task = stack.create({"name": "ops-fail", "task_name": "ops.fail", "kwargs": {"message": "nope"},
                         "max_retries": 1, "retry_backoff": 0.1})
    wait_for(lambda: len(stack.get(task.id).runs) == 2 and stack.get(task.id).runs[0].state.final, timeout=15,
             message="two attempts")
    newest, oldest = stack.get(task.id).runs
    assert (oldest.state, newest.state) == (RunState.RETRYING, RunState.FAILED)
    assert "RuntimeError: nope" in newest.error
    assert "RuntimeError" in newest.traceback


def test_registered_tasks_are_listed(stack):
    names = stack.registered_tasks()
    assert {"ops.add", "ops.fail", "taskman.echo", "taskman.sleep"} <= set(names)
    workers = {worker.split("@")[0] for worker in names["ops.add"]["workers"]}
    assert workers == {"code"}, "the http worker serves only taskman's own http queue: it runs no registered task"
    reports = {worker.split("@")[0] for worker in stack.store.worker_reports()}
    assert {"code", "http"} <= reports, "both workers' reports are kept, neither overwrites the other"
    queues = set(names["ops.add"]["queues"])  # other tests' workers may serve more queues of their own
    assert "registered" in queues and not queues & {"code", "http"}, "taskman's own queues never carry one"


def test_user_code_error_records_traceback(stack):
    task = stack.create({"name": "raises", "function_code": "def f():\n    x = 1\n    raise ValueError('bad value')",
                         "function_name": "f"})
    run = final_run(stack, task.id)
    assert run.state is RunState.FAILED
    assert "ValueError: bad value" in run.error
    assert "line 3" in run.traceback


def test_events_stream_tells_each_state_change_of_a_run(stack):
    task = stack.create({"name": "evented", "task_name": "ops.add", "args": [1, 1]})
    run = final_run(stack, task.id)
    events = [json.loads(entry["event"]) for _, entry in stack.store.stream_tail("events", 2000)]
    mine = [event for event in events if event.get("run_id") == run.id]
    assert [event["type"] for event in mine] == ["run.started", "run.succeeded"]
    assert all(event["task_id"] == task.id for event in mine)
    assert any(event["type"] == "task.created" and event["task_id"] == task.id for event in events)


def test_a_burst_due_together_runs_each_fire_once_through_the_real_scheduler_and_workers(stack):
    """120 delayed tasks due at the same instant: the scheduler prepares them ahead and opens their transaction
    before they are due; one paused meanwhile does not run, every other runs once."""
    tasks = stack.create_many([{"name": f"together {i}", "task_name": "taskman.echo", "kwargs": {"i": i},
                                "delay_seconds": 3} for i in range(120)])
    due = tasks[0].next_run_at
    assert {task.next_run_at for task in tasks} == {due}
    time.sleep(max(0.0, due - 1.0 - time.time()))
    stack.pause(tasks[5].id)
    ran = [task for task in tasks if task is not tasks[5]]
    wait_for(lambda: all(stack.get(task.id, runs=1).last_run_state == "succeeded" for task in ran), timeout=30,
             message="every fire to run")
    time.sleep(1.0)  # anything sent twice would have run by now
    for i, task in enumerate(tasks):
        if task is tasks[5]:
            assert stack.runs(task.id) == [], "paused while held: it does not fire"
            continue
        [run] = stack.runs(task.id)
        assert run.state is RunState.SUCCEEDED and run.scheduled_for == due
        assert run.result == {"args": [], "kwargs": {"i": i}}
