"""Benchmark: what a command costs to start, against the floor of a Python that only imports click and redis.

    python3 boot.py python bench/startup.py [--repeat 7]

Starts a private redis-server on 127.0.0.1 with one task stored, then times, as fresh processes:
the floor (``python -c "import click, redis"``), ``taskman --help``, ``taskman list``, ``taskman show
ID``, and the console's first paint (a headless ``TaskmanApp`` that exits once its task list has
drawn its first row). Prints medians and each as a ratio of the floor measured in the same run;
the targets (issue 12) are list/show at most 1.5x the floor and first paint at most 1.5 s. Also
names the heavy packages each command loaded, which is where start-up time goes. Asserts nothing.

The commands take turns, one round after another, so a burst of load elsewhere on the machine
weighs on all of them alike; besides the wall time each prints its CPU time (user + system), which
other processes disturb less. Each command runs once unmeasured first, and the children never get
``PYTHONDONTWRITEBYTECODE``: taskman's own modules are then read from their cached bytecode, as an
installed taskman's are (pip compiles a wheel's on install) and as the floor's packages are; with the
variable set, every start would compile taskman's sources again and the ratio would measure that.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.embedded import RedisServer  # noqa: E402

HEAVY = ("celery", "kombu", "RestrictedPython", "httpx", "fastapi", "starlette", "textual", "pydantic")

FIRST_PAINT = """
import sys, time
started = float(sys.argv[1])
from core.config import Settings
from core.service import Service
from tui.app import TaskmanApp
from tui.widgets.task_table import TaskTable

class FirstPaint(TaskmanApp):
    def on_mount(self):
        self.set_interval(0.005, self._painted)

    def _painted(self):
        if self.screen.query(TaskTable) and self.screen.query_one(TaskTable).row_count:
            print(time.time() - started, flush=True)
            self.exit()

FirstPaint(Service.from_settings(Settings())).run(headless=True, size=(120, 40))
"""

LOADED = f"""
import sys
from tui.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(" ".join(sorted({{name.split(".")[0] for name in sys.modules}} & set({HEAVY!r}))) or "none of them")
"""


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def first_paint(env: dict[str, str]) -> float:
    result = subprocess.run([sys.executable, "-c", FIRST_PAINT, repr(time.time())], env=env, cwd=ROOT, check=True,
                            capture_output=True, text=True)
    return float(result.stdout.strip().splitlines()[-1])


def loaded_by(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-c", LOADED, *args], env=env, cwd=ROOT, capture_output=True, text=True)
    return (result.stdout.strip().splitlines() or ["?"])[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=11)
    options = parser.parse_args()
    taskman = str(Path(sys.executable).with_name("taskman"))
    with tempfile.TemporaryDirectory() as scratch:
        server = RedisServer(Path(scratch) / "redis", appendonly=False)
        (Path(scratch) / "redis").mkdir()
        server.start()
        try:
            inherited = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
            env = {**inherited, "TASKMAN_REDIS_URL": server.url, "TASKMAN_NAMESPACE": "startup",
                   "TASKMAN_CONFIG": "/nonexistent", "TASKMAN_DATA_DIR": scratch, "PYTHONPATH": str(ROOT)}
            from core.config import Settings
            from core.service import Service

            service = Service.from_settings(Settings(redis_url=server.url, namespace="startup", data_dir=scratch))
            task = service.create({"name": "one", "function_code": "def main():\n    return 1\n",
                                   "function_name": "main", "cron_expression": "0 0 1 1 *"})
            commands = {
                "floor: python -c 'import click, redis'": [sys.executable, "-c", "import click, redis"],
                "taskman --help": [taskman, "--help"],
                "taskman list": [taskman, "list"],
                f"taskman show {task.id}": [taskman, "show", task.id],
            }
            for argv in commands.values():  # unmeasured: writes the bytecode cache of taskman's modules
                timed(argv, env)
            walls: dict[str, list[float]] = {name: [] for name in commands}
            cpus: dict[str, list[float]] = {name: [] for name in commands}
            for _ in range(options.repeat):
                for name, argv in commands.items():
                    wall, cpu = timed(argv, env)
                    walls[name].append(wall)
                    cpus[name].append(cpu)
            paint = statistics.median(first_paint(env) for _ in range(max(3, options.repeat // 2)))
            floor_name = "floor: python -c 'import click, redis'"
            floor, floor_cpu = statistics.median(walls[floor_name]), statistics.median(cpus[floor_name])
            print(f"{'command':42} {'median':>9} {'x floor':>8} {'cpu':>9} {'x floor':>8}  heavy packages loaded")
            for name, args in zip(commands, [None, ["--help"], ["list"], ["show", task.id]], strict=True):
                heavy = loaded_by(args, env) if args else "-"
                seconds, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
                print(f"{name:42} {seconds * 1000:7.0f} ms {seconds / floor:7.2f}x "
                      f"{cpu * 1000:6.0f} ms {cpu / floor_cpu:7.2f}x  {heavy}")
            print(f"{'console first paint (headless, 1 task)':42} {paint * 1000:7.0f} ms {paint / floor:7.2f}x")
            print("targets: list and show <= 1.5x the floor; console first paint <= 1.5 s")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
