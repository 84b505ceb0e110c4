"""A worker told to stop (SIGTERM: Celery's warm shutdown) finishes the run it has, then exits."""

from __future__ import annotations

import os
import signal
import time
import uuid

from core.config import Settings
from core.models import RunState
from tests.conftest import Processes, _process_env, wait_for
from tests.faults.conftest import FIGURES

WORKER = ("worker", "-Q", "code", "-P", "prefork", "-c", "1", "-n", "warm@%h", "-l", "INFO",
          "--without-mingle", "--without-gossip")
SLOW = ("import datetime\n"
        "def main():\n"
        "    end = datetime.datetime.now() + datetime.timedelta(seconds=3)\n"
        "    while datetime.datetime.now() < end:\n"
        "        pass\n"
        "    return 'finished'\n")


def test_sigterm_mid_run_lets_the_run_finish(taskman_env, tmp_path):
    from core.service import Service

    env = {**taskman_env, "TASKMAN_NAMESPACE": f"warm{uuid.uuid4().hex[:6]}"}
    procs = Processes(_process_env(env), tmp_path)
    service = Service.from_settings(Settings(**{k.removeprefix("TASKMAN_").lower(): v for k, v in env.items()}))
    try:
        worker = procs.start("worker", *WORKER)
        wait_for(lambda: service.store.worker_reports(), timeout=60, message="the worker")
        task = service.create({"name": "slow", "function_code": SLOW, "function_name": "main", "timeout": 30})
        run = wait_for(lambda: (r := service.get(task.id).runs) and r[0].state is RunState.RUNNING and r[0],
                       timeout=30, message="the run to start")
        asked = time.monotonic()
        os.kill(worker.pid, signal.SIGTERM)  # the main process only, as a service manager does
        worker.wait(30)
        final = service.get_run(run.id)
        assert final.state is RunState.SUCCEEDED and final.result == "finished", (final.state, final.error)
        assert len(service.get(task.id).runs) == 1
        FIGURES["worker SIGTERM mid-run (warm shutdown)"] = (
            f"run finished, then the worker exited after {time.monotonic() - asked:.2f} s")
    finally:
        procs.stop_all()
