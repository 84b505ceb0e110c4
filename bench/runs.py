"""Benchmark: taskman's cost per run and per scheduler tick, against baselines measured in the same run.

    python3 boot.py python bench/runs.py [--runs 1000]

Starts a private redis-server and measures, on 127.0.0.1 only:
0. plain Celery with its default configuration (``bench/plain_celery.py``: prefetch 4, acks on receipt,
   results in Redis), a prefork worker of 2 processes, N no-op tasks sent and their results collected:
   issue 13's baseline;
then, with taskman's prefork worker (2 processes; ``--prefetch`` sets its prefetch multiplier):
1. raw Celery: N no-op messages sent with ``send_task``, no bookkeeping, taskman's Celery settings;
2. taskman registered runs of the same no-op: spec stored, run records, events and logs;
3. taskman code runs (sandboxed ``return 1``);
4. one immediate task at a time, submit → its run's final event (code and registered): back to back, and
   (code) 20 ms apart, as one task on an idle stack meets it (back to back, each run also waits for the jail's
   next process, forked after the run before it);
5. the scheduler's idle tick with 10 and with 10,000 future entries in the due set;
6. lateness of 200 delayed runs all due at the same moment (fire time minus due time).
Prints figures and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.config import Settings  # noqa: E402

FINAL_EVENTS = ("run.succeeded", "run.failed", "run.timed_out", "run.stopped")
from core.embedded import RedisServer  # noqa: E402


def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.01)


def plain_celery_rate(n: int, url: str, env: dict, log) -> float:
    """Tasks per second of plain Celery with its default configuration on ``url`` (a database of its own): a
    prefork worker of 2 processes, ``n`` no-op tasks sent, then every result collected."""
    os.environ["BENCH_PLAIN_REDIS"] = url
    from bench.plain_celery import noop

    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "bench.plain_celery", "worker", "-P", "prefork",
                               "-c", "2", "-l", "WARNING", "--without-mingle", "--without-gossip"], cwd=ROOT,
                              env={**env, "BENCH_PLAIN_REDIS": url}, stdout=log, stderr=subprocess.STDOUT)
    try:
        noop.delay().get(timeout=60)  # the worker is up
        started = time.perf_counter()
        results = [noop.delay() for _ in range(n)]
        for result in results:
            result.get(timeout=300)
        return n / (time.perf_counter() - started)
    finally:
        worker.terminate()
        worker.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--prefetch", type=int, default=1,
                        help="the taskman worker's prefetch multiplier (1, taskman's Celery default; `taskman worker` "
                             "gives the registered queue 4)")
    options = parser.parse_args()
    n = options.runs
    with tempfile.TemporaryDirectory() as folder, RedisServer(Path(folder), appendonly=False) as server:
        server.start()
        env = {**os.environ, "TASKMAN_REDIS_URL": server.url, "TASKMAN_NAMESPACE": "bench",
               "TASKMAN_IMPORTS": "bench.noop_tasks", "TASKMAN_CONFIG": "/nonexistent",
               "PYTHONPATH": str(ROOT), "TASKMAN_SCHEDULER_INTERVAL": "0.05"}
        os.environ.update({k: v for k, v in env.items() if k.startswith("TASKMAN_")})
        from core.scheduler import Scheduler
        from core.service import Service

        settings = Settings()
        service = Service.from_settings(settings)
        store = service.store
        log = open(Path(folder) / "worker.log", "wb")
        plain = plain_celery_rate(n, server.url.rsplit("/", 1)[0] + "/5", env, log)
        prefetch = ["--prefetch-multiplier", str(options.prefetch)]
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", "code,registered",
                                   "-P", "prefork", "-c", "2", "-l", "WARNING", "--without-mingle",
                                   "--without-gossip", *prefetch], cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
        try:
            wait(lambda: "bench.noop" in service.registered_tasks(), 60, "the worker")
            time.sleep(1)

            key = "bench:raw-count"
            started = time.perf_counter()
            for _ in range(n):
                service.dispatcher.app.send_task("bench.noop", args=[key], queue="registered")
            wait(lambda: int(store.redis.get(key) or 0) >= n, 300, "raw Celery")
            raw = n / (time.perf_counter() - started)

            def taskman_rate(spec: dict) -> float:
                started = time.perf_counter()
                tasks = [task for start in range(0, n, 1000)  # a batch holds at most 1,000 specs
                         for task in service.create_many([dict(spec, name=f"b{i}")
                                                          for i in range(start, min(n, start + 1000))])]
                last = tasks[-1]
                ids = [task.runs[0].id for task in tasks]

                def all_final() -> bool:
                    if not store.get_run(last.runs[0].id).state.final:
                        return False
                    pipe = store.redis.pipeline(transaction=False)
                    for run_id in ids:
                        pipe.hget(store.keys.run(run_id), "state")
                    return all(state in ("succeeded", "failed") for state in pipe.execute())

                wait(all_final, 300, "taskman runs")
                return n / (time.perf_counter() - started)

            registered = taskman_rate({"task_name": "bench.noop"})
            code = taskman_rate({"function_code": "def f():\n    return 1", "function_name": "f"})

            def one_by_one(spec: dict, count: int = 50, gap: float = 0.0) -> list[float]:
                """Milliseconds from ``create`` of one immediate task to its run's final event, one at a time,
                ``gap`` seconds apart (0: each created as soon as the one before ended)."""
                took = []
                for i in range(count):
                    time.sleep(gap)
                    cursor = service.events_cursor()
                    begin = time.perf_counter()
                    run_id = service.create(dict(spec, name=f"one{i}")).runs[0].id
                    final = False
                    while not final and time.perf_counter() - begin < 30:
                        batch = service.events_since(cursor, wait_ms=1000)
                        cursor = batch.cursor
                        final = any(event.get("run_id") == run_id and event.get("type") in FINAL_EVENTS
                                    for _, event in batch.entries)
                    took.append((time.perf_counter() - begin) * 1000)
                return sorted(took)

            code_spec = {"function_code": "def f():\n    return 1", "function_name": "f"}
            one_code = one_by_one(code_spec)
            one_code_apart = one_by_one(code_spec, gap=0.02)
            one_registered = one_by_one({"task_name": "bench.noop"})

            scheduler = Scheduler(store, service.dispatcher, interval=0.05)
            tick_ms = {}
            for size in (10, 10_000):
                store.redis.delete(store.keys.due)
                pipe = store.redis.pipeline(transaction=False)
                for i in range(size):
                    pipe.zadd(store.keys.due, {f"t:idle{i}": time.time() + 3600 + i})
                pipe.execute()
                samples = []
                for _ in range(200):
                    begin = time.perf_counter()
                    scheduler.tick()
                    samples.append((time.perf_counter() - begin) * 1000)
                tick_ms[size] = statistics.median(samples)
            store.redis.delete(store.keys.due)

            due_at = time.time() + 2
            delayed = service.create_many([{"name": f"d{i}", "delay_seconds": due_at - time.time(),
                                            "task_name": "bench.noop"} for i in range(200)])
            deadline = time.time() + 30
            while time.time() < deadline and store.due_count():
                time.sleep(scheduler.tick())
            lags = []
            for task in delayed:
                run = store.recent_runs(task.id, 1)[0]
                lags.append((run.queued_at - run.scheduled_for) * 1000)
            scheduler.close()
        finally:
            worker.terminate()
            worker.wait(30)

    print(f"runs per measurement: {n}, prefork worker with 2 processes, Redis on 127.0.0.1")
    print(f"taskman worker (code and registered, 2 processes): prefetch multiplier {options.prefetch}")
    print(f"plain Celery, default configuration, results collected (issue 13's baseline) {plain:8.0f} tasks/s")
    print(f"raw Celery no-op, taskman's Celery settings {raw:8.0f} runs/s   {raw / plain:.2f}x of plain")
    print(f"taskman registered no-op         {registered:8.0f} runs/s   {registered / plain:.2f}x of plain, "
          f"{registered / raw:.2f}x of raw")
    print(f"taskman sandboxed code run       {code:8.0f} runs/s   {code / plain:.2f}x of plain, "
          f"{code / raw:.2f}x of raw; issue 13's target: ≥ 1.0x of plain")
    for label, took, goal in (("code", one_code, ", back to back"),
                              ("code", one_code_apart, ", 20 ms apart; issue 13's target: p50 ≤ 5 ms"),
                              ("registered", one_registered, ", back to back")):
        print(f"one {label + ' task,':16} submit → final {took[len(took) // 2]:6.1f} ms p50, {took[-2]:.1f} ms p98 "
              f"({len(took)} one at a time{goal})")
    print(f"scheduler idle tick, 10 due      {tick_ms[10]:8.3f} ms (median)")
    print(f"scheduler idle tick, 10,000 due  {tick_ms[10_000]:8.3f} ms (median)"
          f"   ratio {tick_ms[10_000] / tick_ms[10]:.2f}x")
    lags.sort()
    print(f"200 delayed runs due at once: lateness p50 {lags[len(lags) // 2]:.1f} ms, "
          f"p99 {lags[int(len(lags) * 0.99) - 1]:.1f} ms, max {lags[-1]:.1f} ms")


if __name__ == "__main__":
    main()
