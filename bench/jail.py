"""Benchmark: what the jail adds to a code run, against the unjailed sandbox measured in the same run.

    python3 boot.py python bench/jail.py [--runs 500]

Both paths run the same restricted ``return 1`` (and a small loop with prints) in this process's view:
the baseline calls ``sandbox.execute`` in-process (what a pool process did before the jail, compile
cache included); the jailed path hands each run to a warm template that forks a walled process per
run. Prints per-run latency (p50, p99), the latency the jail adds, and throughput of each path with
one and with two callers at once (two cores). Runs back to back pay the fork of the next walled
process; a run that arrives while one is waiting (runs 20 ms apart) pays only the hand-over.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import walls  # noqa: E402
from core.jail import Jail  # noqa: E402
from core.sandbox import Limits, execute  # noqa: E402

SOURCES = {
    "return 1": "def main():\n    return 1\n",
    "loop + 10 prints": "def main():\n    total = 0\n    for i in range(1000):\n        total += i\n"
                        "        if i % 100 == 0:\n            print(i)\n    return total\n",
}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def timed(call, n: int) -> list[float]:
    took = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        took.append(time.perf_counter() - started)
    return took


def _worker(args: tuple[str, str, int]) -> float:
    """Runs/s of one caller process (used for the two-caller figures)."""
    path, source, n = args
    if path == "jail":
        jail = Jail(jail_uid=walls.DEFAULT_JAIL_UID, accept_weak=False, grace=1.0)
        jail.start()
        call = lambda: jail.run(source, "main", [], {}, Limits(), 10)  # noqa: E731
    else:
        call = lambda: execute(source, "main", [], {}, Limits())  # noqa: E731
    call()
    started = time.perf_counter()
    for _ in range(n):
        call()
    rate = n / (time.perf_counter() - started)
    if path == "jail":
        jail.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=500)
    n = parser.parse_args().runs
    jail = Jail(jail_uid=walls.DEFAULT_JAIL_UID, accept_weak=False, grace=1.0)
    report = jail.start()
    print(f"walls up: {', '.join(name for name, up in report.up.items() if up)}"
          f"; missing: {report.missing() or 'none'}")
    for label, source in SOURCES.items():
        outcome = jail.run(source, "main", [], {}, Limits(), 10)
        assert outcome.status == "done", outcome
        plain = timed(lambda source=source: execute(source, "main", [], {}, Limits()), n)
        jailed = timed(lambda source=source: jail.run(source, "main", [], {}, Limits(), 10), n)
        added50 = statistics.median(jailed) - statistics.median(plain)
        added99 = percentile(jailed, 0.99) - percentile(plain, 0.99)
        print(f"\n{label}  ({n} runs each)")
        print(f"  in-process sandbox   p50 {statistics.median(plain) * 1000:7.2f} ms"
              f"   p99 {percentile(plain, 0.99) * 1000:7.2f} ms"
              f"   {n / sum(plain):8.0f} runs/s")
        print(f"  jailed               p50 {statistics.median(jailed) * 1000:7.2f} ms"
              f"   p99 {percentile(jailed, 0.99) * 1000:7.2f} ms"
              f"   {n / sum(jailed):8.0f} runs/s")
        print(f"  added by the jail    p50 {added50 * 1000:7.2f} ms   p99 {added99 * 1000:7.2f} ms"
              f"   throughput ratio {sum(plain) / sum(jailed):.2f}x   (back to back)")

        def spaced() -> None:
            time.sleep(0.02)  # runs that arrive apart find their walled process forked and waiting

        alone = [took for took in timed(
            lambda source=source: (spaced(), jail.run(source, "main", [], {}, Limits(), 10)), n // 3)]
        alone = [took - 0.02 for took in alone]
        print(f"  one run at a time    p50 {statistics.median(alone) * 1000:7.2f} ms"
              f"   p99 {percentile(alone, 0.99) * 1000:7.2f} ms"
              f"   (20 ms apart: the latency a single run sees)")
        with ProcessPoolExecutor(2) as pool:
            two_plain = sum(pool.map(_worker, [("plain", source, n)] * 2))
            two_jailed = sum(pool.map(_worker, [("jail", source, n)] * 2))
        print(f"  two callers at once  in-process {two_plain:8.0f} runs/s   jailed {two_jailed:8.0f} runs/s"
              f"   ratio {two_jailed / two_plain:.2f}x")
    jail.close()


if __name__ == "__main__":
    main()
