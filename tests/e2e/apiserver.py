"""A real ``taskman api`` process for the API tests: started on a free port, stopped by PID.

The server is the installed console script run exactly as a user runs it (``taskman api --port 0``),
with the session's environment; the port it bound is read from uvicorn's start-up line.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
STARTED = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


def taskman_command() -> list[str]:
    found = shutil.which("taskman", path=str(Path(sys.executable).parent)) or shutil.which("taskman")
    return [found] if found else [sys.executable, "-m", "tui.cli"]


def process_env(taskman_env: dict[str, str], **overrides: str) -> dict[str, str]:
    env = {**os.environ, **taskman_env, **overrides, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


class ApiServer:
    """One ``taskman api`` child process on 127.0.0.1."""

    def __init__(self, env: dict[str, str], log_path: Path, *options: str) -> None:
        self.env = env
        self.log_path = log_path
        self.options = options  # more of ``taskman api``'s options, e.g. ``--workers 2``
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ApiServer:
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen([*taskman_command(), "api", "--host", "127.0.0.1", "--port", "0",
                                         "--log-level", "info", "--no-access-log", *self.options],
                                        cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = STARTED.search(self.log_path.read_text(errors="replace"))
            if found:
                self.port = int(found.group(1))
                break
            if self.process.poll() is not None:
                raise AssertionError(f"taskman api exited: {self.log_path.read_text(errors='replace')}")
            time.sleep(0.05)
        else:
            self.stop()
            raise AssertionError(f"taskman api did not start: {self.log_path.read_text(errors='replace')}")
        while True:  # with --workers the port is bound (and logged) before a process listens on it
            try:
                httpx.get(f"{self.url}/api/health", timeout=5).raise_for_status()
                return self
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
