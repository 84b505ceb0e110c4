"""Host limits and per-run isolation, proven through a real prefork worker.

The worker here has one pool process (``-c 1``) in a namespace of its own, so "the next run on the same
worker" is literally the same process (its pid is in each run's ``worker`` field) -- except after a
hard kill, where it must be the replacement the pool started. Each limit is hit with a small per-task
value (timeout 1 s, memory 256 MiB, ...), and each test measures how long the limit took to fire.
"""

from __future__ import annotations

import random
import textwrap
import time
import uuid

import pytest

from core.config import Settings
from core.models import RunState
from tests.conftest import Processes, _process_env, wait_for

KILL_GRACE = 1.0
WORKER = ("worker", "-Q", "code,registered", "-P", "prefork", "-c", "1", "-n", "limits@%h", "-l", "INFO",
          "--without-mingle", "--without-gossip")
MEASURED: dict[str, str] = {}
"""How long each limit took to fire, printed at the end of the module (``pytest -s`` shows it)."""


@pytest.fixture(scope="module")
def limited(taskman_env, tmp_path_factory):
    """(service, processes) for a namespace served by one single-process code worker."""
    from core.service import Service

    env = {**taskman_env, "TASKMAN_NAMESPACE": f"limits{uuid.uuid4().hex[:6]}", "TASKMAN_MAX_TIMEOUT": "10",
           "TASKMAN_DEFAULT_TIMEOUT": "10", "TASKMAN_KILL_GRACE": str(KILL_GRACE)}
    procs = Processes(_process_env(env), tmp_path_factory.mktemp("limits-logs"))
    values = {key.removeprefix("TASKMAN_").lower(): value for key, value in env.items()}
    service = Service.from_settings(Settings(**values))
    procs.start("worker-limits", *WORKER)
    wait_for(lambda: service.registered_tasks(), timeout=60, message="the limits worker to be ready")
    yield service
    procs.stop_all()
    for name, figure in sorted(MEASURED.items()):
        print(f"{name:28} {figure}")


def run_code(service, source: str, name: str = "limit", **spec):
    """Create an immediate code task from ``source`` (function ``main``); wait for its final run."""
    started = time.monotonic()
    task = service.create({"name": name, "function_code": textwrap.dedent(source), "function_name": "main",
                           **spec})
    run = wait_for(lambda: (r := service.get(task.id).runs[0]).state.final and r, timeout=30,
                   message=f"the run of {name} to end")
    return run, time.monotonic() - started


def pid_of(run) -> int:
    return int(run.worker.rsplit(":", 1)[1])


def next_run_succeeds(service, after) -> int:
    """A plain run after ``after`` succeeds; returns its pool process id."""
    run, _ = run_code(service, "def main():\n    return sum(range(10))", name="next")
    assert run.state is RunState.SUCCEEDED, run.error
    assert run.result == 45
    return pid_of(run)


# --------------------------------------------------------------------------------------------
# Time: the soft limit, and the hard kill behind it


def test_an_endless_loop_times_out_at_its_soft_limit(limited):
    run, took = run_code(limited, "def main():\n    while True:\n        pass", timeout=1)
    MEASURED["endless loop (timeout 1 s)"] = f"{run.duration_ms / 1000:.2f} s in the run, {took:.2f} s end to end"
    assert run.state is RunState.TIMED_OUT
    assert run.error == "limit 1 s"
    assert 0.8 <= run.duration_ms / 1000 <= 1.5
    assert next_run_succeeds(limited, run) == pid_of(run), "the soft limit leaves the process serving"


def test_a_huge_power_is_stopped_within_its_time_limit(limited):
    """``10**10**8`` is C-level work, but CPython's ``long_pow`` checks for signals as it goes, so here the
    soft limit's exception lands inside it; the hard kill would follow if it did not."""
    run, took = run_code(limited, "def main():\n    return 10 ** 10 ** 8", timeout=1)
    MEASURED["huge power (timeout 1 s)"] = f"{run.duration_ms / 1000:.2f} s in the run, {took:.2f} s end to end"
    assert run.state is RunState.TIMED_OUT
    assert run.error.startswith("limit 1 s")
    assert 0.8 <= run.duration_ms / 1000 <= 1 + KILL_GRACE + 1.0
    next_run_succeeds(limited, run)


HARD_CASES = {
    "float in a huge range": "def main():\n    return 1.5 in range(10 ** 12)",
    "soft limit swallowed": """
        def main():
            while True:
                try:
                    while True:
                        pass
                except Exception:
                    pass
        """,
}


@pytest.mark.parametrize("case", sorted(HARD_CASES))
def test_work_that_never_yields_to_the_soft_limit_is_killed_at_it(limited, case):
    """C-level work (a float searched in a range of 10**12 ints) never returns to the interpreter, so
    no exception could stop it; code that catches exceptions would carry on. The run is a jailed process
    of its own, so the worker kills that process at the soft limit and goes on serving: no hard kill."""
    run, took = run_code(limited, HARD_CASES[case], timeout=1)
    MEASURED[f"{case} (timeout 1 s)"] = f"{run.duration_ms / 1000:.2f} s in the run, {took:.2f} s end to end"
    assert run.state is RunState.TIMED_OUT
    assert run.error == "limit 1 s"
    assert 0.8 <= run.duration_ms / 1000 <= 1 + KILL_GRACE / 2 + 0.5
    assert len(limited.get(run.task_id).runs) == 1
    assert next_run_succeeds(limited, run) == pid_of(run), "the worker's pool process was not killed"


# --------------------------------------------------------------------------------------------
# Memory, recursion, output and result


def test_a_memory_bomb_fails_naming_the_memory_limit(limited):
    source = """
    def main():
        hoard = []
        while True:
            hoard.append("x" * 1_000_000)
    """
    run, took = run_code(limited, source, memory_limit_mb=256)
    MEASURED["memory bomb (256 MiB)"] = f"{run.duration_ms / 1000:.2f} s in the run"
    assert run.state is RunState.FAILED
    assert run.error == "MemoryError: the code ran out of memory (limit 256 MiB)"
    assert 'File "<task>", line 5, in main' in run.traceback
    assert run.duration_ms < 5000
    assert next_run_succeeds(limited, run) == pid_of(run), "the process got its memory back and goes on"


def test_a_big_allocation_at_once_fails_the_same_way(limited):
    run, _ = run_code(limited, "def main():\n    return len(bytes(2 ** 33))", memory_limit_mb=64)
    assert run.state is RunState.FAILED and run.error.endswith("(limit 64 MiB)")
    assert next_run_succeeds(limited, run) == pid_of(run)


def test_deep_recursion_fails_naming_the_recursion_limit(limited):
    source = "def down(n):\n    return down(n + 1) + 1\ndef main():\n    return down(0)"
    run, _ = run_code(limited, source, recursion_limit=100)
    MEASURED["deep recursion (100 calls)"] = f"{run.duration_ms:.0f} ms in the run"
    assert run.state is RunState.FAILED
    assert run.error == "RecursionError: maximum recursion depth exceeded (limit 100 calls)"
    assert "[the line above repeated" in run.traceback and len(run.traceback) < 2000
    assert next_run_succeeds(limited, run) == pid_of(run)


def test_a_print_flood_fails_at_the_output_cap_and_the_log_stream_stays_bounded(limited):
    run, _ = run_code(limited, "def main():\n    while True:\n        print('y' * 99)", output_cap=10_000)
    MEASURED["print flood (10,000 bytes)"] = f"{run.duration_ms:.0f} ms in the run"
    assert run.state is RunState.FAILED
    assert run.error == "the code printed more than the output cap of 10000 bytes"
    assert run.output.endswith("… [output truncated at 10000 bytes]\n")
    assert len(run.output.encode()) <= 10_000 + 100
    printed = [entry for _, entry in limited.store.stream_tail("logs", 5000)
               if entry["run"] == run.id and entry["level"] == "print"]
    assert 90 <= len(printed) <= 102, "one log line per printed line, up to the cap, then the marker"
    assert next_run_succeeds(limited, run) == pid_of(run)


def test_an_oversized_result_fails_at_the_result_cap(limited):
    run, _ = run_code(limited, "def main():\n    return 'r' * 50_000", result_cap=10_000)
    assert run.state is RunState.FAILED
    assert "result cap of 10000 bytes" in run.error
    assert run.result is None
    assert next_run_succeeds(limited, run) == pid_of(run)


def test_the_configured_defaults_apply_when_a_task_sets_no_limit(limited):
    run, _ = run_code(limited, "def main():\n    return 'r' * (300 * 1024)")
    assert run.state is RunState.FAILED and "result cap of 262144 bytes" in run.error


# --------------------------------------------------------------------------------------------
# Exits


@pytest.mark.parametrize(("statement", "error", "retries"), [
    ("raise SystemExit(3)", "the code tried to stop the program (SystemExit: 3)", 2),
    ("raise KeyboardInterrupt()", "the code tried to stop the program (KeyboardInterrupt)", 2),
    ("raise GeneratorExit()", "the code tried to stop the program (GeneratorExit)", 2),
    ("raise Boom('bang')", "Boom: bang", 0),
    ("raise TimeLimitExceeded('fake')", "TimeLimitExceeded: fake", 0),
])
def test_exits_and_base_exceptions_fail_the_run_never_the_worker(limited, statement, error, retries):
    """An exit is final (never retried); a task's own ``BaseException`` -- even one named like Celery's
    time limit -- is an ordinary error of the run. Neither reaches the pool process."""
    source = f"""
    class Boom(BaseException):
        pass
    class TimeLimitExceeded(BaseException):
        pass
    def main():
        {statement}
    """
    run, _ = run_code(limited, source, max_retries=retries)
    assert run.state is RunState.FAILED and run.error == error
    assert len(limited.get(run.task_id).runs) == 1
    assert next_run_succeeds(limited, run) == pid_of(run), "the same process goes on serving"


# --------------------------------------------------------------------------------------------
# Isolation: module-level state does not outlive a run in the same process


def consecutive(service, *sources: str):
    """Run each source in turn; all must succeed in one and the same pool process."""
    runs = [run_code(service, source, name=f"iso-{index}")[0] for index, source in enumerate(sources)]
    assert all(run.state is RunState.SUCCEEDED for run in runs), [run.error for run in runs]
    assert len({pid_of(run) for run in runs}) == 1, "all in the same process"
    return [run.result for run in runs]


def test_random_seeding_does_not_reach_the_next_run(limited):
    seed = "import random\ndef main():\n    random.seed(42)\n    return [random.random() for _ in range(3)]"
    draw = "import random\ndef main():\n    return [random.random() for _ in range(3)]"
    seeded, after, again = consecutive(limited, seed, draw, seed)
    generator = random.Random(42)
    assert seeded == again == [generator.random() for _ in range(3)], "seeding within a run works"
    continued = [generator.random() for _ in range(3)]
    assert after != continued and after != seeded, "the next run neither continues nor repeats the seeded one"


def test_decimal_context_changes_do_not_reach_the_next_run(limited):
    change = """
    import decimal
    def main():
        decimal.getcontext().prec = 3
        decimal.getcontext().rounding = decimal.ROUND_FLOOR
        decimal.setcontext(decimal.Context(prec=2))
        return str(decimal.Decimal(1) / decimal.Decimal(3))
    """
    read = "import decimal\ndef main():\n    return str(decimal.Decimal(2) / decimal.Decimal(3))"
    assert consecutive(limited, change, read) == ["0.33", "0.6666666666666666666666666667"]


def test_module_proxies_cannot_be_changed_for_the_next_run(limited):
    attempt = """
    import fractions, json, math, string
    def main():
        refused = []
        for target, name, value in ((json, "dumps", len), (math, "pi", 3), (string, "ascii_letters", "")):
            try:
                setattr(target, name, value)
            except (TypeError, AttributeError) as exc:
                refused.append(name)
        try:
            json.JSONEncoder.item_separator = ";"
        except TypeError:
            refused.append("item_separator")
        try:
            fractions.Fraction.register(str)
        except AttributeError:
            refused.append("register")
        return refused
    """
    check = """
    import fractions, json, math, string
    def main():
        return [json.dumps([1, 2]), math.pi > 3.14, len(string.ascii_letters), isinstance("x", fractions.Fraction)]
    """
    refused, seen = consecutive(limited, attempt, check)
    assert refused == ["dumps", "pi", "ascii_letters", "item_separator", "register"]
    assert seen == ["[1, 2]", True, 52, False]


def test_globals_classes_and_caches_start_fresh_each_run(limited):
    source = """
    import functools
    seen = []
    class Counter:
        total = 0
    @functools.lru_cache(maxsize=None)
    def cached(n):
        seen.append(n)
        return n
    def main():
        Counter.total += 1
        cached(1)
        cached(1)
        return [Counter.total, len(seen), cached.cache_info().hits]
    """
    assert consecutive(limited, source, source) == [[1, 1, 1], [1, 1, 1]]
