"""A run that kills its process every time is given up after 3 deliveries; other runs flow meanwhile."""

from __future__ import annotations

from core.models import RunState
from tests.conftest import wait_for
from tests.faults.conftest import FIGURES, code_worker


def test_a_run_that_crashes_its_process_every_time_fails_after_three_deliveries(private_stack):
    stack, service = private_stack, private_stack.service
    stack.procs.env["TASKMAN_IMPORTS"] = "tests.e2e.operator_tasks,tests.faults.crashing_tasks"
    stack.procs.start("worker", *code_worker("crashy", concurrency=2))
    wait_for(lambda: "faults.crash_process" in service.registered_tasks(), timeout=60, message="the worker")
    crashing = service.create({"name": "crashes its process", "task_name": "faults.crash_process",
                               "max_retries": 2})
    others = service.create_many([{"name": f"adds {n}", "task_name": "ops.add", "args": [n, 1]} for n in range(20)])
    for task in others:
        run = wait_for(lambda task=task: (r := service.get(task.id).runs[0]).state.final and r, timeout=60,
                       message=f"{task.name} to run beside the crashing one")
        assert run.state is RunState.SUCCEEDED and run.result == int(task.name.split()[1]) + 1
    runs = wait_for(lambda: (r := service.get(crashing.id).runs) and r[0].state.final and r, timeout=90,
                    message="the crashing run to be given up")
    assert len(runs) == 1, "a lost process is redelivered, not retried as a new attempt"
    assert runs[0].state is RunState.FAILED
    assert runs[0].error == "worker lost 3 times while running this run; giving up"
    assert stack.procs.children[0].poll() is None, "the worker lives on"
    FIGURES["a run that kills its process every time"] = "failed after 3 deliveries; 20 other runs succeeded"
