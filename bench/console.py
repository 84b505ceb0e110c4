"""Benchmark: the console with 10,000 tasks — load time, update latency, and what an idle console costs Redis.

    python3 boot.py python bench/console.py [--tasks 10000]

Starts a private redis-server on 127.0.0.1, stores N cron tasks, opens the console headless
(Textual's test driver) and measures: time to list them all; time from a change made elsewhere
(a pause) to the row showing it; Redis commands per second while the console sits idle, against
the same Redis with no console open (the baseline). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TASKMAN_CONFIG", "/nonexistent")

from core.config import Settings  # noqa: E402
from core.embedded import RedisServer  # noqa: E402


def total_calls(client) -> int:
    stats = client.info("commandstats")
    return sum(int(value["calls"]) for value in stats.values())


async def measure(service, n: int) -> dict:
    from tui.app import TaskmanApp
    from tui.widgets.task_table import TaskTable

    figures: dict = {}
    started = time.perf_counter()
    async with TaskmanApp(service).run_test(size=(120, 40)) as pilot:
        table = pilot.app.screen.query_one(TaskTable)
        while table.row_count < n:
            await pilot.pause(0.01)
        figures["load_s"] = time.perf_counter() - started
        ids = list(table.tasks)[:20]
        latencies = []
        for task_id in ids:
            begin = time.perf_counter()
            await asyncio.to_thread(service.pause, task_id)
            while table.tasks[task_id].state.value != "paused":
                await pilot.pause(0.002)
            latencies.append((time.perf_counter() - begin) * 1000)
        figures["update_ms"] = statistics.median(latencies)
        figures["update_max_ms"] = max(latencies)
        await pilot.pause(2)
        before = total_calls(service.store.redis)
        await pilot.pause(10)
        figures["idle_calls_per_s"] = (total_calls(service.store.redis) - before - 1) / 10
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    n = parser.parse_args().tasks
    with tempfile.TemporaryDirectory() as folder, RedisServer(Path(folder), appendonly=False) as server:
        server.start()
        from core.service import Service

        service = Service.from_settings(Settings(redis_url=server.url, namespace="bench"))
        spec = {"cron_expression": "0 0 1 1 *", "function_code": "def f():\n    return 1", "function_name": "f"}
        for start in range(0, n, 1000):
            service.create_many([dict(spec, name=f"task-{i:05d}") for i in range(start, min(n, start + 1000))])
        begin = time.perf_counter()
        service.list_tasks(limit=n)
        list_s = time.perf_counter() - begin
        before = total_calls(service.store.redis)
        time.sleep(10)
        baseline = (total_calls(service.store.redis) - before - 1) / 10
        figures = asyncio.run(measure(service, n))
    print(f"tasks: {n}, Redis on 127.0.0.1")
    print(f"service.list of all tasks        {list_s * 1000:8.0f} ms")
    print(f"console: all rows shown after    {figures['load_s'] * 1000:8.0f} ms")
    print(f"change elsewhere → row updated   {figures['update_ms']:8.1f} ms median, "
          f"{figures['update_max_ms']:.1f} ms max")
    print(f"Redis commands/s, no console     {baseline:8.2f} (baseline)")
    print(f"Redis commands/s, idle console   {figures['idle_calls_per_s']:8.2f}   "
          f"(+{figures['idle_calls_per_s'] - baseline:.2f} over the baseline)")


if __name__ == "__main__":
    main()
