"""No path leaves a run queued with nothing behind it: every run is written with its send guard.

A submit or a "run now" writes the run, its guard and its message in one transaction. With Celery's task
events on, the message goes through ``send_task`` after that transaction: a process that dies between the
two leaves the guard, and the scheduler sends the run when the guard comes up; a send that raises fails
the run at once, with the reason, and leaves no guard to send it later.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest

from core.models import RunState
from core.store import due_member_for_run
from tests.conftest import ROOT, _process_env, wait_for

CODE = "def main():\n    return 'sent by its guard'\n"

# Submits (or runs now) with a dispatcher whose send kills the process: the run and its guard are
# written, the message never leaves. Prints the task id first so the test can find the run.
DIES_BEFORE_SENDING = """
import os, sys
from core.config import Settings
from core.service import Service
service = Service.from_settings(Settings())
def die(*args, **kwargs):
    os._exit(9)
if sys.argv[1] == "submit":
    service.dispatcher.send = lambda *a, **k: (print(a[0].id, flush=True), die())
    service.create({"name": "dies before sending", "function_code": sys.argv[2], "function_name": "main"})
else:
    service.dispatcher.send = die
    service.run_now(sys.argv[2])
"""


def die_before_sending(taskman_env, *args: str) -> str:
    env = {**_process_env(taskman_env), "TASKMAN_CLAIM_LEASE": "1", "TASKMAN_CELERY_EVENTS": "1"}
    result = subprocess.run([sys.executable, "-c", DIES_BEFORE_SENDING, *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 9, result.stderr
    return result.stdout.strip()


def test_a_submit_whose_process_dies_before_sending_is_sent_by_its_guard(stack, taskman_env):
    task_id = die_before_sending(taskman_env, "submit", CODE)
    guarded_at = time.monotonic()
    run = stack.get(task_id).runs[0]
    assert run.state is RunState.QUEUED
    done = wait_for(lambda: (r := stack.get_run(run.id)).state.final and r, timeout=30,
                    message="the guarded run to be sent and run")
    assert done.state is RunState.SUCCEEDED and done.result == "sent by its guard"
    assert done.attempt == 1 and len(stack.get(task_id).runs) == 1, "the run was sent, not created again"
    assert stack.store.due_score(due_member_for_run(run.id)) is None
    assert time.monotonic() - guarded_at < 15


def test_a_run_now_whose_process_dies_before_sending_is_sent_by_its_guard(stack, taskman_env):
    task = stack.create({"name": "run now dies", "function_code": CODE, "function_name": "main",
                         "cron_expression": "0 0 1 1 *"})
    die_before_sending(taskman_env, "run", task.id)
    runs = stack.get(task.id).runs
    assert len(runs) == 1 and runs[0].trigger == "manual"
    done = wait_for(lambda: (r := stack.get_run(runs[0].id)).state.final and r, timeout=30,
                    message="the guarded manual run to be sent and run")
    assert done.state is RunState.SUCCEEDED


def test_a_send_that_raises_fails_every_run_of_its_batch_and_leaves_no_guard(stack):
    from core.service import Service

    class Broker(RuntimeError):
        pass

    class Unreachable:
        builds_messages = False  # as with Celery's task events on: messages go through send_task

        def send_many(self, batch):
            raise Broker("broker unreachable")

    service = Service(stack.store, stack.dispatcher, stack.settings)
    service.launcher.dispatcher = Unreachable()
    prefix = f"batch {uuid.uuid4().hex[:6]}"
    specs = [{"name": f"{prefix} {index}", "function_code": CODE, "function_name": "main"} for index in range(3)]
    with pytest.raises(Broker):
        service.create_many(specs)
    runs = [stack.get(task.id).runs[0] for task in stack.list_tasks(name=prefix)]
    assert len(runs) == 3
    assert all(run.state is RunState.FAILED for run in runs)
    assert all(run.error == "could not queue the run: broker unreachable" for run in runs)
    for run in runs:
        assert stack.store.due_score(due_member_for_run(run.id)) is None, "no guard is left behind"


def test_a_submit_and_a_run_now_write_the_run_and_its_message_at_once(stack):
    """With messages built by taskman (the default), nothing is sent after the transaction that stores the
    runs: a dispatcher whose every send raises changes nothing, and each run is queued and runs."""
    from core.service import Service

    class Broker(RuntimeError):
        pass

    def refuse(*args, **kwargs):
        raise Broker("a send after the transaction")

    service = Service(stack.store, stack.dispatcher, stack.settings)
    service.launcher.dispatcher = type(stack.dispatcher)(stack.dispatcher.app, stack.settings)
    service.launcher.dispatcher.send_many = service.launcher.dispatcher.publish = refuse
    prefix = f"at once {uuid.uuid4().hex[:6]}"
    tasks = service.create_many([{"name": f"{prefix} {index}", "function_code": CODE, "function_name": "main"}
                                 for index in range(3)])
    runs = [task.runs[0] for task in tasks] + [service.run_now(tasks[0].id)]
    for run in runs:
        assert stack.store.redis.hmget(stack.store.keys.run(run.id), "sent_fence", "sent_queue") == ["0", "code"]
        done = wait_for(lambda run=run: (r := stack.get_run(run.id)).state.final and r, timeout=30,
                        message=f"run {run.id} to end")
        assert done.state is RunState.SUCCEEDED and done.result == "sent by its guard"


def test_a_batch_is_sent_in_one_go_and_every_run_runs(stack):
    prefix = f"bulk {uuid.uuid4().hex[:6]}"
    tasks = stack.create_many([{"name": f"{prefix} {index}", "function_code": CODE, "function_name": "main"}
                               for index in range(40)])
    for task in tasks:
        run = wait_for(lambda task=task: (r := stack.get(task.id).runs[0]).state.final and r, timeout=60,
                       message=f"{task.name} to run")
        assert run.state is RunState.SUCCEEDED
        assert stack.store.due_score(due_member_for_run(run.id)) is None
