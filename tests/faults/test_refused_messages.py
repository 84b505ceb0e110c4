"""A registered task's body never runs for a message taskman refuses.

A Celery signal cannot stop a task, so the worker guards the start of every registered task in its
base class: a stopped run's message, the message of a run that has finished, or one sent under a
fence that moved on is acknowledged and dropped, and the operator's code never sees it. The task
under test (``ops.mark``) appends a line per execution to a file, so an execution cannot hide.
"""

from __future__ import annotations

import signal
import uuid
from contextlib import contextmanager
from pathlib import Path

from core.models import RunState
from tests.conftest import wait_for


def executions(directory: Path, run_id: str) -> int:
    path = directory / "executions"
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(1 for line in lines if line.startswith(f"start {run_id} "))


def solo_worker(processes, queue: str):
    """A worker taking one message at a time, in order, from a queue of the test's own."""
    return processes.start(f"worker-{queue}", "worker", "-Q", queue, "-P", "solo", "-n", f"{queue}@%h",
                           "-l", "INFO", "--without-mingle", "--without-gossip")


@contextmanager
def serving_worker(processes, stack, queue: str):
    """A solo worker on ``queue`` while the block runs, its queue registered before it starts."""
    worker = solo_worker(processes, queue)
    try:
        wait_for(lambda: serving(stack, queue), timeout=60, message="the worker to register its queue")
        yield worker
    finally:
        processes.stop(worker, signal.SIGTERM)


def serving(stack, queue: str) -> bool:
    return any(queue in detail.get("queues", ()) for detail in stack.registered_tasks().values())


def mark(stack, directory: Path, queue: str, name: str):
    return stack.create({"name": name, "task_name": "ops.mark", "args": [str(directory)], "queue": queue})


def test_a_stopped_runs_message_is_dropped_by_a_worker_that_starts_later(stack, processes, tmp_path):
    (tmp_path / "marks").mkdir()
    queue = f"guarded{uuid.uuid4().hex[:6]}"
    worker = solo_worker(processes, queue)  # registers the queue, then goes away: the run waits for the next
    wait_for(lambda: serving(stack, queue), timeout=60, message="the worker to register its queue")
    processes.stop(worker, signal.SIGTERM)
    task = mark(stack, tmp_path, queue, "stopped before any worker took it")
    [run] = stack.get(task.id).runs
    stack.stop(task.id)
    worker = solo_worker(processes, queue)
    try:
        probe = mark(stack, tmp_path, queue, "after it")  # one at a time, in order: it runs after the stopped one
        wait_for(lambda: stack.get(probe.id).runs[0].state is RunState.SUCCEEDED, timeout=60,
                 message="a later run on the same worker")
        assert executions(tmp_path, run.id) == 0, "the stopped run's body ran"
        assert stack.get_run(run.id).state is RunState.STOPPED
    finally:
        processes.stop(worker, signal.SIGTERM)


def test_a_finished_runs_message_sent_again_does_not_run_its_body_again(stack, processes, tmp_path):
    (tmp_path / "marks").mkdir()
    queue = f"guarded{uuid.uuid4().hex[:6]}"
    with serving_worker(processes, stack, queue):
        task = mark(stack, tmp_path, queue, "runs once")
        run = wait_for(lambda: (r := stack.get(task.id).runs[0]).state.final and r, timeout=60, message="the run")
        assert run.state is RunState.SUCCEEDED and executions(tmp_path, run.id) == 1
        fence = stack.store.run_owner(run.id)[2]
        definition = stack.get(task.id, runs=0)
        stack.dispatcher.send(definition, run, fence=fence)  # a stale copy of its message
        stack.dispatcher.send(definition, run, fence=fence + 7)  # and one under a fence it never had
        later = mark(stack, tmp_path, queue, "after the copies")
        wait_for(lambda: stack.get(later.id).runs[0].state is RunState.SUCCEEDED, timeout=30,
                 message="a run sent after the copies")
        assert executions(tmp_path, run.id) == 1, "a copy of a finished run's message ran its body again"
        assert stack.get_run(run.id).state is RunState.SUCCEEDED


def test_a_message_taskman_did_not_send_runs_as_celery_would(stack, processes, tmp_path):
    """The operator's own code may still send its tasks with Celery (``.delay()``): no run, no fence header,
    nothing for taskman to guard."""
    (tmp_path / "marks").mkdir()
    queue = f"guarded{uuid.uuid4().hex[:6]}"
    with serving_worker(processes, stack, queue):
        result = stack.dispatcher.app.send_task("ops.mark", args=[str(tmp_path)], queue=queue)
        wait_for(lambda: executions(tmp_path, result.id) == 1 and (tmp_path / "marks" / result.id).exists(),
                 timeout=60, message="the operator's own message to run")
