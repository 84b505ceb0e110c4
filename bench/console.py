"""Benchmark: the console with 10,000 tasks — load time, filter, update latency, and what an idle console costs Redis.

    python3 boot.py python bench/console.py [--tasks 10000]

Starts a private redis-server on 127.0.0.1, stores N cron tasks, opens the console headless
(Textual's test driver) and measures: time until the list shows its rows; time from a change made
elsewhere (a pause) to the row showing it; time for a filter to apply and to clear; Redis commands
per second while the console sits idle, against the same Redis with no console open (the
baseline). Prints figures; asserts nothing. ``bench/scale.py`` runs the same ``measure`` at 100,000.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TASKMAN_CONFIG", "/nonexistent")

from core.config import Settings  # noqa: E402
from core.embedded import RedisServer  # noqa: E402

SPEC = {"cron_expression": "0 0 1 1 *", "function_code": "def f():\n    return 1", "function_name": "f"}


def command_calls(client) -> dict[str, int]:
    """Calls of each command the server has answered since it started (INFO commandstats)."""
    return {name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in client.info("commandstats").items()}


def total_calls(client) -> int:
    return sum(command_calls(client).values())


def idle_rate(client, seconds: float) -> tuple[float, dict[str, float]]:
    """Commands per second the server answers over ``seconds`` (the INFO call that reads the count not
    counted), and per command."""
    before = command_calls(client)
    time.sleep(seconds)
    after = command_calls(client)
    return _rate(before, after, seconds)


def _rate(before: dict[str, int], after: dict[str, int], seconds: float) -> tuple[float, dict[str, float]]:
    per_command = {name: (calls - before.get(name, 0)) / seconds for name, calls in after.items()}
    per_command["info"] = per_command.get("info", 0.0) - 1 / seconds
    per_command = {name: rate for name, rate in per_command.items() if rate > 0}
    return sum(per_command.values()), per_command


def populate(service, n: int, spec: dict | None = None, batch: int = 1000) -> float:
    """Store ``n`` tasks named task-00000… (cron, never due soon), in batches; returns the seconds it took."""
    begin = time.perf_counter()
    for start in range(0, n, batch):
        service.create_many([dict(spec or SPEC, name=f"task-{i:05d}") for i in range(start, min(n, start + batch))])
    return time.perf_counter() - begin


async def _until(pilot, condition: Callable[[], bool], timeout: float, step: float = 0.002) -> bool:
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            return False
        await pilot.pause(step)
    return True


async def _arrived(condition: Callable[[], bool], timeout: float) -> bool:
    """Wait for ``condition`` by yielding to the app's loop only: ``Pilot.pause`` with a delay would draw the
    whole screen at every look (Textual forces a screen update there), and the figure would be the bench's."""
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(0.001)
    return True


def _paused(table, task_id: str) -> bool:
    return table.tasks[task_id].state.value == "paused"


def _filtered(table, on: bool) -> bool:
    return table.filtered == on


async def measure(service, n: int, *, idle_seconds: float = 10.0, load_timeout: float = 180.0,
                  changes: int = 20) -> dict:
    """Open the console on ``service`` (holding ``n`` tasks) and measure it; every wait is bounded.

    Figures: ``first_rows_s`` (the list shows rows), ``rows`` (how many it shows; the console may load fewer
    than ``n``), ``load_s`` (all of ``n`` shown, None if it never showed them all), ``update_ms`` /
    ``update_max_ms`` (a pause made elsewhere reaching its row), ``filter_ms`` / ``filter_rows`` (the
    ``state:paused`` filter applied) and ``clear_ms`` (the filter cleared, every row back),
    ``oldest_found`` / ``oldest_found_s`` (the oldest task's name as a filter shows its row, searched
in Redis when the console does not hold it; and after how long), ``idle_calls_per_s`` and
    ``idle_by_command`` (Redis commands per second, whole server, while the console sits idle).
    ``timed_out`` names the step that gave up, if one did.
    """
    from textual.widgets import Input

    from tui.app import TaskmanApp
    from tui.widgets.task_table import TaskTable

    figures: dict = {"load_s": None, "timed_out": ""}
    started = time.perf_counter()
    async with TaskmanApp(service).run_test(size=(120, 40)) as pilot:
        table = pilot.app.screen.query_one(TaskTable)
        if not await _until(pilot, lambda: table.row_count > 0, load_timeout, 0.01):
            figures["timed_out"] = f"no rows after {load_timeout:.0f} s"
            return figures
        await pilot.pause()  # the paint that follows
        figures["first_rows_s"] = time.perf_counter() - started
        settled = await _until(pilot, lambda: table.row_count >= n, min(5.0, load_timeout), 0.01)
        figures["rows"] = table.row_count
        if settled:
            figures["load_s"] = time.perf_counter() - started

        ids = list(table.tasks)[:changes]
        latencies = []
        for task_id in ids:
            await pilot.pause(0.05)  # the previous change's paint is over
            begin = time.perf_counter()
            await asyncio.to_thread(service.pause, task_id)
            if not await _arrived(partial(_paused, table, task_id), 30):
                figures["timed_out"] = "a pause never reached its row (30 s)"
                break
            await pilot.pause()  # and the screen drawn with it
            latencies.append((time.perf_counter() - begin) * 1000)
        if latencies:
            figures["update_ms"] = statistics.median(latencies)
            figures["update_max_ms"] = max(latencies)

        box = pilot.app.screen.query_one("#filter", Input)
        await pilot.press("slash")
        for label, text in (("filter", "state:paused"), ("clear", "")):
            begin = time.perf_counter()
            box.value = text
            if not await _until(pilot, partial(_filtered, table, bool(text)), 60):
                figures["timed_out"] = f"{label} never applied (60 s)"
                break
            await pilot.pause()
            figures[f"{label}_ms"] = (time.perf_counter() - begin) * 1000
            if text:
                figures["filter_rows"] = table.row_count
        oldest = service.store.task_ids(-1, -1)
        if oldest:
            begin = time.perf_counter()
            box.value = service.get(oldest[0], runs=0).name
            await _until(pilot, lambda: table.filtered, 60)
            figures["oldest_found"] = await _until(pilot, lambda: table.row_count > 0, 60, 0.01)
            figures["oldest_found_s"] = time.perf_counter() - begin
            box.value = ""
            await _until(pilot, lambda: not table.filtered, 60)
        await pilot.press("escape")

        await pilot.pause(2)
        before = command_calls(service.store.redis)
        await pilot.pause(idle_seconds)
        figures["idle_calls_per_s"], figures["idle_by_command"] = _rate(
            before, command_calls(service.store.redis), idle_seconds)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    n = parser.parse_args().tasks
    with tempfile.TemporaryDirectory() as folder, RedisServer(Path(folder), appendonly=False) as server:
        server.start()
        from core.service import Service

        service = Service.from_settings(Settings(redis_url=server.url, namespace="bench"))
        populate(service, n)
        begin = time.perf_counter()
        service.list_tasks(limit=n)
        list_s = time.perf_counter() - begin
        baseline, _ = idle_rate(service.store.redis, 10)
        figures = asyncio.run(measure(service, n))
    print(f"tasks: {n}, Redis on 127.0.0.1")
    print(f"service.list of all tasks        {list_s * 1000:8.0f} ms")
    print(f"console: first rows shown after  {figures.get('first_rows_s', float('nan')) * 1000:8.0f} ms "
          f"({figures.get('rows', 0)} rows)")
    if figures["load_s"] is not None:
        print(f"console: all rows shown after    {figures['load_s'] * 1000:8.0f} ms")
    print(f"change elsewhere → row updated   {figures.get('update_ms', float('nan')):8.1f} ms median, "
          f"{figures.get('update_max_ms', float('nan')):.1f} ms max")
    print(f"filter state:paused applied      {figures.get('filter_ms', float('nan')):8.1f} ms "
          f"({figures.get('filter_rows', 0)} rows); cleared in {figures.get('clear_ms', float('nan')):.1f} ms")
    print(f"Redis commands/s, no console     {baseline:8.2f} (baseline)")
    idle = figures.get("idle_calls_per_s", float("nan"))
    print(f"Redis commands/s, idle console   {idle:8.2f}   (+{idle - baseline:.2f} over the baseline)")
    by_command = figures.get("idle_by_command") or {}
    if by_command:
        print("  by command: " + ", ".join(f"{name} {rate:.2f}/s" for name, rate in
                                          sorted(by_command.items(), key=lambda item: -item[1])))
    if figures["timed_out"]:
        print(f"gave up: {figures['timed_out']}")


if __name__ == "__main__":
    main()
