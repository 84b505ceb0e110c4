"""A stop survives every process dying: a stopped queued run and a stopped delayed task never run."""

from __future__ import annotations

import signal
import time
import uuid

from core.config import Settings
from core.models import RunState, TaskState
from tests.conftest import Processes, _process_env, wait_for

WORKER = ("worker", "-Q", "code", "-P", "prefork", "-c", "1", "-n", "stops@%h", "-l", "INFO",
          "--without-mingle", "--without-gossip")
CODE = "def main():\n    return 'ran'\n"


def test_stopped_runs_stay_stopped_through_kills_and_restarts(taskman_env, tmp_path):
    from core.service import Service

    env = {**taskman_env, "TASKMAN_NAMESPACE": f"stops{uuid.uuid4().hex[:6]}"}
    procs = Processes(_process_env(env), tmp_path)
    service = Service.from_settings(Settings(**{k.removeprefix("TASKMAN_").lower(): v for k, v in env.items()}))
    try:
        queued = service.create({"name": "queued", "function_code": CODE, "function_name": "main"})
        delayed = service.create({"name": "delayed", "function_code": CODE, "function_name": "main",
                                  "delay_seconds": 2})
        service.stop(queued.id)
        service.stop(delayed.id)
        for round_ in range(2):
            worker = procs.start(f"worker-{round_}", *WORKER)
            beat = procs.start(f"beat-{round_}", "beat", "-l", "INFO", "--pidfile=")
            wait_for(lambda: service.store.worker_reports(), timeout=60, message="the worker")
            time.sleep(3)  # past the delay: a live scheduler would have fired it by now
            procs.stop(worker, signal.SIGKILL)
            procs.stop(beat, signal.SIGKILL)
        runs = service.get(queued.id).runs
        assert [run.state for run in runs] == [RunState.STOPPED]
        assert runs[0].started_at is None, "the stopped run never started"
        later = service.get(delayed.id)
        assert later.runs == [] and later.state is TaskState.PAUSED
        assert service.store.due_score(f"t:{delayed.id}") is None
    finally:
        procs.stop_all()
