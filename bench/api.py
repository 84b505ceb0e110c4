"""Benchmark: the REST API under issue 13's mix, against a bare endpoint of the same server in the same run.

    python3 boot.py python bench/api.py [--clients 16] [--seconds 20] [--before] [--client raw|httpx]

Starts a private redis-server and one ``taskman api`` process on 127.0.0.1 (no workers: created tasks are
HTTP tasks delayed a day, so nothing runs), stores 200 tasks, then runs ``--clients`` concurrent clients for
``--seconds``: 80% ``GET /api/tasks?limit=20``, 20% creates (``POST /api/tasks``), each with an operator
token. The baseline, run first with the same clients against the same process, is ``GET /api/health``
(no token, a few Redis reads), so the ratio says what taskman's own work costs beyond the server's.
Prints requests per second, p50 and p99 latency, errors, the server's CPU time per request (its processes'
user + system time over the phase, divided by the requests answered: the figure least moved by what else
the machine runs), and whether every acknowledged create was stored. The server logs every request, as
``taskman api`` does by default (``--no-access-log`` to compare; README does not tell anyone to turn it
off). Asserts nothing.

The clients. ``--client raw`` (the default) runs them in a process of their own: one asyncio loop, each
client a keep-alive HTTP/1.1 connection written and read as bytes, so the load generator takes a small share
of the two cores. ``--client httpx`` is the generator this bench had first, 16 Python threads with
``httpx.Client`` in the bench's own process: on two cores those threads take about as much CPU as the server,
so they cap what any server can show. The same checks either way: any transport error or status >= 400 is an
error, every create's id is read from its answer and looked up in Redis afterwards.

The comparison. Issue 13's target is at least 4x the 124 requests/s measured before it, with p99 at most
50 ms. That 124 was measured with a thread-per-client generator like ``--client httpx`` on the server of
that time, so it is not comparable with figures from the raw client. ``--before`` measures that server too,
in the same run, with the same clients: the commit before issue 13's work began (``BEFORE_COMMIT``) is
checked out as a git worktree under the temporary directory (installed with its own dependencies, which
had no hiredis, into a virtual environment that pip builds from the registry on first use, about a minute,
and ``~/.cache/taskman-bench`` keeps), seeded with the same 200
tasks and an operator token by its own code in another namespace of the same Redis, and served by its own
``taskman api``. The ratio printed is then mix against mix, one client, one run.

How it stands (idle two-core VM, 10 s phases): the before-server answers the mix at 339 req/s, p99 87 ms;
this one at 509-521 req/s, p99 38-40 ms, 1.9 ms of server CPU per request (1.5x the before-server's rate with
1.6x less CPU). The 124 req/s the issue measured was mostly its threaded client: the before-server answered
138-231 req/s to ``--client httpx`` and 316-398 to the raw client in the same runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BEFORE = 124.0
"""Requests per second issue 13 measured with this mix before it (one process, 16 clients, 20 s)."""
BEFORE_COMMIT = "d1ad3710487382ebf3704554d8a2541d2bc1f9b4"
"""The last commit before issue 13's work: its child 7cd2cc4 is the first to name issue 13 (README's
Performance section, measured against its targets)."""
SPEC = {"api_url": "http://127.0.0.1:9/never", "delay_seconds": 86400}
"""What each create stores: an HTTP task (an operator may create those; code tasks need an admin) due in a day."""
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "taskman-bench"


# -- the raw client: one asyncio loop in a process of its own ---------------------------------------


class Answer(Exception):
    """A response the raw client could not read (closed early, malformed)."""


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 response: status, body, whether the server keeps the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise Answer(f"bad status line {lines[0]!r}")
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            chunks.append(chunk[:-2])
        body = b"".join(chunks)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, body, headers.get("connection", "").lower() != "close"


async def drive(url: str, secret: str | None, clients: int, seconds: float, mix: bool, seed: int) -> dict:
    """``clients`` keep-alive connections sending requests for ``seconds``: latencies in ms, errors, ids."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    auth = f"Authorization: Bearer {secret}\r\n" if secret else ""
    common = f"Host: {host}:{port}\r\nAccept: */*\r\nUser-Agent: bench-api\r\n{auth}"
    health = f"GET /api/health HTTP/1.1\r\n{common}\r\n".encode()
    listing = f"GET /api/tasks?limit=20 HTTP/1.1\r\n{common}\r\n".encode()
    latencies: list[float] = []
    errors: list[str] = []
    created: list[str] = []
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + seconds

    def create_request(number: int) -> bytes:
        body = json.dumps({"name": f"bench-{number}-{time.time_ns()}", **SPEC}).encode()
        return (f"POST /api/tasks HTTP/1.1\r\n{common}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    async def client(number: int) -> None:
        pick = random.Random(seed * 1000 + number)
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while loop.time() < stop_at:
            posting = mix and pick.random() >= 0.8
            request = create_request(number) if posting else (listing if mix else health)
            begin = time.perf_counter()
            try:
                if connection is None:
                    connection = await asyncio.open_connection(host, port)
                reader, writer = connection
                writer.write(request)
                status, body, keep = await read_answer(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, Answer, ValueError) as exc:
                errors.append(type(exc).__name__)
                if connection is not None:
                    connection[1].close()
                connection = None
                continue
            latencies.append((time.perf_counter() - begin) * 1000)
            if status >= 400:
                errors.append(f"{status} {body[:100].decode(errors='replace')}")
            elif posting:
                created.append(json.loads(body)["id"])
            elif not body.startswith(b"[" if mix else b"{"):
                errors.append(f"{status} not the JSON expected: {body[:100].decode(errors='replace')}")
            if not keep:
                connection[1].close()
                connection = None
        if connection is not None:
            connection[1].close()

    begin = time.perf_counter()
    await asyncio.gather(*(client(number) for number in range(clients)))
    return summary(latencies, errors, created, time.perf_counter() - begin)


def summary(latencies: list[float], errors: list[str], created: list[str], elapsed: float) -> dict:
    ordered = sorted(latencies)
    return {"rps": len(latencies) / elapsed, "p50": statistics.median(ordered) if ordered else float("nan"),
            "p99": ordered[max(0, int(len(ordered) * 0.99) - 1)] if ordered else float("nan"), "errors": errors,
            "created": created, "requests": len(latencies), "elapsed": elapsed}


def load_raw(url: str, secret: str | None, clients: int, seconds: float, mix: bool, seed: int) -> dict:
    """:func:`drive` in a child process (this script with ``--drive``), so the clients have their own GIL."""
    order = json.dumps({"url": url, "secret": secret, "clients": clients, "seconds": seconds, "mix": mix,
                        "seed": seed})
    done = subprocess.run([sys.executable, __file__, "--drive", order], capture_output=True, text=True,
                          check=False, timeout=seconds + 120)
    if done.returncode != 0:
        raise SystemExit(f"the load generator failed:\n{done.stderr}")
    return json.loads(done.stdout)


# -- the first client: threads with httpx in this process ------------------------------------------


def load_httpx(url: str, secret: str | None, clients: int, seconds: float, mix: bool, seed: int) -> dict:
    """``clients`` threads sending requests for ``seconds``; latencies in ms, errors, ids of stored creates."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    created: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}

    def client(number: int) -> None:
        pick = random.Random(seed * 1000 + number)
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            while time.monotonic() < stop_at:
                begin = time.perf_counter()
                try:
                    if not mix:
                        answer = http.get("/api/health")
                    elif pick.random() < 0.8:
                        answer = http.get("/api/tasks", params={"limit": 20})
                    else:
                        answer = http.post("/api/tasks", json={"name": f"bench-{number}-{time.time_ns()}", **SPEC})
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

    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    begin = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summary(latencies, errors, created, time.perf_counter() - begin)


# -- servers ------------------------------------------------------------------------------------------


def cpu_seconds(group: int) -> float:
    """User + system CPU time of every live process in process group ``group`` (the server and its workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # pgrp; then utime, stime at 12 and 13 (after the comm field)
            total += int(fields[11]) + int(fields[12])
    return total / tick


def measure(name: str, server, secret: str, options, load) -> tuple[dict, dict]:
    """The health baseline, then the mix, against one server; each with the server's CPU per request."""
    load(server.url, secret, options.clients, 2.0, True, 99)  # warm-up, not counted
    results = []
    for mix, key in ((False, None), (True, secret)):
        cpu = cpu_seconds(server.process.pid)
        result = load(server.url, key, options.clients, options.seconds, mix, 1)
        used = cpu_seconds(server.process.pid) - cpu
        result["cpu_ms"] = used * 1000 / max(1, result["requests"])
        result["cpu_share"] = used / result["elapsed"]
        results.append(result)
    print(f"  {name}: done", file=sys.stderr)
    return results[0], results[1]


def before_server(folder: Path, redis_url: str, log_path: Path, access: list[str]):
    """The server of ``BEFORE_COMMIT``, seeded by its own code in namespace ``benchbefore``: (server, an operator
    token's secret, a function counting how many of some task ids its code finds stored)."""
    from tests.e2e import apiserver

    tree = folder / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(tree), BEFORE_COMMIT],
                   check=True, capture_output=True)
    venv = CACHE / f"venv-{BEFORE_COMMIT[:12]}"
    if not (venv / "bin" / "taskman").exists():
        print(f"  building the before-server's environment in {venv} (once) …", file=sys.stderr)
        venv.parent.mkdir(parents=True, exist_ok=True)
        for step in ([sys.executable, "-m", "venv", str(venv)],
                     [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(tree)]):
            built = subprocess.run(step, capture_output=True, text=True, check=False)
            if built.returncode != 0:
                raise SystemExit(f"building the before-server's environment failed:\n{built.stdout}{built.stderr}")
    env = {**os.environ, "TASKMAN_REDIS_URL": redis_url, "TASKMAN_NAMESPACE": "benchbefore",
           "TASKMAN_API_RATE_PER_MINUTE": "10000000", "TASKMAN_HTTP_ALLOW": "127.0.0.1", "PYTHONPATH": str(tree)}
    seed = ("import json\nfrom core import auth\nfrom core.config import Settings\nfrom core.service import Service\n"
            "service = Service.from_settings(Settings())\n"
            f"service.create_many([{{'name': f'stored-{{i:03d}}', **{SPEC!r}}} for i in range(200)])\n"
            "print(auth.create(service.store, 'bench', 'operator', actor='bench')[0])\n")
    done = subprocess.run([str(venv / "bin" / "python"), "-c", seed], cwd=tree, env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"seeding the before-server failed:\n{done.stderr}")
    command = apiserver.taskman_command
    apiserver.taskman_command = lambda: [str(venv / "bin" / "taskman")]  # its own install, not this tree's
    try:
        server = apiserver.ApiServer(env, log_path, *access).start()
    finally:
        apiserver.taskman_command = command

    def stored(ids: list[str]) -> int:
        """How many of ``ids`` that server's own code finds stored."""
        count = ("import json, sys\nfrom core.config import Settings\nfrom core.service import Service\n"
                 "ids = json.load(sys.stdin)\n"
                 "print(len(Service.from_settings(Settings()).tasks(ids)))\n")
        found = subprocess.run([str(venv / "bin" / "python"), "-c", count], cwd=tree, env=env, input=json.dumps(ids),
                               capture_output=True, text=True, check=True)
        return int(found.stdout.strip().splitlines()[-1])

    return server, done.stdout.strip().splitlines()[-1], stored


def remove_worktree(folder: Path) -> None:
    tree = folder / "before"
    if tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False,
                       capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1, help="serving processes (`taskman api --workers`)")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="raw: asyncio keep-alive connections in a process of their own; httpx: threads here")
    parser.add_argument("--before", action="store_true",
                        help=f"also measure the server before issue 13 ({BEFORE_COMMIT[:7]}) in the same run")
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                        help="the server logs every request, as `taskman api` does unless told not to (default: on)")
    parser.add_argument("--server-path", default="",
                        help="folders put before the server's PYTHONPATH (to try e.g. httptools or uvloop, which "
                             "uvicorn uses when it can import them, without installing them)")
    parser.add_argument("--drive", help=argparse.SUPPRESS)  # the raw client's child process
    options = parser.parse_args()
    if options.drive:
        order = json.loads(options.drive)
        print(json.dumps(asyncio.run(drive(**order))))
        return

    from core import auth
    from core.config import Settings
    from core.embedded import RedisServer
    from core.service import Service
    from tests.e2e.apiserver import ApiServer

    load = load_raw if options.client == "raw" else load_httpx
    load_start = os.getloadavg()
    namespace = "benchapi"
    rows: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="taskman-api-") as temp, \
            RedisServer(Path(temp), appendonly=False) as redis_server:
        folder = Path(temp)
        redis_server.start()
        settings = Settings(redis_url=redis_server.url, namespace=namespace, api_rate_per_minute=10_000_000,
                            http_allow=["127.0.0.1"])
        service = Service.from_settings(settings)
        service.create_many([{"name": f"stored-{i:03d}", **SPEC} for i in range(200)])
        secret, _ = auth.create(service.store, "bench", "operator", actor="bench")
        env = {**os.environ, "TASKMAN_REDIS_URL": redis_server.url, "TASKMAN_NAMESPACE": namespace,
               "TASKMAN_API_RATE_PER_MINUTE": "10000000", "TASKMAN_HTTP_ALLOW": "127.0.0.1",
               "PYTHONPATH": os.pathsep.join(filter(None, [options.server_path, str(ROOT)]))}
        try:
            if options.before:
                old, old_secret, old_stored = before_server(folder, redis_server.url, folder / "before.log",
                                                                 ["--access-log"] if options.access_log else [])
                try:
                    old_base, old_mix = measure("before", old, old_secret, options, load)
                finally:
                    old.stop()
                old_found = old_stored(old_mix["created"])
                rows += [(f"before ({BEFORE_COMMIT[:7]}): GET /api/health", old_base),
                         (f"before ({BEFORE_COMMIT[:7]}): mix", old_mix)]
            logging = "--access-log" if options.access_log else "--no-access-log"
            api = ApiServer(env, folder / "api.log", "--workers", str(options.workers), logging).start()
            try:
                base, mixed = measure("now", api, secret, options, load)
            finally:
                api.stop()
            stored = {task.id for task in service.tasks(mixed["created"])}
        finally:
            remove_worktree(folder)
    rows += [("GET /api/health (baseline)", base), ("mix: 80% list of 20, 20% creates", mixed)]
    print(f"bench/api.py: {os.cpu_count()} cores, load average {load_start[0]:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end; `taskman api --workers {options.workers} "
          f"--{'' if options.access_log else 'no-'}access-log`, {options.clients} "
          f"{options.client} clients, {options.seconds:g} s each")
    print(f"{'what':44} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'server CPU ms/req':>18} "
          f"{'(cores)':>7}")
    for label, result in rows:
        print(f"{label:44} {result['rps']:7.0f} {result['p50']:7.1f} {result['p99']:7.1f} {len(result['errors']):6d} "
              f"{result['cpu_ms']:18.2f} {result['cpu_share']:7.2f}")
    print(f"mix against the baseline: {mixed['rps'] / base['rps']:.2f}x")
    if options.before:
        print(f"mix against the server before issue 13, same clients, same run: {mixed['rps'] / old_mix['rps']:.2f}x "
              f"(server CPU per request {old_mix['cpu_ms'] / mixed['cpu_ms']:.2f}x less); "
              f"its creates acknowledged {len(old_mix['created'])}, stored {old_found}; errors by kind: "
              f"{dict(Counter(old_mix['errors']))}")
    note = "" if options.client == "httpx" else " (measured with threaded httpx clients: compare with --before instead)"
    print(f"mix against issue 13's {BEFORE:.0f} req/s{note}: {mixed['rps'] / BEFORE:.2f}x (target >= 4x, p99 <= 50 ms)")
    print(f"creates acknowledged {len(mixed['created'])}, stored {len(stored)}; errors by kind: "
          f"{dict(Counter(mixed['errors']))}")


if __name__ == "__main__":
    main()
