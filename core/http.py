"""What an API task does: send one HTTP request with httpx, safely, and describe the answer.

Why it is shaped this way:

* **The SSRF guard sits at connect time, not at spec time.** ``check_url`` only refuses what is
  wrong on its face (scheme, credentials in the URL, length). Whether a host may be contacted is
  decided by :class:`Guard` inside the network backend of the client's transport: it resolves the
  name itself, checks *every* address, and then connects to one of the addresses it checked, by
  number. The name is never resolved a second time, so DNS rebinding between check and connect is
  impossible, and the URL, ``Host`` header and TLS SNI / certificate check keep the original
  hostname because only the TCP connect is redirected. Every hop of a redirect chain opens its
  connections through the same backend, so it is checked too.
* **Redirects are followed by hand** in :func:`execute`: httpx would read each redirect's body
  whole into memory, and we also want to drop secret headers when a redirect changes origin and to
  count hops against the client's ``max_redirects``.
* **Bodies are streamed and cut at ``body_cap``**; gzip/deflate are inflated here with a bounded
  output size, so neither a huge body nor a decompression bomb is ever held in memory. One content
  coding at most (``gzip, gzip`` is refused: httpx would inflate a whole network read of it at once),
  and a body that inflates past the cap more than ``MAX_EXPANSION`` times over fails as a bomb.
* **Every request has one deadline, and a stop abandons it.** The worker's threads pool has no time
  limits, and httpx's timeouts are per operation: a server sending one byte a second never trips them.
  So the connections are our own (:class:`_Stream`): name resolution, connect, TLS handshake, every
  read and every write is cut at the request's deadline (``timeout``: connect + read + total), and runs
  in slices of ``STOP_POLL`` seconds between which ``should_stop`` is asked; inside a Celery worker it
  answers whether the run's task was revoked (``Service.stop``), so a stopped run frees its thread.
* **One client per worker process** (:func:`make_client`): building a client (TLS context,
  connection pool) per request costs far more than the request itself. The client therefore keeps
  no cookies (tasks must not see each other's sessions) and ignores proxy environment variables
  (a proxy would connect on our behalf, past the guard).
* Errors come out as :class:`HttpTaskError` carrying ``retryable`` so the worker can decide
  whether to retry without knowing httpx.
"""

from __future__ import annotations

import codecs
import errno
import functools
import ipaddress
import json as jsonlib
import logging
import os
import select
import socket
import ssl
import sys
import threading
import time
import typing
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from http.cookiejar import CookieJar, CookiePolicy

import httpcore
import httpx

from core import redact
from core.errors import InvalidSpec
from core.spec_fields import HTTP_METHODS

__all__ = [
    "METHODS",
    "SECRET_HEADER_PATTERN",
    "Abandoned",
    "BlockedAddress",
    "Guard",
    "HttpTaskError",
    "check_url",
    "execute",
    "make_client",
    "mask_headers",
    "redact_url",
    "scrub",
    "secret_values",
]

METHODS = HTTP_METHODS

MAX_URL_LENGTH = 4096

SECRET_HEADER_PATTERN = redact.SECRET_NAME
"""Header (and query parameter, and body field) names whose values are secrets: ``core.redact``'s one rule."""

_MASK = redact.MASK
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# --------------------------------------------------------------------------------------------
# Headers and URLs


mask_headers = redact.mask_headers
redact_url = redact.redact_url


def check_url(url: str) -> None:
    """Refuse a URL that can never be a valid API target (no DNS lookup; the guard runs later)."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidSpec("api_url", "is empty; give an http:// or https:// URL")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidSpec("api_url", f"is {len(url)} characters long; at most {MAX_URL_LENGTH} are allowed")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise InvalidSpec("api_url", "must not contain spaces or control characters (percent-encode them)")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise InvalidSpec("api_url", f"is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        got = f" (got {parsed.scheme}://)" if parsed.scheme else ""
        raise InvalidSpec("api_url", f"must start with http:// or https://{got}")
    if parsed.userinfo:
        raise InvalidSpec(
            "api_url",
            "must not contain credentials (user:password@); send them in a header instead, "
            "e.g. Authorization",
        )
    if not parsed.host:
        raise InvalidSpec("api_url", "has no host name, e.g. https://api.example.com/path")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise InvalidSpec("api_url", f"has an invalid port {parsed.port} (1-65535)")


# --------------------------------------------------------------------------------------------
# The SSRF guard


class BlockedAddress(Exception):
    """The guard refused an address; ``host``, ``address`` and ``reason`` say which and why."""

    def __init__(self, message: str, host: str = "", address: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.host = host
        self.address = address
        self.reason = reason

    def __reduce__(self):  # keep the attributes across pickling (Celery results)
        return (type(self), (self.message, self.host, self.address, self.reason))


def _nets(*specs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(spec) for spec in specs)


_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, ...
        "169.254.170.2",  # AWS ECS task credentials
        "169.254.170.23",  # AWS EKS pod identity
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS EKS pod identity over IPv6
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Explicit ranges, checked in order before the ipaddress flags (which differ between Pythons).
_RULES: tuple[tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], str], ...] = (
    (_nets("0.0.0.0/8", "::/128"), "unspecified"),
    (_nets("127.0.0.0/8", "::1/128"), "loopback"),
    (_nets("169.254.0.0/16", "fe80::/10"), "link-local"),
    (_nets("100.64.0.0/10"), "shared address space"),
    (_nets("224.0.0.0/4", "ff00::/8"), "multicast"),
    (_nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"), "private"),
    (
        _nets(
            "240.0.0.0/4",  # class E and broadcast
            "192.0.0.0/24",  # IETF protocol assignments
            "198.18.0.0/15",  # benchmarking
            "::/96",  # IPv4-compatible (deprecated)
            "100::/64",  # discard-only
            "2001::/32",  # Teredo: tunnels to an address we cannot see
            "2001:db8::/32",  # documentation
            "64:ff9b:1::/48",  # local-use NAT64
            "fec0::/10",  # site-local (deprecated)
        ),
        "reserved",
    ),
)


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, NAT64 (64:ff9b::/96) or 6to4 address leads to."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr.sixtofour


def _reason(addr: IPAddress) -> str | None:
    """Why ``addr`` may not be contacted, or None if it is a public address."""
    if addr in _METADATA:
        return "metadata"
    for networks, reason in _RULES:
        if any(addr.version == net.version and addr in net for net in networks):
            return reason
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_multicast:
        return "multicast"
    if addr.is_private or addr.is_reserved or not addr.is_global:
        return "reserved"
    return None


class Guard:
    """SSRF guard: decides whether an IP address may be contacted."""

    def __init__(self, allow: Iterable[str] = ()) -> None:
        """``allow``: hostnames (exact, case-insensitive), IP addresses or CIDRs, v4 or v6."""
        self._hosts: set[str] = set()
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allow:
            entry = str(entry).strip()
            if not entry:
                continue
            bare = entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry
            try:
                self._networks.append(ipaddress.ip_network(bare, strict=False))
            except ValueError:
                self._hosts.add(_normal_host(entry))

    def _allowed(self, addr: IPAddress) -> bool:
        candidates: list[IPAddress] = [addr]
        if isinstance(addr, ipaddress.IPv6Address):
            embedded = _embedded_v4(addr)
            if embedded is not None:
                candidates.append(embedded)
        return any(c.version == net.version and c in net for c in candidates for net in self._networks)

    def check_host(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` and return the addresses to connect to.

        Raises :class:`BlockedAddress` if any address it resolves to is not public and not
        allow-listed, and ``socket.gaierror`` (an ``OSError``) if it does not resolve.
        """
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        host_allowed = _normal_host(host) in self._hosts
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        result: list[str] = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            ip = str(sockaddr[0])
            if ip in result:
                continue
            if not host_allowed:
                addr = ipaddress.ip_address(ip)
                reason = self._blocked(addr)
                if reason is not None:
                    shown = f"{ip} is" if ip == host else f"{host!r} resolves to {ip}, which is"
                    raise BlockedAddress(
                        f"blocked by the SSRF guard: {shown} a {reason} address, so no connection was made; "
                        "if this is intended, add the host or address to http_allow (TASKMAN_HTTP_ALLOW)",
                        host=host,
                        address=ip,
                        reason=reason,
                    )
            result.append(ip)
        if not result:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} has no address")
        return result

    def _blocked(self, addr: IPAddress) -> str | None:
        if self._allowed(addr):
            return None
        if isinstance(addr, ipaddress.IPv6Address):
            embedded = _embedded_v4(addr)
            if embedded is not None:
                reason = _reason(embedded)
                return None if reason is None else f"{reason} (embedded IPv4 {embedded})"
        return _reason(addr)


def _normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


# --------------------------------------------------------------------------------------------
# Errors


class HttpTaskError(Exception):
    """The request failed: .message, .response: dict | None (same shape as execute()'s return when a
    response was received, e.g. non-2xx), .retryable: bool (True for connection errors, timeouts,
    5xx and 429; False for blocked addresses, other 4xx)."""

    def __init__(self, message: str, response: dict | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.response = response
        self.retryable = retryable

    def __reduce__(self):  # keep response and retryable across pickling (Celery results)
        return (type(self), (self.message, self.response, self.retryable))


# --------------------------------------------------------------------------------------------
# Deadlines and stops: every blocking step of a request is cut at its deadline, a slice at a time


STOP_POLL = 0.25
"""Longest a blocking step waits before asking ``should_stop`` again: how fast a stop abandons a request."""
_current = threading.local()  # the request this thread is executing: .deadline (monotonic), .should_stop
_resolver: ThreadPoolExecutor | None = None
_resolver_lock = threading.Lock()


class Abandoned(Exception):
    """The request was given up because ``should_stop`` said so (its run was stopped)."""


def _budget(timeout: float | None) -> float | None:
    """Seconds a blocking step may take: its own timeout, cut at the current request's deadline."""
    deadline = getattr(_current, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    return left if timeout is None else min(timeout, left)


def _check_stop() -> None:
    should_stop = getattr(_current, "should_stop", None)
    if should_stop is not None and should_stop():
        raise Abandoned()


def _sliced(step: Callable[[float], typing.Any], timeout: float | None, expired: type[Exception],
            what: str) -> typing.Any:
    """Call ``step(seconds)`` -- one blocking attempt of at most that long, raising ``socket.timeout`` when
    it runs out -- until it completes; between attempts a stop raises ``Abandoned`` and the end of the
    budget (``timeout`` cut at the deadline) raises ``expired``."""
    budget = _budget(timeout)
    end = None if budget is None else time.monotonic() + budget
    while True:
        _check_stop()
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:
            raise expired(f"timed out {what}")
        try:
            return step(STOP_POLL if left is None else min(STOP_POLL, left))
        except TimeoutError as exc:
            if exc.errno is not None:  # ETIMEDOUT from the kernel: the connection is dead, not slow
                raise
            continue


def _on_socket(sock: socket.socket, call: Callable[[], typing.Any]) -> Callable[[float], typing.Any]:
    def step(seconds: float) -> typing.Any:
        sock.settimeout(seconds)
        return call()

    return step


def _resolve(resolve: Callable[[], list[str]], timeout: float | None, host: str) -> list[str]:
    """``resolve()`` (getaddrinfo, which has no timeout) within the deadline; an abandoned lookup finishes
    in the resolver's own thread, so the request's thread is free at once."""
    global _resolver
    with _resolver_lock:
        if _resolver is None:
            _resolver = ThreadPoolExecutor(max_workers=8, thread_name_prefix="taskman-resolve")
    lookup = _resolver.submit(resolve)

    def step(seconds: float) -> list[str]:
        try:
            return lookup.result(timeout=seconds)
        except TimeoutError:  # concurrent.futures' own, which carries no errno
            raise TimeoutError() from None

    return _sliced(step, timeout, httpcore.ConnectTimeout, f"resolving {host}")


def _connect(address: str, port: int, timeout: float | None, local_address: str | None,
             socket_options: typing.Iterable[typing.Any] | None) -> _Stream:
    """A TCP connection to ``address`` (a number, never a name), waited for a slice at a time."""
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    try:
        for option in socket_options or ():
            sock.setsockopt(*option)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if local_address:
            sock.bind((local_address, 0))
        sock.setblocking(False)
        error = sock.connect_ex((address, port))
        if error in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
            poller = select.poll()
            poller.register(sock, select.POLLOUT)

            def step(seconds: float) -> None:
                if not poller.poll(max(1, int(seconds * 1000))):
                    raise TimeoutError()

            _sliced(step, timeout, httpcore.ConnectTimeout, f"connecting to {address}")
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))
    except (Abandoned, httpcore.ConnectTimeout):
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        raise httpcore.ConnectError(_os_message(exc)) from exc
    return _Stream(sock)


def _os_message(exc: BaseException) -> str:
    """An error's message, or its type's name when it has none (a bare timeout)."""
    return str(exc) or type(exc).__name__


class _Stream(httpcore.NetworkStream):
    """One connection (TCP, or TLS over it) whose every read, write and handshake obeys the request's
    deadline and is abandoned within ``STOP_POLL`` seconds of a stop."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return _sliced(_on_socket(self._sock, lambda: self._sock.recv(max_bytes)), timeout,
                           httpcore.ReadTimeout, "waiting for the response")
        except (Abandoned, httpcore.ReadTimeout):
            raise
        except OSError as exc:
            raise httpcore.ReadError(_os_message(exc)) from exc

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        data = memoryview(buffer)
        try:
            while data:
                sent = _sliced(_on_socket(self._sock, functools.partial(self._sock.send, data)), timeout,
                               httpcore.WriteTimeout, "sending the request")
                data = data[sent:]
        except (Abandoned, httpcore.WriteTimeout):
            raise
        except OSError as exc:
            raise httpcore.WriteError(_os_message(exc)) from exc

    def close(self) -> None:
        self._sock.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        if isinstance(self._sock, ssl.SSLSocket):
            self.close()
            raise httpcore.ConnectError("TLS inside TLS (a proxy) is not used by API tasks")
        try:
            tls = ssl_context.wrap_socket(self._sock, server_hostname=server_hostname, do_handshake_on_connect=False)
        except OSError as exc:
            self.close()
            raise httpcore.ConnectError(_os_message(exc)) from exc
        try:
            _sliced(_on_socket(tls, tls.do_handshake), timeout, httpcore.ConnectTimeout, "in the TLS handshake")
        except (Abandoned, httpcore.ConnectTimeout):
            tls.close()
            raise
        except OSError as exc:
            tls.close()
            raise httpcore.ConnectError(_os_message(exc)) from exc
        return _Stream(tls)

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "ssl_object":
            return getattr(self._sock, "_sslobj", None) if isinstance(self._sock, ssl.SSLSocket) else None
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "socket":
            return self._sock
        if info == "is_readable":  # a pooled connection the server closed (or wrote to unasked)
            if self._sock.fileno() == -1:
                return True
            poller = select.poll()
            poller.register(self._sock, select.POLLIN)
            return bool(poller.poll(0))
        return None


# --------------------------------------------------------------------------------------------
# The client: a transport whose network backend runs the guard


class _GuardedBackend(httpcore.NetworkBackend):
    """Resolves and checks the host with the guard, then connects to a checked address by number."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = _resolve(lambda: self._guard.check_host(host, port), timeout, host)
        except OSError as exc:  # BlockedAddress is not an OSError and passes through
            raise httpcore.ConnectError(f"could not resolve {host}: {exc}") from exc
        error: Exception | None = None
        for address in addresses:
            try:
                return _connect(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:  # try the next address; timeouts end the attempt
                error = exc
        assert error is not None
        raise error

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise httpcore.ConnectError("unix sockets are not allowed for API tasks")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


# Most specific first: the first match wins.
_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


def _to_httpx(exc: Exception) -> Exception:
    for core_type, httpx_type in _EXCEPTIONS:
        if isinstance(exc, core_type):
            return httpx_type(_os_message(exc))
    return exc


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: typing.Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except Exception as exc:
            mapped = _to_httpx(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class _GuardedTransport(httpx.BaseTransport):
    """httpx transport over an httpcore pool whose every TCP connection goes through the guard."""

    def __init__(self, guard: Guard, limits: httpx.Limits = httpx.Limits()) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(guard),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the guarded pool and return the (streaming) response."""
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            core_response = self._pool.handle_request(core_request)
        except Exception as exc:
            mapped = _to_httpx(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        assert isinstance(core_response.stream, typing.Iterable)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseStream(core_response.stream),
            extensions=core_response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


class _NoCookies(CookiePolicy):
    """Never store or send cookies: one client serves many unrelated tasks."""

    netscape = True
    rfc2965 = False
    hide_cookie2 = True

    def set_ok(self, cookie, request) -> bool:
        return False

    def return_ok(self, cookie, request) -> bool:
        return False

    def domain_return_ok(self, domain, request) -> bool:
        return False

    def path_return_ok(self, path, request) -> bool:
        return False


class _RedactingFilter(logging.Filter):
    """httpx logs every request's URL at INFO ("HTTP Request: GET https://…?api_key=…"): mask its
    secret-named query parameters before any handler (a worker's log file) sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_shown(arg) if isinstance(arg, httpx.URL) else arg for arg in record.args)
        return True


def _redact_httpx_logs() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(existing, _RedactingFilter) for existing in logger.filters):
        logger.addFilter(_RedactingFilter())


def make_client(allow: Iterable[str] = (), max_redirects: int = 5) -> httpx.Client:
    """One client per worker process (reused: a new client per request is ~78x slower). Uses a custom
    transport that resolves the host itself, checks every address with Guard, and connects to the
    checked address (so DNS rebinding between check and connect cannot happen), keeping the Host
    header / SNI as the original hostname. Redirects are followed by :func:`execute`, up to
    ``max_redirects`` (kept as ``client.max_redirects``); every hop connects through the guard."""
    _redact_httpx_logs()
    return httpx.Client(
        transport=_GuardedTransport(Guard(allow)),
        follow_redirects=False,
        max_redirects=max_redirects,
        trust_env=False,
        cookies=CookieJar(policy=_NoCookies()),
        headers={"User-Agent": "taskman", "Accept-Encoding": "gzip, deflate"},
    )


def limit_memory(megabytes: int) -> None:
    """Cap this process's data memory (RLIMIT_DATA's soft limit: heap, anonymous mappings and thread
    stacks) at ``megabytes`` MiB; past it allocations fail with ``MemoryError`` instead of growing the
    process until the machine runs out. For the http worker, whose threads pool runs every API request in
    one process: a prefork parent must not call it, its code-run children would inherit the limit.

    RLIMIT_DATA rather than RLIMIT_AS: each thread reserves address space it never touches (its stack,
    a 64 MiB malloc arena), so an address-space limit would have to be far above what is really used."""
    if megabytes <= 0:
        return
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    wanted = megabytes * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))


# --------------------------------------------------------------------------------------------
# Executing a request


MAX_EXPANSION = 100
"""A compressed body that inflates past the response cap from under 1/100 of it on the wire is a bomb, not
a big answer (JSON and text compress 3-20 times; 10 MB of zeros gzip to 10 KB). It fails the run; a body
that merely passes the cap is cut there, as an uncompressed one is."""
DECODED = ("gzip", "x-gzip", "deflate")
"""The content codings taskman asks for (``Accept-Encoding``) and inflates, one layer at most."""


class _Deadline(Exception):
    pass


class _BadEncoding(Exception):
    pass


class _Bomb(Exception):
    pass


class _Inflater:
    """gzip / deflate decoding that never produces more than it is asked for, counting what it consumed."""

    def __init__(self, encoding: str) -> None:
        self._maybe_raw = encoding == "deflate"  # "deflate" is zlib-wrapped or, wrongly, raw
        self._obj = zlib.decompressobj(zlib.MAX_WBITS if self._maybe_raw else zlib.MAX_WBITS | 16)
        self.consumed = 0
        """Bytes on the wire inflated so far."""

    def feed(self, data: bytes, room: int) -> bytes:
        try:
            out = self._obj.decompress(data, room)
        except zlib.error as exc:
            if not self._maybe_raw:
                raise _BadEncoding(str(exc)) from exc
            self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
            try:
                out = self._obj.decompress(data, room)
            except zlib.error as exc2:
                raise _BadEncoding(str(exc2)) from exc2
        self._maybe_raw = False
        self.consumed += len(data) - len(self._obj.unconsumed_tail)
        return out


def _coding(response: httpx.Response) -> str:
    """The response's one content coding ('' for none); ``_BadEncoding`` for a chain or one not asked for."""
    codings = [coding.strip().lower() for coding in response.headers.get_list("content-encoding", split_commas=True)]
    codings = [coding for coding in codings if coding and coding != "identity"]
    if len(codings) > 1:
        raise _BadEncoding(f"it is encoded {len(codings)} times over (Content-Encoding: {', '.join(codings)}); "
                           "taskman inflates one layer at most")
    if codings and codings[0] not in DECODED:
        raise _BadEncoding(f"its Content-Encoding {codings[0]!r} is not one taskman asked for or inflates "
                           f"({', '.join(DECODED)})")
    return codings[0] if codings else ""


def _read_capped(response: httpx.Response, cap: int, deadline: float) -> tuple[bytes, bool]:
    """Read at most ``cap`` bytes of decoded body; return them and whether there was more.

    Decoded bytes are counted as they stream: raw bytes are read from the network and inflated here, never
    more than one byte past the cap, whatever the compression ratio."""
    limit = max(cap, 0) + 1  # one byte more than kept tells us the body was cut
    coding = _coding(response)
    inflater = _Inflater(coding) if coding else None
    body = bytearray()
    for chunk in response.iter_raw():
        room = limit - len(body)
        body += inflater.feed(chunk, room) if inflater is not None else chunk[:room]
        if len(body) >= limit:
            if inflater is not None and len(body) > MAX_EXPANSION * max(inflater.consumed, 1):
                raise _Bomb(f"its {coding} body inflates past the response cap of {cap} bytes (http_body_cap) "
                            f"from {inflater.consumed} bytes on the wire, over {MAX_EXPANSION} times their size: "
                            "refused as a decompression bomb")
            break
        if time.monotonic() > deadline:
            raise _Deadline()
    truncated = len(body) > cap
    return bytes(body[: max(cap, 0)]), truncated


def _is_json(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


def _body_value(response: httpx.Response, raw: bytes, truncated: bool, cap: int) -> typing.Any:
    if not truncated and raw.strip() and _is_json(response.headers.get("content-type", "")):
        try:
            return jsonlib.loads(raw)
        except (ValueError, RecursionError):
            pass
    try:
        decoder = codecs.getincrementaldecoder(response.charset_encoding or "utf-8")(errors="replace")
    except LookupError:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(raw, final=not truncated)
    if truncated:
        text += f"\n[... truncated: the response body is larger than {cap} bytes]"
    return text


def _describe(response: httpx.Response, started: float, cap: int, deadline: float) -> dict:
    if response.request.method == "HEAD":
        raw, truncated = b"", False
    else:
        raw, truncated = _read_capped(response, cap, deadline)
    return {
        "status_code": response.status_code,
        "url": _shown(response.request.url),
        "headers": mask_headers(dict(response.headers.items())),
        "body": _body_value(response, raw, truncated, cap),
        "body_truncated": truncated,
        "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
    }


def _body_kwargs(json: object, data: object) -> dict:
    if json is not None and data is not None:
        raise HttpTaskError("give the request body as json or as data, not both")
    if json is not None:
        return {"json": json}
    if data is None:
        return {}
    if isinstance(data, str | bytes | bytearray):
        return {"content": bytes(data) if not isinstance(data, str) else data}
    return {"json": data}  # the seed's format puts the JSON body in "data"


def _redirect_method(method: str, status: int) -> str:
    if status == 303 and method != "HEAD":
        return "GET"
    if status in (301, 302) and method == "POST":
        return "GET"
    return method


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


def execute(
    client: httpx.Client,
    *,
    method: str,
    url: str,
    headers: dict | None = None,
    params: dict | None = None,
    json: object = None,
    data: object = None,
    timeout: float = 30.0,
    body_cap: int = 256 * 1024,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Send the request and describe the response.

    Returns ``{"status_code", "url" (final), "headers" (masked), "body" (parsed JSON if the
    response is JSON and fits, else text cut at ``body_cap`` bytes with a marker),
    "body_truncated", "elapsed_ms"}``. ``timeout`` bounds the whole call, redirects included: name
    lookups, connects, handshakes and every read and write. ``should_stop`` is asked every ``STOP_POLL``
    seconds while the call waits, and abandons it when true; by default, inside a Celery worker, it asks
    whether the task being run was revoked. Raises :class:`HttpTaskError` for a non-2xx answer
    (``response`` filled in), connection errors and timeouts (retryable), blocked addresses, bad URLs, too
    many redirects, content codings refused, decompression bombs and abandoned calls (not retryable).

    The secrets sent (values of secret headers, of secret-named query parameters and of secret-named
    body fields) never come back: wherever the answer or an error message repeats them -- an echo
    service, a proxy's error page -- they are replaced by ``***``, and secret-named query parameters in
    URLs are masked. Secret-named fields of the answer's body (an OAuth ``access_token``) are masked too.
    """
    secrets = secret_values(headers, url, params, body=[json, data])
    outer = getattr(_current, "deadline", None), getattr(_current, "should_stop", None)
    _current.deadline = time.monotonic() + timeout if isinstance(timeout, int | float) and timeout > 0 else None
    _current.should_stop = should_stop if should_stop is not None else _revoked_in_celery()
    try:
        result = _execute(client, method=method, url=url, headers=headers, params=params, json=json, data=data,
                          timeout=timeout, body_cap=body_cap)
    except HttpTaskError as exc:
        raise HttpTaskError(scrub(exc.message, secrets), _masked_body(scrub(exc.response, secrets)),
                            exc.retryable) from exc
    finally:
        _current.deadline, _current.should_stop = outer
    return _masked_body(scrub(result, secrets))


def _revoked_in_celery() -> Callable[[], bool] | None:
    """Inside a Celery worker's task: whether that task has been revoked since (``Service.stop`` revokes a
    stopped run's task; the http worker's threads share the worker's set of revoked ids). None elsewhere."""
    worker_state = sys.modules.get("celery.worker.state")
    if worker_state is None:
        return None
    from celery import current_task

    task_id = getattr(getattr(current_task, "request", None), "id", None)
    if not task_id:
        return None
    revoked = worker_state.revoked
    return lambda: task_id in revoked


def _masked_body(described: typing.Any) -> typing.Any:
    if isinstance(described, dict) and "body" in described:
        return {**described, "body": redact.mask_fields(described["body"])}
    return described


def secret_values(headers: Mapping[str, str] | None, url: str = "", params: Mapping[str, object] | None = None,
                  body: typing.Any = None) -> list[str]:
    """The secrets a request carries, as they may be echoed back: values of secret headers (and the
    credentials after an ``Authorization`` scheme), values of secret-named query parameters and body
    fields (``body``: JSON data or a form string, at any depth), and their URL-encoded spellings. Values
    shorter than 4 characters are left out (masking them would garble)."""
    found: set[str] = set()
    for name, value in (headers or {}).items():
        if SECRET_HEADER_PATTERN.match(str(name)):
            value = str(value).strip()
            found.add(value)
            found.update(value.split(None, 1)[1:])
    query: list[tuple[str, str]] = []
    try:
        query = urllib.parse.parse_qsl(urllib.parse.urlsplit(str(url)).query, keep_blank_values=True)
    except ValueError:
        pass
    query += [(str(name), str(value)) for name, value in (params or {}).items()]
    found.update(value for name, value in query if SECRET_HEADER_PATTERN.match(name))
    found.update(redact.secret_field_values(body))
    spelled = set()
    for value in found:
        spelled.update({value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)})
    return sorted((value for value in spelled if len(value) >= 4), key=len, reverse=True)


def scrub(value: typing.Any, secrets: list[str]) -> typing.Any:
    """``value`` (text, or JSON data) with every secret replaced by ``***``."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, _MASK)
        return value
    if isinstance(value, dict):
        return {scrub(key, secrets): scrub(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub(item, secrets) for item in value]
    return value


def _shown(url: object) -> str:
    """A URL as error messages show it: secret-named query parameters masked."""
    try:
        return redact_url(str(url))
    except ValueError:
        return str(url)


def _execute(
    client: httpx.Client,
    *,
    method: str,
    url: str,
    headers: dict | None = None,
    params: dict | None = None,
    json: object = None,
    data: object = None,
    timeout: float = 30.0,
    body_cap: int = 256 * 1024,
) -> dict:
    """:func:`execute` before its answer is scrubbed of secrets."""
    started = time.monotonic()
    deadline = started + timeout
    method = str(method).upper()
    if method not in METHODS:
        raise HttpTaskError(f"method {method!r} is not one of {', '.join(METHODS)}")
    if not timeout > 0:
        raise HttpTaskError("timeout must be a positive number of seconds")
    try:
        check_url(url)
    except InvalidSpec as exc:
        raise HttpTaskError(exc.message) from None
    body = _body_kwargs(json, data)
    hop_headers = dict(headers or {})
    current = httpx.URL(url).copy_merge_params(params) if params else httpx.URL(url)
    max_redirects = client.max_redirects

    for _hop in range(max_redirects + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HttpTaskError(f"timed out after {timeout:g}s calling {_shown(current)}", retryable=True)
        try:
            request = client.build_request(
                method, current, headers=hop_headers, timeout=remaining, **body
            )
            response = client.send(request, stream=True)
        except BlockedAddress as exc:
            raise HttpTaskError(exc.message) from exc
        except Abandoned:
            raise HttpTaskError(f"abandoned the request to {_shown(current)}: its run was stopped") from None
        except (TypeError, ValueError) as exc:  # e.g. a body that is not JSON-serialisable
            raise HttpTaskError(f"could not build the request: {exc}") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _transport_error(exc, current, timeout) from exc

        try:
            location = response.headers.get("location")
            if response.status_code in _REDIRECT_STATUSES and location:
                try:
                    target = current.join(location)
                    check_url(str(target))
                except (httpx.InvalidURL, InvalidSpec) as exc:
                    message = exc.message if isinstance(exc, InvalidSpec) else str(exc)
                    raise HttpTaskError(
                        f"refused redirect from {_shown(current)} to {_shown(location)!r}: {message}"
                    ) from None
                new_method = _redirect_method(method, response.status_code)
                if new_method != method:
                    body = {}
                    hop_headers = {
                        k: v
                        for k, v in hop_headers.items()
                        if k.lower() not in ("content-type", "content-length", "transfer-encoding")
                    }
                if _origin(target) != _origin(current):
                    hop_headers = {k: v for k, v in hop_headers.items() if not SECRET_HEADER_PATTERN.match(k)}
                hop_headers = {k: v for k, v in hop_headers.items() if k.lower() != "host"}
                method, current = new_method, target
                continue
            result = _describe(response, started, body_cap, deadline)
        except _Deadline:
            raise HttpTaskError(
                f"timed out after {timeout:g}s reading the response from {_shown(current)}", retryable=True
            ) from None
        except _BadEncoding as exc:
            raise HttpTaskError(f"could not decode the response body from {_shown(current)}: {exc}") from None
        except _Bomb as exc:
            raise HttpTaskError(f"refused the response from {_shown(current)}: {exc}") from None
        except Abandoned:
            raise HttpTaskError(f"abandoned the request to {_shown(current)}: its run was stopped") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _transport_error(exc, current, timeout) from exc
        finally:
            response.close()

        status = result["status_code"]
        if not 200 <= status < 300:
            raise HttpTaskError(
                f"{method} {result['url']} answered {status} {response.reason_phrase}".rstrip(),
                response=result,
                retryable=status >= 500 or status == 429,
            )
        return result

    raise HttpTaskError(f"too many redirects: more than {max_redirects} starting from {_shown(url)}")


def _transport_error(exc: Exception, target: httpx.URL, timeout: float) -> HttpTaskError:
    """Turn an httpx failure into an HttpTaskError with the right ``retryable``."""
    host, url = target.host, _shown(target)
    if isinstance(exc, httpx.TimeoutException):
        kind = {
            httpx.ConnectTimeout: "connecting to",
            httpx.ReadTimeout: "waiting for",
            httpx.WriteTimeout: "sending to",
            httpx.PoolTimeout: "waiting for a free connection to",
        }.get(type(exc), "calling")
        return HttpTaskError(f"timed out after {timeout:g}s {kind} {url}", retryable=True)
    if isinstance(
        exc, httpx.InvalidURL | httpx.UnsupportedProtocol | httpx.LocalProtocolError | httpx.DecodingError
    ):
        return HttpTaskError(f"could not send the request to {url}: {exc}")
    if _caused_by(exc, ssl.SSLCertVerificationError):
        return HttpTaskError(f"the TLS certificate of {host} could not be verified: {exc}")
    if isinstance(exc, httpx.TransportError):
        return HttpTaskError(f"connection to {url} failed: {exc}", retryable=True)
    return HttpTaskError(f"request to {url} failed: {exc}")


def _caused_by(exc: BaseException | None, kind: type[BaseException]) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, kind):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
