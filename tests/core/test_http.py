"""core.http against a real HTTP server on 127.0.0.1 (never anything else)."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from core.errors import InvalidSpec
from core.http import (
    METHODS,
    SECRET_HEADER_PATTERN,
    BlockedAddress,
    Guard,
    HttpTaskError,
    check_url,
    execute,
    make_client,
    mask_headers,
)

BIG = b"x" * (1024 * 1024)
BOMB = gzip.compress(b"\0" * (8 * 1024 * 1024))  # ~8 KB on the wire, 8 MB inflated
DOUBLE_BOMB = gzip.compress(gzip.compress(b"\0" * (64 * 1024 * 1024)))  # a few hundred bytes, 64 MB twice inflated
PLAIN_BIG = gzip.compress(b"".join(b"%08x," % (i * 2654435761 % 2**32) for i in range(200_000)))  # ~1.8 MB, ratio < 10


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json", extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.server.seen.append(
            {"method": self.command, "path": parts.path, "headers": dict(self.headers.items()), "body": raw}
        )
        path = parts.path
        echo = {"method": self.command, "args": query, "headers": dict(self.headers.items())}
        if path == "/get":
            self._send(200, json.dumps(echo).encode())
        elif path == "/post":
            try:
                echo["json"] = json.loads(raw) if raw else None
            except ValueError:
                echo["json"] = None
            echo["data"] = raw.decode("utf-8", "replace")
            self._send(200, json.dumps(echo).encode())
        elif path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            self._send(code, json.dumps({"status": code}).encode())
        elif path == "/redirect-to":
            status = int(query.get("status", 302))
            self._send(status, b"", "text/plain", {"Location": query["url"]})
        elif path.startswith("/redirect/"):
            n = int(path.rsplit("/", 1)[1])
            self._send(302, b"", "text/plain", {"Location": f"/redirect/{n - 1}" if n > 1 else "/get"})
        elif path == "/big":
            self._send(200, BIG, "text/plain; charset=utf-8")
        elif path == "/bigjson":
            self._send(200, json.dumps({"a": "y" * 100_000}).encode())
        elif path == "/bomb":
            self._send(200, BOMB, "text/plain", {"Content-Encoding": "gzip"})
        elif path == "/gzip":
            self._send(200, gzip.compress(b'{"zipped": true}'), "application/json", {"Content-Encoding": "gzip"})
        elif path == "/deflate":
            packer = zlib.compressobj(wbits=-15 if query.get("raw") else 15)
            body = packer.compress(b'{"deflated": true}') + packer.flush()
            self._send(200, body, "application/json", {"Content-Encoding": "deflate"})
        elif path == "/secret-headers":
            self._send(200, b"{}", extra={"Set-Cookie": "sid=abc123", "X-Api-Token": "t0ken", "X-Plain": "ok"})
        elif path == "/slow":
            time.sleep(float(query.get("s", 2)))
            self._send(200, b"{}")
        elif path == "/text":
            self._send(200, "héllo wörld".encode("latin-1"), "text/plain; charset=latin-1")
        elif path == "/gzip-gzip":
            self._send(200, DOUBLE_BOMB, "text/plain", {"Content-Encoding": "gzip, gzip"})
        elif path == "/gzip-twice":  # the same chain, as two header lines
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(DOUBLE_BOMB)))
            self.end_headers()
            self.wfile.write(DOUBLE_BOMB)
        elif path == "/brotli":
            self._send(200, b"\x0b\x02\x80hello\x03", "text/plain", {"Content-Encoding": "br"})
        elif path == "/gzip-big":
            self._send(200, PLAIN_BIG, "text/plain", {"Content-Encoding": "gzip"})
        elif path in ("/trickle-headers", "/trickle-body"):
            self.server.trickling += 1
            try:
                head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n"
                self.wfile.write(head + (b"\r\n" if path == "/trickle-body" else b"X-Slow: "))
                for _ in range(60):  # one byte a second, until the client hangs up (or a minute passes)
                    self.wfile.write(b"a")
                    self.wfile.flush()
                    time.sleep(1)
            except OSError:
                pass
            finally:
                self.server.trickling -= 1
        else:
            self._send(404, b'{"error": "not found"}')

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[dict] = []
        self.connections = 0
        self.trickling = 0

    def process_request(self, request, client_address) -> None:
        self.connections += 1
        super().process_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        pass  # the client hanging up early (body cap, timeout) is expected here

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str = "/get") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _start() -> Server:
    server = Server()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def servers():
    first, second = _start(), _start()
    yield first, second
    for s in (first, second):
        s.shutdown()
        s.server_close()


@pytest.fixture
def server(servers) -> Server:
    s = servers[0]
    s.seen.clear()
    s.connections = 0
    return s


@pytest.fixture
def other(servers) -> Server:
    s = servers[1]
    s.seen.clear()
    s.connections = 0
    return s


@pytest.fixture
def connects(monkeypatch) -> list:
    """Every TCP connect attempt the client makes (core.http connects non-blocking, with connect_ex)."""
    calls: list = []
    real = socket.socket.connect_ex

    def record(sock, address):
        calls.append(address)
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "connect_ex", record)
    return calls


@pytest.fixture
def client():
    with make_client(allow=["127.0.0.1"], max_redirects=5) as c:
        yield c


@pytest.fixture
def strict():
    with make_client() as c:
        yield c


# --------------------------------------------------------------------------------------------
# Happy paths


def test_get_json_allowed_by_allow_list(client, server):
    result = execute(client, method="GET", url=server.url("/get"), params={"q": "1"})
    assert result["status_code"] == 200
    assert result["body"]["args"] == {"q": "1"}
    assert result["url"] == server.url("/get?q=1")
    assert result["body_truncated"] is False
    assert isinstance(result["elapsed_ms"], float)
    assert result["headers"]["content-type"] == "application/json"
    assert server.seen[0]["headers"]["Host"] == f"127.0.0.1:{server.port}"


def test_params_merge_with_the_query_already_in_the_url(client, server):
    result = execute(client, method="GET", url=server.url("/get?k=1"), params={"q": "2"})
    assert result["body"]["args"] == {"k": "1", "q": "2"}
    assert execute(client, method="GET", url=server.url("/get?k=1"))["body"]["args"] == {"k": "1"}


def test_data_dict_is_sent_as_json(client, server):
    result = execute(client, method="post", url=server.url("/post"), data={"a": [1, 2]})
    assert result["body"]["json"] == {"a": [1, 2]}
    assert result["body"]["headers"]["Content-Type"] == "application/json"


def test_json_argument_and_raw_string_body(client, server):
    assert execute(client, method="PUT", url=server.url("/post"), json=[1])["body"]["json"] == [1]
    result = execute(
        client, method="PATCH", url=server.url("/post"), data="plain text", headers={"Content-Type": "text/plain"}
    )
    assert result["body"]["data"] == "plain text"
    assert result["body"]["method"] == "PATCH"
    with pytest.raises(HttpTaskError, match="not both"):
        execute(client, method="POST", url=server.url("/post"), json={}, data={})


def test_head_has_empty_body_and_unknown_method_refused(client, server):
    result = execute(client, method="HEAD", url=server.url("/get"))
    assert result["status_code"] == 200 and result["body"] == ""
    with pytest.raises(HttpTaskError, match="not one of") as info:
        execute(client, method="TRACE", url=server.url("/get"))
    assert info.value.retryable is False
    assert "OPTIONS" in METHODS


def test_gzip_json_decoded_and_text_charset(client, server):
    assert execute(client, method="GET", url=server.url("/gzip"))["body"] == {"zipped": True}
    assert execute(client, method="GET", url=server.url("/text"))["body"] == "héllo wörld"


def test_deflate_zlib_and_raw(client, server):
    assert execute(client, method="GET", url=server.url("/deflate"))["body"] == {"deflated": True}
    assert execute(client, method="GET", url=server.url("/deflate?raw=1"))["body"] == {"deflated": True}


def test_response_headers_are_masked(client, server):
    headers = execute(client, method="GET", url=server.url("/secret-headers"))["headers"]
    assert headers["set-cookie"] == "***"
    assert headers["x-api-token"] == "***"
    assert headers["x-plain"] == "ok"


def test_client_keeps_no_cookies(client, server):
    execute(client, method="GET", url=server.url("/secret-headers"))
    execute(client, method="GET", url=server.url("/get"))
    assert "Cookie" not in server.seen[-1]["headers"]


# --------------------------------------------------------------------------------------------
# The guard, end to end


def test_loopback_blocked_without_allow_list(strict, server, connects):
    with pytest.raises(HttpTaskError, match="loopback") as info:
        execute(strict, method="GET", url=server.url("/get"))
    assert info.value.retryable is False
    assert info.value.response is None
    assert "127.0.0.1" in info.value.message
    assert connects == [] and server.seen == [] and server.connections == 0


@pytest.mark.parametrize(
    "host, reason",
    [
        ("127.0.0.1", "loopback"),
        ("localhost", "loopback"),
        ("127.1", "loopback"),
        ("2130706433", "loopback"),
        ("0x7f000001", "loopback"),
        ("0177.0.0.1", "Invalid IPv4"),  # httpx refuses the URL itself; Guard unit test resolves it
        ("[::1]", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("[::ffff:7f00:1]", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("0", "unspecified"),
    ],
)
def test_every_spelling_of_loopback_refused_without_connecting(strict, server, connects, host, reason):
    with pytest.raises(HttpTaskError, match=reason) as info:
        execute(strict, method="GET", url=f"http://{host}:{server.port}/get")
    assert info.value.retryable is False
    time.sleep(0.02)
    assert connects == [] and server.seen == [] and server.connections == 0


def test_redirect_to_blocked_address_refused_before_connecting(client, server, connects):
    for target in (f"http://[::1]:{server.port}/get", "http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/"):
        server.seen.clear()
        connects.clear()
        with pytest.raises(HttpTaskError, match="private|loopback|metadata") as info:
            execute(client, method="GET", url=server.url(f"/redirect-to?url={target}"))
        assert info.value.retryable is False
        assert [c[0] for c in connects] == ["127.0.0.1"]  # only the first, allowed hop
        assert len(server.seen) == 1


def test_redirect_to_bad_scheme_or_credentials_refused(client, server):
    for target in ("file:///etc/passwd", f"http://user:pw@127.0.0.1:{server.port}/get"):
        with pytest.raises(HttpTaskError, match="refused redirect"):
            execute(client, method="GET", url=server.url(f"/redirect-to?url={target}"))


def test_connects_to_the_checked_address_not_a_second_lookup(client, server, connects, monkeypatch):
    """A name that resolves to 127.0.0.1 once and to 10.0.0.1 afterwards (DNS rebinding)."""
    real = socket.getaddrinfo
    lookups = []

    def fake(host, port, *args, **kwargs):
        if host == "rebind.test":
            lookups.append(host)
            target = "127.0.0.1" if len(lookups) == 1 else "10.0.0.1"
            return real(target, port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    result = execute(client, method="GET", url=f"http://rebind.test:{server.port}/get")
    assert result["status_code"] == 200
    assert lookups == ["rebind.test"]
    assert connects == [("127.0.0.1", server.port)]
    assert server.seen[0]["headers"]["Host"] == f"rebind.test:{server.port}"


def test_allowed_hostname(server, monkeypatch):
    real = socket.getaddrinfo
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, port, *a, **k: real("127.0.0.1" if host == "api.internal" else host, port, *a, **k),
    )
    with make_client(allow=["API.Internal"]) as c:
        assert execute(c, method="GET", url=f"http://api.internal:{server.port}/get")["status_code"] == 200
    with make_client(allow=["other.internal"]) as c, pytest.raises(HttpTaskError, match="loopback"):
        execute(c, method="GET", url=f"http://api.internal:{server.port}/get")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_keeps_hostname_for_sni_and_certificate_check(client, tmp_path, monkeypatch, connects):
    """Connects to the checked address, but TLS still speaks to (and verifies) the hostname."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", "/CN=tls.test", "-keyout", str(key), "-out", str(cert), "-days", "1"],
        check=True, capture_output=True,
    )
    names: list = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_one() -> None:
        conn, _ = listener.accept()
        try:
            with context.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass  # the client refuses our self-signed certificate

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    real = socket.getaddrinfo
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda host, p, *a, **k: real("127.0.0.1" if host == "tls.test" else host, p, *a, **k)
    )
    try:
        with pytest.raises(HttpTaskError, match="certificate") as info:
            execute(client, method="GET", url=f"https://tls.test:{port}/", timeout=5)
    finally:
        thread.join(5)
        listener.close()
    assert info.value.retryable is False
    assert names == ["tls.test"]
    assert connects == [("127.0.0.1", port)]


# --------------------------------------------------------------------------------------------
# Redirects


def test_redirects_followed_and_capped(server):
    with make_client(allow=["127.0.0.1"], max_redirects=3) as c:
        result = execute(c, method="GET", url=server.url("/redirect/3"))
        assert result["status_code"] == 200 and result["url"] == server.url("/get")
        server.seen.clear()
        with pytest.raises(HttpTaskError, match="too many redirects") as info:
            execute(c, method="GET", url=server.url("/redirect/4"))
        assert info.value.retryable is False
        assert len(server.seen) == 4  # the first request and three redirects, then it stops


def test_redirect_method_rules(client, server):
    result = execute(client, method="POST", url=server.url("/redirect-to?url=/post&status=303"), data={"a": 1})
    assert result["body"]["method"] == "GET" and result["body"]["json"] is None
    result = execute(client, method="POST", url=server.url("/redirect-to?url=/post&status=307"), data={"a": 1})
    assert result["body"]["method"] == "POST" and result["body"]["json"] == {"a": 1}


def test_cross_origin_redirect_drops_secret_headers(client, server, other):
    headers = {"Authorization": "Bearer s3cret", "X-Api-Key": "k", "X-Plain": "kept"}
    execute(client, method="GET", url=server.url(f"/redirect-to?url={other.url('/get')}"), headers=headers)
    assert server.seen[0]["headers"]["Authorization"] == "Bearer s3cret"
    got = other.seen[0]["headers"]
    assert "Authorization" not in got and "X-Api-Key" not in got and got["X-Plain"] == "kept"
    server.seen.clear()
    execute(client, method="GET", url=server.url("/redirect-to?url=/get"), headers=headers)
    assert server.seen[1]["headers"]["Authorization"] == "Bearer s3cret"  # same origin keeps it


# --------------------------------------------------------------------------------------------
# Failures and limits


@pytest.mark.parametrize("code, retryable", [(400, False), (404, False), (429, True), (500, True), (503, True)])
def test_non_2xx_raises_with_response(client, server, code, retryable):
    with pytest.raises(HttpTaskError) as info:
        execute(client, method="GET", url=server.url(f"/status/{code}"))
    err = info.value
    assert err.retryable is retryable
    assert err.response["status_code"] == code
    assert err.response["body"] == {"status": code}
    assert str(code) in err.message
    clone = pickle.loads(pickle.dumps(err))  # Celery ships exceptions between processes
    assert (clone.message, clone.response, clone.retryable) == (err.message, err.response, err.retryable)


def test_body_cap_truncates(client, server):
    result = execute(client, method="GET", url=server.url("/big"), body_cap=1000)
    assert result["body_truncated"] is True
    assert result["body"].startswith("x" * 1000) and "truncated" in result["body"]
    assert result["body"].count("x") == 1000
    result = execute(client, method="GET", url=server.url("/bigjson"), body_cap=5000)
    assert result["body_truncated"] is True and isinstance(result["body"], str)
    result = execute(client, method="GET", url=server.url("/bigjson"))
    assert result["body_truncated"] is False and len(result["body"]["a"]) == 100_000


def test_decompression_bomb_fails_naming_the_cap(client, server):
    with pytest.raises(HttpTaskError, match="cap of 4096 bytes.*decompression bomb") as info:
        execute(client, method="GET", url=server.url("/bomb"), body_cap=4096)
    assert info.value.retryable is False


def test_a_big_compressed_answer_is_cut_at_the_cap_like_an_uncompressed_one(client, server):
    result = execute(client, method="GET", url=server.url("/gzip-big"), body_cap=4096)
    assert result["body_truncated"] is True and result["body"].startswith("00000000,9e3779b1,")
    assert len(result["body"].split("\n")[0]) == 4096


@pytest.mark.parametrize("path", ["/gzip-gzip", "/gzip-twice"])
def test_more_than_one_content_coding_is_refused_without_inflating(client, server, path):
    with pytest.raises(HttpTaskError, match=r"encoded 2 times over \(Content-Encoding: gzip, gzip\)") as info:
        execute(client, method="GET", url=server.url(path))
    assert info.value.retryable is False


def test_a_content_coding_not_asked_for_is_refused(client, server):
    with pytest.raises(HttpTaskError, match="'br' is not one taskman asked for"):
        execute(client, method="GET", url=server.url("/brotli"))


@pytest.mark.parametrize("path", ["/trickle-headers", "/trickle-body"])
def test_a_trickling_server_cannot_outlast_the_deadline(client, server, path):
    started = time.monotonic()
    with pytest.raises(HttpTaskError, match="timed out after 1.5s") as info:
        execute(client, method="GET", url=server.url(path), timeout=1.5)
    assert 1.4 < time.monotonic() - started < 2.2
    assert info.value.retryable is True


def test_should_stop_abandons_a_request_within_a_poll(client, server):
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    with pytest.raises(HttpTaskError, match="abandoned the request") as info:
        execute(client, method="GET", url=server.url("/trickle-headers"), timeout=30, should_stop=stop.is_set)
    assert time.monotonic() - started < 0.5 + 0.5
    assert info.value.retryable is False
    assert _wait_until(lambda: server.trickling == 0, 3), "the server saw the connection closed"


def test_should_stop_abandons_a_connect_that_hangs(client):
    """A connect nobody answers is waited for a slice at a time too: a listener whose accept queue is full
    drops further SYNs, so the connect hangs the way one to a black-holed address does."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)
    started = time.monotonic()
    try:
        with pytest.raises(HttpTaskError) as info:
            execute(client, method="GET", url=f"http://127.0.0.1:{port}/", timeout=30,
                    should_stop=lambda: time.monotonic() - started > 0.3)
    finally:
        for sock in (*fillers, listener):
            sock.close()
    assert "abandoned" in info.value.message, info.value.message
    assert time.monotonic() - started < 1.0


def _wait_until(predicate, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_timeout_is_retryable(client, server):
    started = time.monotonic()
    with pytest.raises(HttpTaskError, match="timed out") as info:
        execute(client, method="GET", url=server.url("/slow?s=2"), timeout=0.3)
    assert info.value.retryable is True and info.value.response is None
    assert time.monotonic() - started < 1.5


def test_connection_refused_is_retryable(client):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HttpTaskError, match="failed") as info:
        execute(client, method="GET", url=f"http://127.0.0.1:{port}/")
    assert info.value.retryable is True


def test_bad_url_refused_not_retryable(client):
    with pytest.raises(HttpTaskError, match="credentials") as info:
        execute(client, method="GET", url="http://u:p@127.0.0.1/")
    assert info.value.retryable is False


def test_unresolvable_host_is_a_connection_error(client, monkeypatch):
    def fail(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(HttpTaskError, match="could not resolve") as info:
        execute(client, method="GET", url="http://no-such-host.invalid/")
    assert info.value.retryable is True


# --------------------------------------------------------------------------------------------
# Guard unit tests (numeric addresses only: getaddrinfo does not touch the network for them)


@pytest.mark.parametrize(
    "address, reason",
    [
        ("127.0.0.1", "loopback"),
        ("127.1", "loopback"),
        ("2130706433", "loopback"),
        ("0x7f000001", "loopback"),
        ("0177.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("64:ff9b::7f00:1", "loopback"),  # NAT64
        ("2002:7f00:1::1", "loopback"),  # 6to4
        ("::ffff:10.1.2.3", "private"),
        ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 of 169.254.169.254
        ("2002:a9fe:a9fe::", "metadata"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("100.64.0.1", "shared address space"),
        ("100.127.255.254", "shared address space"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "reserved"),
        ("2001:db8::1", "reserved"),
    ],
)
def test_guard_blocks(address, reason):
    with pytest.raises(BlockedAddress) as info:
        Guard().check_host(address, 80)
    assert reason in info.value.reason
    assert reason in str(info.value) and info.value.address in str(info.value)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1",
                                     "2606:4700::1111"])
def test_guard_allows_public(address):
    assert Guard().check_host(address, 443)


def test_guard_allow_list_by_ip_cidr_and_embedded():
    assert Guard(["127.0.0.1"]).check_host("127.0.0.1", 80) == ["127.0.0.1"]
    assert Guard(["127.0.0.1"]).check_host("::ffff:127.0.0.1", 80) == ["::ffff:127.0.0.1"]
    assert Guard(["10.0.0.0/8"]).check_host("10.9.8.7", 80) == ["10.9.8.7"]
    assert Guard(["[::1]"]).check_host("[::1]", 80) == ["::1"]
    assert Guard(["fd00::/8"]).check_host("fd00:ec2::254", 80) == ["fd00:ec2::254"]
    with pytest.raises(BlockedAddress):
        Guard(["::1"]).check_host("127.0.0.1", 80)
    with pytest.raises(BlockedAddress):
        Guard(["10.0.0.0/8"]).check_host("100.64.0.1", 80)


def test_guard_checks_every_resolved_address(monkeypatch):
    def fake(host, port, *args, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with pytest.raises(BlockedAddress, match=r"'mixed\.test' resolves to 10\.0\.0\.5.*private"):
        Guard().check_host("mixed.test", 80)
    assert Guard(["10.0.0.5"]).check_host("mixed.test", 80) == ["93.184.216.34", "10.0.0.5"]
    assert Guard(["Mixed.Test."]).check_host("mixed.test", 80) == ["93.184.216.34", "10.0.0.5"]


def test_blocked_address_pickles():
    err = BlockedAddress("msg", host="h", address="10.0.0.1", reason="private")
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.message, clone.host, clone.address, clone.reason) == ("msg", "h", "10.0.0.1", "private")


# --------------------------------------------------------------------------------------------
# Headers and URLs


def test_mask_headers():
    masked = mask_headers(
        {
            "Authorization": "Bearer abc.def",
            "Proxy-Authorization": "Basic dXNlcjpwdw==",
            "authorization": "rawtoken",
            "Cookie": "sid=1",
            "Set-Cookie": "sid=1; HttpOnly",
            "X-Api-Key": "k",
            "X-Auth-Token": "t",
            "X-Client-Secret": "s",
            "X-Password": "p",
            "Content-Type": "application/json",
            "Accept": "*/*",
        }
    )
    assert masked["Authorization"] == "Bearer ***"
    assert masked["Proxy-Authorization"] == "Basic ***"
    assert masked["authorization"] == "***"
    for name in ("Cookie", "Set-Cookie", "X-Api-Key", "X-Auth-Token", "X-Client-Secret", "X-Password"):
        assert masked[name] == "***"
    assert masked["Content-Type"] == "application/json" and masked["Accept"] == "*/*"
    assert mask_headers(None) == {}


def test_secret_header_pattern():
    for name in ("Authorization", "proxy-authorization", "COOKIE", "set-cookie", "X-Token", "api_key", "Secret",
                 "db-password", "X-Auth"):
        assert SECRET_HEADER_PATTERN.match(name) and SECRET_HEADER_PATTERN.search(name), name
    for name in ("Content-Type", "Accept", "User-Agent", "Keep-Alive", "X-Request-Id"):
        assert not SECRET_HEADER_PATTERN.search(name), name


@pytest.mark.parametrize(
    "url, words",
    [
        ("ftp://billing.internal/x", "http://"),
        ("file:///etc/passwd", "http://"),
        ("billing.internal/path", "http://"),
        ("http://", "host"),
        ("http:///path", "host"),
        ("http://user:pw@billing.internal/", "credentials"),
        ("http://user@billing.internal/", "credentials"),
        ("http://billing.internal/" + "a" * 4100, "4096"),
        ("http://exa mple.com/", "spaces"),
        ("http://billing.internal:99999/", "port"),
        ("http://[::1/", "not a valid URL"),
        ("", "empty"),
    ],
)
def test_check_url_refusals(url, words):
    with pytest.raises(InvalidSpec) as info:
        check_url(url)
    assert info.value.field == "api_url"
    assert words in info.value.message


def test_check_url_accepts_without_resolving(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail("check_url must not resolve"))
    for url in ("https://api.internal/v1?q=1", "http://127.0.0.1:8080/", "https://[::1]/", "HTTP://Billing.INTERNAL"):
        check_url(url)


def test_redact_url_masks_secret_query_values_only():
    from core.http import redact_url

    assert redact_url("http://h/p?api_key=s3cr3t&page=2") == "http://h/p?api_key=***&page=2"
    assert redact_url("http://h/p?page=2") == "http://h/p?page=2"
    assert redact_url("http://h/p") == "http://h/p"


# --------------------------------------------------------------------------------------------
# More spellings, more redirects (issue 4: "every spelling", "again on each redirect")


@pytest.mark.parametrize(
    "host",
    ["0x7f.0x0.0x0.0x1", "0x7f.1", "0177.1", "127.1.1", "127.000.000.001", "LOCALHOST", "localhost.",
     "127.0.0.1.", "１２７.０.０.１", "[::127.0.0.1]", "[0:0:0:0:0:ffff:7f00:1]", "[64:ff9b::127.0.0.1]",
     "[2002:7f00:1::1]", "[fe80::1%25lo]", "[::ffff:100.64.0.1]", "100.100.100.200", "[fd00:ec2::254]",
     "255.255.255.255", "224.0.0.251", "[ff02::1]", "[::]"],
)
def test_more_spellings_of_internal_addresses_never_connect(strict, server, connects, host):
    """Dotted hex and octal, short forms, trailing dots, upper case, full-width digits, IPv4-compatible,
    long-form mapped, NAT64 with a dotted tail, 6to4, zone ids, mapped shared space, cloud metadata,
    broadcast and multicast: each is blocked by the guard, or is not a URL (or a name) at all."""
    with pytest.raises(HttpTaskError) as info:
        execute(strict, method="GET", url=f"http://{host}:{server.port}/get", timeout=2)
    message = info.value.message
    assert message.startswith("blocked by the SSRF guard: ") or "not a valid URL" in message \
        or "could not resolve" in message, message
    assert not message.startswith("blocked") or info.value.retryable is False
    time.sleep(0.02)
    assert connects == [] and server.connections == 0


@pytest.mark.parametrize(
    "target, reason",
    [
        ("http://2130706434:{port}/get", "loopback"),  # 127.0.0.2, decimal: only 127.0.0.1 is allowed
        ("http://0x7f000002:{port}/get", "loopback"),
        ("http://[::ffff:127.0.0.2]:{port}/get", "loopback"),
        ("http://[64:ff9b::a9fe:a9fe]/latest/meta-data/", "metadata"),
        ("http://[2002:a00:1::]/", "private"),
        ("http://100.64.0.1/", "shared address space"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[fe80::1]/", "link-local"),
    ],
)
def test_every_redirect_hop_is_checked_again(client, server, connects, target, reason):
    url = target.format(port=server.port)
    with pytest.raises(HttpTaskError, match=reason) as info:
        execute(client, method="GET", url=server.url(f"/redirect-to?url={url}"))
    assert info.value.message.startswith("blocked by the SSRF guard: ")
    assert info.value.retryable is False
    assert [c[0] for c in connects] == ["127.0.0.1"] and len(server.seen) == 1


# --------------------------------------------------------------------------------------------
# Secrets never come back (issue 4: "masked in stored records, logs and the console")

SENT = {"Authorization": "Bearer tok-abc-123", "X-Api-Key": "key-456-def", "Cookie": "sid=cookie-789"}


def test_secret_values_are_the_secret_headers_and_query_parameters():
    from core.http import secret_values

    found = secret_values({**SENT, "Accept": "application/json", "X-Short-Token": "ab"},
                          "http://h/p?api_key=q%20s+1&page=2", {"token": "par-val"})
    for value in ("Bearer tok-abc-123", "tok-abc-123", "key-456-def", "sid=cookie-789", "q s 1", "q%20s%201",
                  "q+s+1", "par-val"):
        assert value in found, value
    assert "application/json" not in found and "ab" not in found and "2" not in found
    assert found == sorted(found, key=len, reverse=True), "longest first, so a value inside another goes too"


def test_scrub_masks_secrets_in_nested_data():
    from core.http import scrub

    data = {"echo": {"Authorization": "Bearer tok-abc-123", "list": ["x tok-abc-123 y", 5, None]},
            "tok-abc-123": True}
    assert scrub(data, ["Bearer tok-abc-123", "tok-abc-123"]) == {
        "echo": {"Authorization": "***", "list": ["x *** y", 5, None]}, "***": True}
    assert scrub(data, []) is data


def test_an_echoed_secret_is_masked_in_the_answer(client, server):
    result = execute(client, method="GET", url=server.url("/get?api_key=query-secret-1&page=2"), headers=SENT)
    assert server.seen[0]["headers"]["Authorization"] == "Bearer tok-abc-123"  # sent for real
    echoed = result["body"]["headers"]
    assert echoed["Authorization"] == "***" and echoed["X-Api-Key"] == "***" and echoed["Cookie"] == "***"
    assert result["body"]["args"] == {"api_key": "***", "page": "2"}
    assert result["url"].endswith("/get?api_key=***&page=2")
    assert "tok-abc-123" not in json.dumps(result) and "query-secret-1" not in json.dumps(result)


def test_errors_never_repeat_a_secret(client, server):
    with pytest.raises(HttpTaskError) as info:
        execute(client, method="GET", url=server.url("/status/500?token=query-secret-2"), headers=SENT)
    assert "token=***" in info.value.message and "query-secret-2" not in info.value.message
    assert "query-secret-2" not in json.dumps(info.value.response)
    with pytest.raises(HttpTaskError) as info:
        execute(client, method="GET", url=server.url("/slow?s=2&api_key=query-secret-3"), timeout=0.3)
    assert "api_key=***" in info.value.message and "query-secret-3" not in info.value.message
    with pytest.raises(HttpTaskError) as info:  # a Location the server chose: secret-named parameters masked
        execute(client, method="GET", url=server.url("/redirect-to?url=ftp://h/?key=k-secret-4"))
    assert "to 'ftp://h/?key=***'" in info.value.message


def test_httpx_request_log_lines_mask_secret_query_parameters(client, server, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="httpx"):
        execute(client, method="GET", url=server.url("/get?api_key=query-secret-5&page=1"))
    lines = [record.getMessage() for record in caplog.records if record.name == "httpx"]
    assert lines and all("query-secret-5" not in line for line in lines)
    assert any("api_key=***" in line for line in lines)


def test_limit_memory_makes_a_runaway_allocation_fail_not_the_process():
    script = ("from core import http\n"
              "http.limit_memory(256)\n"
              "try:\n    hog = bytearray(512 << 20)\nexcept MemoryError:\n    print('refused')\n"
              "small = bytearray(16 << 20)\nprint('alive', len(small))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=str(Path(__file__).resolve().parents[2]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["refused", "alive", str(16 << 20)]
