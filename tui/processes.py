"""Starting and stopping taskman's processes: workers, the scheduler, and the whole stack for ``up``.

``taskman worker`` with no options runs three Celery workers as children — a prefork pool for
``code`` and one for ``registered`` (CPU-bound, killable; each takes its own number of messages
ahead) and a threads pool for ``http`` (many requests at once) — and forwards signals to them.
``Stack`` is what ``taskman up`` runs: a private Redis when none is configured, the workers and the
scheduler, all stopped on exit, by their PIDs.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.config import Settings
from core.embedded import (
    RedisServer,
    address_pids,
    clear_address,
    private_dir,
    private_file,
    read_address,
    resolve_redis_url,
    stop_pid,
    write_address,
)

DEFAULT_CONCURRENCY = {"prefork": 2, "threads": 20}


def celery_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker", *args]


def worker_commands(queues: tuple[str, ...] | list[str], concurrency: int | None, loglevel: str,
                    settings: Settings, prefetch: int | None = None) -> list[tuple[str, list[str]]]:
    """(name, ``celery worker`` command line) of each worker serving ``queues`` (all three when empty).

    ``http`` gets a threads pool, since its runs wait on the network rather than the CPU; every other queue a
    prefork pool (killable, memory-limited processes). Queues that take as many messages ahead (``prefetch``,
    else their ``prefetch_*`` setting: ``code`` its own, any other ``prefetch_registered``) share a worker, so
    by default ``code`` (1: a code run may be long) and ``registered`` (4: short tasks) get one each.
    """
    queues = list(dict.fromkeys(queues)) or ["code", "registered", "http"]
    groups: dict[tuple[str, int], list[str]] = {}
    for queue in queues:
        pool = "threads" if queue == "http" else "prefork"
        ahead = prefetch or {"code": settings.prefetch_code, "http": settings.prefetch_http}.get(
            queue, settings.prefetch_registered)
        groups.setdefault((pool, ahead), []).append(queue)
    return [
        (names[0], celery_command("worker", "-Q", ",".join(names), "-P", pool, "-n", f"{names[0]}@%h",
                                  "-c", str(concurrency or DEFAULT_CONCURRENCY[pool]), "--prefetch-multiplier",
                                  str(ahead), "-l", loglevel, "--without-mingle", "--without-gossip"))
        for (pool, ahead), names in groups.items()
    ]


def _supervise(commands: list[list[str]], env: dict | None = None) -> int:
    children = [subprocess.Popen(command, env=env) for command in commands]

    def forward(signum, _frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    while True:
        codes = [code for code in (child.poll() for child in children) if code is not None]
        if len(codes) == len(children):
            return max(codes)
        if codes:
            forward(signal.SIGTERM, None)
        time.sleep(0.2)


def run_workers(queues: tuple[str, ...], concurrency: int | None, loglevel: str, prefetch: int | None = None) -> int:
    """Run the worker(s) in the foreground until they exit or are signalled."""
    settings = Settings()
    resolve_redis_url(settings)
    commands = [command for _, command in worker_commands(queues, concurrency, loglevel, settings, prefetch)]
    if len(commands) == 1:
        os.execv(commands[0][0], commands[0])
    return _supervise(commands)


def run_beat(loglevel: str) -> int:
    """Run the scheduler in the foreground."""
    resolve_redis_url(Settings())
    command = celery_command("beat", "-l", loglevel, "--pidfile=")
    os.execv(command[0], command)
    return 1


def _die_with_parent(parent: int) -> None:
    """In a child before exec: ask Linux to kill it if ``taskman up`` dies (even by SIGKILL).

    SIGKILL, not SIGTERM: a Celery worker told to stop while still starting can hang in its warm
    shutdown, reconnecting forever; its unacknowledged runs are redelivered either way.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)


RESTART_BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 60.0)
"""Seconds before the 1st, 2nd, ... restart of a child that keeps exiting (the last one repeats)."""
FLAPPING_WINDOW = 120.0
FLAPPING_RESTARTS = 5
"""A child restarted this many times within the window is reported as one that keeps dying."""


@dataclass
class Supervised:
    """One child of ``taskman up``: how to start it, and what became of it."""

    name: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)
    last_exit: int | None = None
    restart_at: float | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def keeps_dying(self, now: float) -> bool:
        return len([at for at in self.restarts if now - at < FLAPPING_WINDOW]) >= FLAPPING_RESTARTS


class Stack:
    """Everything ``taskman up`` starts, kept running while it is up, stopped on exit (only what it started).

    A child that exits (a worker, the scheduler, the embedded Redis) is restarted with a growing backoff;
    each exit and restart is reported through ``on_report`` (stderr for ``up --no-console``, the status
    line in the console), and a child that keeps dying is reported as such and retried only every minute.
    """

    def __init__(self, settings: Settings, on_report=None) -> None:
        self.settings = settings
        self.redis: RedisServer | None = None
        self.adopted_redis_pid: int | None = None
        self.children: list[subprocess.Popen] = []
        self.supervised: list[Supervised] = []
        self.display_url = ""
        self.reports: list[str] = []
        self.on_report = on_report
        self._env: dict[str, str] = {}
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Stack:
        if self.settings.redis_url:
            self.display_url = self.settings.redis_url
            return self
        data_dir = private_dir(Path(self.settings.data_dir))  # the AOF, logs and Redis password live here
        try:
            existing = read_address(data_dir)
            if existing:
                redis_pid, owner = address_pids(data_dir)
                self.settings = self.settings.replace(redis_url=existing)
                if owner is not None:
                    self.display_url = f"{existing.rsplit('@', 1)[-1]} (run by the `taskman up` with pid {owner})"
                    return self
                assert redis_pid is not None  # read_address found the file naming a live pid
                self.adopted_redis_pid = redis_pid
                write_address(data_dir, existing, redis_pid, owner=os.getpid())
                self.display_url = f"{existing.rsplit('@', 1)[-1]} (embedded, left running by an earlier `up`)"
            else:
                self._start_redis(data_dir)
            self._start_children(data_dir)
        except BaseException:
            self.close()
            raise
        return self

    def _start_redis(self, data_dir: Path) -> None:
        password = os.urandom(16).hex()
        self.redis = RedisServer(data_dir / "redis", appendonly=True, password=password).start()
        write_address(data_dir, self.redis.url, self.redis.pid, owner=os.getpid())
        self.settings = self.settings.replace(redis_url=self.redis.url)
        self.display_url = f"127.0.0.1:{self.redis.port} (embedded, data in {data_dir / 'redis'})"

    def _start_children(self, data_dir: Path) -> None:
        assert self.settings.redis_url is not None  # the adopted or started server's, set by start()
        self._env = {**os.environ, "TASKMAN_REDIS_URL": self.settings.redis_url,
                     "TASKMAN_NAMESPACE": self.settings.namespace}
        logs = private_dir(data_dir / "logs")  # tracebacks of runs end up in these
        workers = [(f"worker-{name}", command) for name, command in worker_commands([], None, "INFO", self.settings)]
        for name, command in [*workers, ("beat", celery_command("beat", "-l", "INFO", "--pidfile="))]:
            child = Supervised(name, command, logs / f"{name}.log")
            self._spawn(child)
            self.supervised.append(child)
        self._supervisor = threading.Thread(target=self._supervise, name="taskman-up-supervisor", daemon=True)
        self._supervisor.start()

    def _spawn(self, child: Supervised) -> None:
        log = private_file(child.log_path)
        try:
            child.process = subprocess.Popen(child.command, env=self._env, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True,
                                             preexec_fn=functools.partial(_die_with_parent, os.getpid()))
        finally:
            log.close()
        self.children.append(child.process)

    def _report(self, line: str) -> None:
        with self._lock:
            self.reports.append(f"{time.strftime('%H:%M:%S')} {line}")
            del self.reports[:-50]
        if self.on_report is not None:
            self.on_report(line)

    def _supervise(self) -> None:
        """Restart what exits, with backoff; runs until the stack closes (and is the parent of restarts)."""
        while not self._stopping.wait(0.5):
            now = time.monotonic()
            if self.redis is not None and not self.redis.running():
                self._restart_redis()
            for child in self.supervised:
                if child.running or self._stopping.is_set():
                    continue
                if child.restart_at is None:
                    child.last_exit = child.process.returncode if child.process is not None else None
                    delay = RESTART_BACKOFF[min(len([at for at in child.restarts if now - at < FLAPPING_WINDOW]),
                                                len(RESTART_BACKOFF) - 1)]
                    child.restart_at = now + delay
                    if child.keeps_dying(now):
                        self._report(f"{child.name} keeps dying ({len(child.restarts)} restarts, last exit "
                                     f"{child.last_exit}); next try in {delay:g} s - see {child.log_path}")
                    else:
                        self._report(f"{child.name} exited ({child.last_exit}); restarting in {delay:g} s")
                elif now >= child.restart_at:
                    child.restart_at = None
                    child.restarts.append(now)
                    self._spawn(child)
                    self._report(f"{child.name} restarted (restart {len(child.restarts)})")

    def _restart_redis(self) -> None:
        """The embedded Redis died: start it again on the same port, password and append-only file."""
        old = self.redis
        assert old is not None  # called when the embedded server (self.redis) has exited
        self._report("the embedded Redis exited; restarting it on its append-only file")
        try:
            self.redis = RedisServer(old.directory, port=old.port, appendonly=True, password=old.password).start()
        except Exception as exc:  # tried again on the next look
            self._report(f"the embedded Redis could not restart: {exc}")
            return
        write_address(Path(self.settings.data_dir), self.redis.url, self.redis.pid, owner=os.getpid())
        self._report("the embedded Redis is back")

    def status(self) -> dict[str, dict]:
        """Each supervised child: running, restarts so far, last exit code, whether it keeps dying."""
        now = time.monotonic()
        return {child.name: {"running": child.running, "restarts": len(child.restarts), "last_exit": child.last_exit,
                             "keeps_dying": child.keeps_dying(now)} for child in self.supervised}

    def wait(self) -> None:
        """Block until SIGINT, SIGTERM or SIGHUP; children that exit meanwhile are restarted."""
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda *_: stop.set())
        while not stop.is_set():
            stop.wait(0.5)

    def close(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.time() + 15
        for child in self.children:
            try:
                child.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.children = []
        if self.redis is not None:
            pid = self.redis.pid
            self.redis.stop()
            clear_address(Path(self.settings.data_dir), pid)
            self.redis = None
        if self.adopted_redis_pid is not None:
            stop_pid(self.adopted_redis_pid)
            clear_address(Path(self.settings.data_dir), self.adopted_redis_pid)
            self.adopted_redis_pid = None

    def __exit__(self, *exc) -> None:
        self.close()
