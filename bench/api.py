"""Benchmark: the REST API under issue 13's mix, against a bare endpoint of the same server in the same run.

    python3 boot.py python bench/api.py [--clients 16] [--seconds 20]

Starts a private redis-server and one ``taskman api`` process on 127.0.0.1 (no workers: created tasks are
HTTP tasks delayed a day, so nothing runs), stores 200 tasks, then runs ``--clients`` concurrent clients for
``--seconds``: 80% ``GET /api/tasks?limit=20``, 20% creates (``POST /api/tasks``), each with an operator
token. The baseline, run first with the same clients against the same process, is ``GET /api/health``
(no token, one Redis round trip), so the ratio says what taskman's own work costs beyond the server's.
Prints requests per second, p50 and p99 latency, errors, and whether every acknowledged create was stored.
Issue 13's target: at least 4x the 124 requests/s measured before it, with p99 at most 50 ms. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import auth  # noqa: E402
from core.config import Settings  # noqa: E402
from core.embedded import RedisServer  # noqa: E402
from core.service import Service  # noqa: E402
from tests.e2e.apiserver import ApiServer  # noqa: E402

BEFORE = 124.0
"""Requests per second issue 13 measured with this mix before it (one process, 16 clients, 20 s)."""
SPEC = {"api_url": "http://127.0.0.1:9/never", "delay_seconds": 86400}
"""What each create stores: an HTTP task (an operator may create those; code tasks need an admin) due in a day."""


def load(url: str, secret: str | None, clients: int, seconds: float, mix: bool) -> dict:
    """``clients`` threads sending requests for ``seconds``; latencies in ms, errors, ids of stored creates."""
    latencies: list[float] = []
    errors: list[str] = []
    created: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}

    def client(seed: int) -> None:
        pick = random.Random(seed)
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            while time.monotonic() < stop_at:
                begin = time.perf_counter()
                try:
                    if not mix:
                        answer = http.get("/api/health")
                    elif pick.random() < 0.8:
                        answer = http.get("/api/tasks", params={"limit": 20})
                    else:
                        answer = http.post("/api/tasks", json={"name": f"bench-{seed}-{time.time_ns()}", **SPEC})
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(type(exc).__name__)
                    continue
                took = (time.perf_counter() - begin) * 1000
                with lock:
                    latencies.append(took)
                    if answer.status_code >= 400:
                        errors.append(f"{answer.status_code} {answer.text[:100]}")
                    elif answer.request.method == "POST":
                        created.append(answer.json()["id"])

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
    begin = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - begin
    ordered = sorted(latencies)
    return {"rps": len(latencies) / elapsed, "p50": statistics.median(ordered) if ordered else float("nan"),
            "p99": ordered[int(len(ordered) * 0.99) - 1] if ordered else float("nan"), "errors": errors,
            "created": created, "requests": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1, help="serving processes (`taskman api --workers`)")
    options = parser.parse_args()
    load_start = os.getloadavg()
    namespace = "benchapi"
    with tempfile.TemporaryDirectory(prefix="taskman-api-") as folder, \
            RedisServer(Path(folder), appendonly=False) as server:
        server.start()
        settings = Settings(redis_url=server.url, namespace=namespace, api_rate_per_minute=10_000_000,
                            http_allow=["127.0.0.1"])
        service = Service.from_settings(settings)
        service.create_many([{"name": f"stored-{i:03d}", **SPEC} for i in range(200)])
        secret, _ = auth.create(service.store, "bench", "operator", actor="bench")
        env = {**os.environ, "TASKMAN_REDIS_URL": server.url, "TASKMAN_NAMESPACE": namespace,
               "TASKMAN_API_RATE_PER_MINUTE": "10000000", "TASKMAN_HTTP_ALLOW": "127.0.0.1", "PYTHONPATH": str(ROOT)}
        api = ApiServer(env, Path(folder) / "api.log", "--workers", str(options.workers)).start()
        try:
            load(api.url, secret, options.clients, 2.0, mix=True)  # warm-up, not counted
            base = load(api.url, None, options.clients, options.seconds, mix=False)
            mixed = load(api.url, secret, options.clients, options.seconds, mix=True)
            stored = {task.id for task in service.tasks(mixed["created"])}
        finally:
            api.stop()
    print(f"bench/api.py: {os.cpu_count()} cores, load average {load_start[0]:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end; `taskman api --workers {options.workers}`, {options.clients} clients, "
          f"{options.seconds:g} s each")
    print(f"{'what':44} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for label, result in (("GET /api/health (baseline)", base), ("mix: 80% list of 20, 20% creates", mixed)):
        print(f"{label:44} {result['rps']:8.0f} {result['p50']:8.1f} {result['p99']:8.1f} {len(result['errors']):7d}")
    print(f"mix against the baseline: {mixed['rps'] / base['rps']:.2f}x; against issue 13's {BEFORE:.0f} req/s: "
          f"{mixed['rps'] / BEFORE:.2f}x (target >= 4x, p99 <= 50 ms)")
    print(f"creates acknowledged {len(mixed['created'])}, stored {len(stored)}; errors by kind: "
          f"{dict(Counter(mixed['errors']))}")


if __name__ == "__main__":
    main()
