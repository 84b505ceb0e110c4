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
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from core.config import WORKER_LIFE_VARIABLE, Settings
from core.embedded import (
    Address,
    RedisServer,
    address_info,
    claim_data_dir,
    claim_holder,
    clear_address,
    mark_stopping,
    private_dir,
    private_file,
    redis_answers,
    release_claim,
    resolve_redis_url,
    server_alive,
    stop_pid,
    write_address,
)
from core.errors import NoRedis

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
    os.environ.pop(WORKER_LIFE_VARIABLE, None)  # each start names itself: no supervisor of ours says it exited
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
    worker: bool = False
    """A Celery worker: each start gets an id (``WORKER_LIFE_VARIABLE``), said to have ended once it exits."""
    life: str | None = None
    """The id of the worker's current start."""
    restarts: list[float] = field(default_factory=list)
    last_exit: int | None = None
    restart_at: float | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def keeps_dying(self, now: float) -> bool:
        return len([at for at in self.restarts if now - at < FLAPPING_WINDOW]) >= FLAPPING_RESTARTS


HANDOVER_WAIT = 30.0
"""Seconds a ``taskman up`` waits for the one holding its data folder to finish starting or stopping, and for a
Redis of that folder that neither answers nor exits, before it gives up (or stops that server itself)."""


def _where(url: str) -> str:
    """``127.0.0.1:PORT/0`` of a Redis URL: what may be shown (the password stays out)."""
    return url.rsplit("@", 1)[-1]


class Stack:
    """Everything ``taskman up`` starts, kept running while it is up, stopped on exit (only what it started).

    A child that exits (a worker, the scheduler, the embedded Redis) is restarted with a growing backoff;
    each exit and restart is reported through ``on_report`` (stderr for ``up --no-console``, the status
    line in the console), and a child that keeps dying is reported as such and retried only every minute.

    With no configured Redis, one ``up`` at a time owns a data folder's stack: it holds the folder's claim
    (:func:`core.embedded.claim_data_dir`) and runs the folder's Redis (or adopts the one an earlier ``up`` left
    running), the workers and the scheduler. Another ``up`` on that folder *follows*: its console uses the
    owner's Redis while its supervisor watches the claim. Once the owner is gone (stopped, or killed outright)
    the follower takes the claim and the stack: it adopts the Redis if that still answers, else starts one on
    the same append-only file, port and password (so consoles already open reconnect), then the workers and the
    scheduler. An owner marks the address file first thing when it begins to stop, and an ``up`` starting
    meanwhile waits for it to finish instead of following a stack that is going away.
    """

    def __init__(self, settings: Settings, on_report=None) -> None:
        self.settings = settings
        self.redis: RedisServer | None = None
        self.adopted_redis_pid: int | None = None
        self.following: int | None = None
        """While this ``up`` follows another one's stack: that ``up``'s pid (0 if unknown); else None."""
        self.children: list[subprocess.Popen] = []
        self.supervised: list[Supervised] = []
        self.display_url = ""
        self.reports: list[str] = []
        self.on_report = on_report
        self._env: dict[str, str] = {}
        self._data_dir: Path | None = None  # the data folder whose embedded stack this is (None: configured Redis)
        self._claim: int | None = None  # the folder's claim (a locked descriptor), while this ``up`` owns the stack
        self._stopping = threading.Event()  # closing: no more restarts or takeovers
        self._done = threading.Event()  # the supervisor may end (once close() has stopped what it started)
        self._tick = threading.Lock()  # held by the supervisor while it acts on what it found
        self._supervisor: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stuck_since: float | None = None  # since when a Redis of the folder has neither answered nor exited
        self._last_trouble: str | None = None  # the supervisor's last failure, reported once until it changes

    def __enter__(self) -> Stack:
        try:
            if self.settings.redis_url:  # a Redis of the operator's: only the workers and the scheduler are ours
                self.display_url = _where(self.settings.redis_url)
                self._add_children(private_dir(Path(self.settings.data_dir)))  # their logs live in the data folder
            else:  # the AOF, logs and Redis password live in the data folder
                self._data_dir = private_dir(Path(self.settings.data_dir))
                self._settle(self._data_dir)
            self._supervisor = threading.Thread(target=self._supervise, name="taskman-up-supervisor", daemon=True)
            self._supervisor.start()
        except BaseException:
            self.close()
            raise
        return self

    def _settle(self, data_dir: Path) -> None:
        """Own the folder's stack (claim it, adopt or start its Redis, start the workers and the scheduler) or
        follow the ``up`` that owns it. One that is starting, or stopping, is waited for (up to HANDOVER_WAIT)."""
        deadline = time.monotonic() + HANDOVER_WAIT
        while True:
            self._claim = claim_data_dir(data_dir)
            if self._claim is not None:
                while not self._have_redis(data_dir):
                    time.sleep(0.1)  # the last server of the folder is still exiting (given up on in time)
                self._add_children(data_dir)
                return
            address = address_info(data_dir)
            late = time.monotonic() > deadline
            if address.url and (late or not address.stopping) and redis_answers(address.url):
                self._follow(data_dir, address)
                return
            if address.stopping and self._last_trouble != "stopping":
                self._last_trouble = "stopping"
                self._report(f"the `taskman up` with pid {claim_holder(data_dir) or address.owner} is stopping its "
                             "stack; this one starts it again once it has")
            if late:
                holder = claim_holder(data_dir)
                raise NoRedis(f"Another `taskman up` ({f'pid {holder}' if holder else 'a process'}) holds {data_dir} "
                              f"but no Redis of it answered within {HANDOVER_WAIT:g} s: stop that one, or try again.")
            time.sleep(0.1)

    def _follow(self, data_dir: Path, address: Address) -> None:
        """Use the owner's Redis; the supervisor takes the stack over when the owner is gone."""
        assert address.url is not None  # _settle follows only an address that answers
        self.following = claim_holder(data_dir) or address.owner or 0
        self.settings = self.settings.replace(redis_url=address.url)
        self.display_url = f"{_where(address.url)} (run by {self._owner_name()}; this one takes over if it stops)"

    def _owner_name(self) -> str:
        return f"the `taskman up` with pid {self.following}" if self.following else "the `taskman up` that ran it"

    def _take_over(self, data_dir: Path) -> bool:
        """A follower's look: True once it holds the claim (the owner is gone), the stack being its own to run."""
        claim = claim_data_dir(data_dir)
        if claim is None:
            if address_info(data_dir).stopping and self._last_trouble != "stopping":
                self._last_trouble = "stopping"
                self._report(f"{self._owner_name()} is stopping; this one takes the stack over when it has")
            return False
        self._claim = claim
        self._report(f"{self._owner_name()} has stopped; this one takes the stack over")
        self.following = None
        return True

    def _have_redis(self, data_dir: Path) -> bool:
        """An owner's look at its Redis: restart its own server if that exited, replace an adopted one that exited
        and, right after a takeover, adopt the folder's server if it answers, else start one. False while a
        server of the folder is still exiting: nothing may start on its append-only file before it is gone."""
        if self.redis is not None:
            if not self.redis.running():
                self._restart_redis(data_dir)
            return self.redis.running()
        if self.adopted_redis_pid is not None:
            if server_alive(self.adopted_redis_pid, data_dir / "redis"):
                return True
            self._report(f"the adopted Redis (pid {self.adopted_redis_pid}) exited; "
                         "starting one on its append-only file")
            self.adopted_redis_pid = None
        address = address_info(data_dir, data_dir / "redis")
        if address.url and address.pid is not None:
            if redis_answers(address.url):
                self._adopt(data_dir, address)
                return True
            now = time.monotonic()
            if self._stuck_since is None:
                self._stuck_since = now
                self._report(f"waiting for the Redis with pid {address.pid} to exit before starting one on its files")
            if now - self._stuck_since < HANDOVER_WAIT:
                return False
            self._report(f"the Redis with pid {address.pid} neither answers nor exits; stopping it")
            stop_pid(address.pid)
        self._stuck_since = None
        self._start_redis(data_dir)
        return True

    def _adopt(self, data_dir: Path, address: Address) -> None:
        """Run the stack on the folder's server that an ``up`` no longer alive left running."""
        assert address.url is not None and address.pid is not None  # _have_redis adopts a live server only
        if self.settings.redis_url and self.settings.redis_url != address.url:
            self._report(f"the stack's Redis is now at {_where(address.url)}; a console opened before on "
                         f"{_where(self.settings.redis_url)} must be opened again")
        self.adopted_redis_pid = address.pid
        self.settings = self.settings.replace(redis_url=address.url)
        write_address(data_dir, address.url, address.pid, owner=os.getpid())
        self.display_url = f"{_where(address.url)} (embedded, left running by an earlier `up`)"
        if self._supervisor is not None:
            self._report(f"adopted the Redis with pid {address.pid} that the last `up` left running")

    def _start_redis(self, data_dir: Path) -> None:
        """Start the folder's Redis: on the port and password of the server this stack used so far if there was
        one (a takeover: its clients reconnect to the new server), else on a free port with a new password."""
        port, password = None, os.urandom(16).hex()
        if self.settings.redis_url:
            known = urlsplit(self.settings.redis_url)
            port, password = known.port, unquote(known.password or "") or password
        self.redis = RedisServer(data_dir / "redis", port=port, appendonly=True, password=password).start()
        write_address(data_dir, self.redis.url, self.redis.pid, owner=os.getpid())
        self.settings = self.settings.replace(redis_url=self.redis.url)
        self.display_url = f"127.0.0.1:{self.redis.port} (embedded, data in {data_dir / 'redis'})"

    def _add_children(self, data_dir: Path) -> None:
        """Start the workers and the scheduler on the stack's Redis."""
        assert self.settings.redis_url is not None  # the adopted or started server's
        self._env = {**os.environ, "TASKMAN_REDIS_URL": self.settings.redis_url,
                     "TASKMAN_NAMESPACE": self.settings.namespace}
        logs = private_dir(data_dir / "logs")  # tracebacks of runs end up in these
        workers = [(f"worker-{name}", command) for name, command in worker_commands([], None, "INFO", self.settings)]
        for name, command in [*workers, ("beat", celery_command("beat", "-l", "INFO", "--pidfile="))]:
            child = Supervised(name, command, logs / f"{name}.log", worker=name != "beat")
            self._spawn(child)
            self.supervised.append(child)

    def _spawn(self, child: Supervised) -> None:
        log = private_file(child.log_path)
        env = self._env
        if child.worker:
            child.life = uuid.uuid4().hex
            env = {**env, WORKER_LIFE_VARIABLE: child.life}
        try:
            child.process = subprocess.Popen(child.command, env=env, stdout=log, stderr=subprocess.STDOUT,
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
        """Look every half second until the stack closes: a follower takes the stack over once its owner is gone;
        an owner keeps its Redis up and restarts the children that exit, with backoff. It is the parent of what it
        starts, which Linux kills when their parent thread ends: it ends only once close() has stopped them."""
        while not self._done.wait(0.5):
            with self._tick:
                if self._stopping.is_set():
                    continue
                try:
                    self._look()
                except Exception as exc:  # tried again on the next look; said once until it changes
                    trouble = f"the stack could not be taken over or kept up: {exc}"
                    if trouble != self._last_trouble:
                        self._last_trouble = trouble
                        self._report(trouble)

    def _look(self) -> None:
        now = time.monotonic()
        data_dir = self._data_dir
        if data_dir is not None:
            if self._claim is None and not self._take_over(data_dir):
                return
            ready = self._have_redis(data_dir)
            if not self.supervised:  # just taken over: the workers and the scheduler are this one's to start
                if not ready:
                    return
                self._add_children(data_dir)
                self._report(f"took the stack over: Redis on {self.display_url}, workers and scheduler started")
            self._last_trouble = None
        for child in self.supervised:
            if child.running or self._stopping.is_set():
                continue
            if child.restart_at is None:
                child.last_exit = child.process.returncode if child.process is not None else None
                self._bury(child)
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

    def _bury(self, child: Supervised) -> None:
        """A child exited: kill what is left of it (a worker's pool processes; their jails die with them), then
        say so in Redis. A worker's runs then go to another worker now rather than after the dead-worker grace;
        the scheduler's lock, if it held it, is freed for the next one now rather than after its TTL. In a thread
        of its own: a frozen Redis must not hold up the supervision."""
        if child.process is None:
            return
        pid = child.process.pid
        try:
            os.killpg(pid, signal.SIGKILL)  # its own process group (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass
        life, child.life = child.life, None
        settings = self.settings

        def say() -> None:
            from core.service import Service

            try:
                service = Service.from_settings(settings)
                if not child.worker:
                    service.scheduler_exited(pid)
                elif life is not None:
                    service.worker_exited(life)
            except Exception as exc:
                wait = (f"its runs go to another worker after the dead-worker grace ({settings.dead_worker_grace:g} s)"
                        if child.worker else
                        f"the next scheduler leads once its lock runs out ({settings.scheduler_lock_ttl:g} s)")
                self._report(f"{child.name}: could not record its exit ({type(exc).__name__}: {exc}); {wait}")

        threading.Thread(target=say, name=f"taskman-up-{child.name}-exited", daemon=True).start()

    def _restart_redis(self, data_dir: Path) -> None:
        """The embedded Redis died: start it again on the same port, password and append-only file."""
        self._report("the embedded Redis exited; restarting it on its append-only file")
        try:
            self._start_redis(data_dir)
        except Exception as exc:  # tried again on the next look
            self._report(f"the embedded Redis could not restart: {exc}")
            return
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
        """Stop what this ``up`` started (children, then its Redis) and give up the data folder's claim last."""
        self._stopping.set()
        if self._tick.acquire(timeout=30):  # the supervisor finishes what it is doing (a restart, a takeover)
            self._tick.release()
        if self._claim is not None:  # first: an `up` starting now waits to take over, not to join a going stack
            pid = self.redis.pid if self.redis is not None else self.adopted_redis_pid
            if pid is not None:
                mark_stopping(Path(self.settings.data_dir), pid)
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
        self._done.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
        if self._claim is not None:  # last: the next `up` may start a Redis on the folder's files now
            release_claim(self._claim)
            self._claim = None

    def __exit__(self, *exc) -> None:
        self.close()
