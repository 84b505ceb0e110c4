"""``taskman echo``: a small local HTTP service to try API tasks on (README's examples call it).

It answers like the public echo services people try HTTP clients against: ``GET /get`` and any
other path echo the request (method, path, query, headers, JSON body), ``POST /post`` (and PUT,
PATCH, DELETE) echo the body they were sent, and ``/status/CODE`` answers with that status. It
binds to 127.0.0.1 only and keeps nothing.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

MAX_BODY = 1024 * 1024


class EchoHandler(BaseHTTPRequestHandler):
    """Echo the request as JSON; ``/status/CODE`` answers with that status."""

    server_version = "taskman-echo"

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.command} {self.path} -> {args[1] if len(args) > 1 else '?'}", flush=True)

    def _answer(self) -> None:
        url = urlparse(self.path)
        length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
        raw = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        parts = url.path.strip("/").split("/")
        status = int(parts[1]) if parts[0] == "status" and len(parts) > 1 and parts[1].isdigit() else 200
        status = status if 200 <= status <= 599 else 400
        answer = {"method": self.command, "path": url.path, "args": {k: v[-1] for k, v in parse_qs(url.query).items()},
                  "headers": dict(self.headers), "json": body if not isinstance(body, str) else None,
                  "data": body if isinstance(body, str) else None, "status": status}
        data = json.dumps(answer, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer


def serve(port: int) -> None:
    """Serve on 127.0.0.1:``port`` until interrupted."""
    server = ThreadingHTTPServer(("127.0.0.1", port), EchoHandler)
    server.daemon_threads = True
    print(f"echo service on http://127.0.0.1:{port} (GET /get, POST /post, /status/CODE); ctrl+c stops it",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
