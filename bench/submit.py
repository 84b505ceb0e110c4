"""Benchmark: bulk submit — 10,000 specs through ``Service.create_many`` (issue 13: ≤ 2 s).

    python3 boot.py python bench/submit.py [--count 10000] [--rounds 3]

Starts a private redis-server on 127.0.0.1 (a free port, never 6379; no persistence) and, in each round,
creates ``--count`` specs in batches of 1,000 (the most one submit takes, as ``taskman submit`` of a file
of 1,000 does) in a fresh namespace:

- **immediate** code tasks: each is validated, stored with its run and its send guard, its Celery message
  published (nobody consumes the queue here) and its guard dropped;
- **delayed** code tasks (a day away): validated, stored, and put in the due set.

The baseline, measured in the same round: the same specs' JSON written by a raw Redis pipeline, one
``HSET`` per spec, 1,000 per round trip — what storing them costs with no validation, no run, no message,
no audit. Prints specs/s, the time for all of them and the ratio to the baseline (medians over the rounds,
every round shown); asserts nothing. The machine's load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["TASKMAN_CONFIG"] = "/nonexistent"

from core.config import Settings  # noqa: E402
from core.embedded import RedisServer  # noqa: E402

BATCH = 1000
CODE = {"function_code": "def main(n=1):\n    return n * 2\n", "function_name": "main", "kwargs": {"n": 21}}


def specs(count: int, mode: str) -> list[dict]:
    extra = {"delay_seconds": 86400} if mode == "delayed" else {}
    return [dict(CODE, name=f"{mode}-{i:06d}", **extra) for i in range(count)]


def through_service(url: str, namespace: str, items: list[dict]) -> float:
    """Seconds to create ``items`` with ``Service.create_many``, in batches."""
    from core.service import Service

    service = Service.from_settings(Settings(redis_url=url, namespace=namespace))
    service.create_many(items[:10])  # not counted: the first call loads the scripts and connects the broker
    begin = time.perf_counter()
    for start in range(0, len(items), BATCH):
        service.create_many(items[start:start + BATCH])
    return time.perf_counter() - begin


def raw_pipeline(url: str, namespace: str, items: list[dict]) -> float:
    """Seconds to write each spec's JSON with one HSET, 1,000 to a pipeline."""
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    begin = time.perf_counter()
    for start in range(0, len(items), BATCH):
        pipe = client.pipeline(transaction=False)
        for index, item in enumerate(items[start:start + BATCH], start):
            pipe.hset(f"{namespace}:raw:{index}", mapping={"id": str(index), "spec": json.dumps(item)})
        pipe.execute()
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    load_start = os.getloadavg()
    results: dict[str, list[float]] = {"immediate": [], "delayed": [], "raw": []}
    with tempfile.TemporaryDirectory(prefix="taskman-submit-") as folder, \
            RedisServer(Path(folder), appendonly=False) as server:
        server.start()
        for round_no in range(options.rounds):
            for mode in ("immediate", "delayed"):
                items = specs(options.count, mode)
                results["raw"].append(raw_pipeline(server.url, f"raw{round_no}{mode}", items))
                results[mode].append(through_service(server.url, f"submit{round_no}{mode}", items))
            print(f"round {round_no + 1}: immediate {results['immediate'][-1]:.2f} s, delayed "
                  f"{results['delayed'][-1]:.2f} s, raw HSET pipeline {results['raw'][-1]:.2f} s", flush=True)
    load_end = os.getloadavg()
    raw = statistics.median(results["raw"])
    print()
    print(f"bench/submit.py: {options.count:,} specs in batches of {BATCH:,}, {options.rounds} rounds (medians); "
          f"{os.cpu_count()} cores, load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end")
    print(f"{'what':<44}{'time':>10}{'specs/s':>12}{'vs raw':>9}  target")
    for mode, label in (("immediate", "immediate code tasks (stored, run, message)"),
                        ("delayed", "delayed code tasks (stored, due set)"),
                        ("raw", "raw pipeline, one HSET of the JSON per spec")):
        seconds = statistics.median(results[mode])
        target = "" if mode == "raw" else ("≤ 2 s: met" if seconds <= 2.0 else "≤ 2 s: MISSED")
        print(f"{label:<44}{seconds:>9.2f}s{options.count / seconds:>12,.0f}{seconds / raw:>8.1f}x  {target}")


if __name__ == "__main__":
    main()
