"""Benchmark: how fast taskman recovers from faults, on a private Redis with its own workers and scheduler.

    .venv/bin/python bench/faults.py [--runs 10000] [--kills 8]

Starts a private append-only ``redis-server`` (never the one on 6379) and, for each measurement, a
namespace of its own with its own scheduler and workers, which it stops by PID afterwards:
1. Redis frozen (SIGSTOP) for 10 s: time from SIGCONT to the first cron fire (a cron every 2 s);
2. a worker SIGKILLed (whole process group) mid-run: time until its run runs on another worker,
   with the dead-worker grace at 4 s;
3. the same, but the worker started again at once under its own name, as ``taskman up`` and service
   managers restart one: time until its run runs again, and what brought it back;
4. the many-runs storm of the fault suite (``tests/faults/storm.py``) at full size: runs submitted
   while pool processes are SIGKILLed and a worker is SIGKILLed and restarted: runs lost, duplicate
   effects, executions of one run at the same time, runs/s.
Prints figures; asserts nothing. The scenarios and helpers are the fault suite's own.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.embedded import RedisServer  # noqa: E402
from core.models import RunState  # noqa: E402
from tests.conftest import Processes, _process_env, wait_for  # noqa: E402
from tests.faults.conftest import BEAT, EVERY_2S  # noqa: E402
from tests.faults.storm import (  # noqa: E402
    CONCURRENCY,
    GRACE,
    VISIBILITY,
    WORKERS,
    Storm,
    namespace,
    service_for,
    storm_env,
    worker_args,
    workers_serving,
)
from tests.faults.test_dead_workers import running_on  # noqa: E402
from tests.faults.test_redis_trouble import fires_after, first_fire_after  # noqa: E402

STALL_SECONDS = 10.0
SLEEP = {"task_name": "taskman.sleep", "args": [3], "timeout": 10}
"""The run a killed worker leaves behind: long enough to be surely running when the worker dies."""


def redis_stall(base: dict[str, str], server: RedisServer, folder: Path) -> str:
    """Seconds from Redis's SIGCONT, after a stall of ``STALL_SECONDS``, to the first cron fire."""
    env = storm_env(base, namespace("stall"))
    procs = Processes(_process_env(env), folder)
    service = service_for(env)
    try:
        procs.start("beat", *BEAT)
        cron = service.create({"name": "every-2s", "task_name": "taskman.echo", "cron_expression": EVERY_2S})
        wait_for(lambda: fires_after(service, cron.id, 0) >= 1, timeout=30, message="the first cron fire")
        os.kill(server.pid, signal.SIGSTOP)
        try:
            time.sleep(STALL_SECONDS)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        resumed = time.time()
        wait_for(lambda: fires_after(service, cron.id, resumed) >= 1, timeout=60, message="cron to fire again")
        return f"{first_fire_after(service, cron.id, resumed):6.2f} s"
    finally:
        procs.stop_all()


def worker_death(base: dict[str, str], folder: Path, *, restart_same_name: bool) -> str:
    """Seconds from a worker's SIGKILL until its run runs again, and whether the dead-worker watch handed it
    over (its fence moved on) or the broker redelivered it after its visibility window."""
    env = storm_env(base, namespace("death"))
    procs = Processes(_process_env(env), folder)
    service = service_for(env)
    try:
        procs.start("beat", *BEAT)
        first = procs.start("worker-first", *worker_args("first", concurrency=1))
        wait_for(lambda: "first" in workers_serving(service, "taskman.sleep"), timeout=60, message="the first worker")
        task = service.create({"name": "orphan", **SLEEP})
        run = wait_for(running_on(service, task.id, "first@"), timeout=30, message="the run on the first worker")
        if not restart_same_name:
            procs.start("worker-second", *worker_args("second", concurrency=1))
        procs.stop(first, signal.SIGKILL)
        killed = time.monotonic()
        if restart_same_name:
            procs.start("worker-first", *worker_args("first", concurrency=1))
        wait_for(lambda: (again := service.get_run(run.id)).state is not RunState.QUEUED
                 and (again.started_at or 0) > (run.started_at or 0), timeout=VISIBILITY + 60,
                 message="the run to run again")
        took = time.monotonic() - killed
        fence, deliveries = service.store.redis.hmget(service.store.keys.run(run.id), "fence", "deliveries")
        how = ("handed over by the dead-worker watch" if int(fence or 0) else
               f"redelivered by the broker (deliveries {int(deliveries or 0)})")
        return f"{took:6.2f} s   {how}"
    finally:
        procs.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=8)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "redis").mkdir()
        server = RedisServer(folder / "redis", appendonly=True).start()
        base = {"TASKMAN_REDIS_URL": server.url, "TASKMAN_DATA_DIR": str(folder), "TASKMAN_HTTP_ALLOW": "127.0.0.1"}
        try:
            stall = redis_stall(base, server, folder)
            elsewhere = worker_death(base, folder, restart_same_name=False)
            same_name = worker_death(base, folder, restart_same_name=True)
            env = storm_env(base, namespace("storm"))
            procs = Processes(_process_env(env), folder)
            try:
                figures = Storm(service_for(env), procs, folder / "storm", options.runs, options.kills).run()
            finally:
                procs.stop_all()
        finally:
            server.stop()

    print(f"private append-only Redis on 127.0.0.1; dead-worker grace {GRACE:g} s, "
          f"broker visibility window {VISIBILITY:g} s")
    print(f"Redis SIGSTOP {STALL_SECONDS:g} s: SIGCONT -> first cron fire        {stall}")
    print(f"worker SIGKILL mid-run -> run running on another worker   {elsewhere}")
    print(f"worker SIGKILL, restarted under its name -> run again    {same_name}")
    print(f"\n{figures.runs} runs of ops.mark, {len(WORKERS)} workers x {CONCURRENCY} pool processes, "
          "submitted in batches of 1,000:")
    print(f"  pool SIGKILLs {figures.pool_kills} ({figures.kills_mid_run} inside an execution), "
          f"worker SIGKILL + restart {figures.worker_restarts} (executions cut short: {figures.orphans}, "
          f"their runs ended {figures.orphans_recovered_after:.1f} s later)")
    print(f"  took {figures.seconds:6.1f} s   {figures.runs_per_second:6.0f} runs/s")
    print(f"  runs lost                  {figures.lost:6d}   (not final {len(figures.missing)}, "
          f"succeeded without effect {len(figures.succeeded_without_effect)})")
    print(f"  effects                    {figures.effects:6d}   duplicate effects {figures.duplicate_effects}")
    print(f"  final states               {dict(figures.states)}   failed 'worker lost 3 times' {figures.lost_thrice}")
    print(f"  redelivered runs           {figures.redelivered:6d}   handed over by the watch {figures.handed_over}")
    print(f"  executions                 {figures.executions:6d}   repeated {figures.repeated_executions}, "
          f"after the run had ended {figures.after_final}, found the effect done {figures.refused_by_mark}")
    print(f"  executions of one run at the same time  {len(figures.overlapping)}")


if __name__ == "__main__":
    main()
