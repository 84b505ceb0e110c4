"""A person at a terminal: ``taskman up`` in tmux, driven by keystrokes, read off the screen."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, _process_env, wait_for

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=10).stdout


def screen(session: str) -> str:
    return tmux("capture-pane", "-t", session, "-p")


def test_create_a_code_task_in_the_console_and_watch_it_run(tmp_path):
    session = f"taskman-test-{uuid.uuid4().hex[:6]}"
    env = _process_env({"TASKMAN_DATA_DIR": str(tmp_path / "data"), "TASKMAN_NAMESPACE": "tmux"})
    env.pop("TASKMAN_REDIS_URL", None)
    env["TERM"] = "xterm-256color"
    command = f"cd {ROOT} && {sys.executable} -m tui.cli up; echo EXITED $?; sleep 30"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", "-e",
                    f"PATH={os.environ['PATH']}", *sum((["-e", f"{k}={v}"] for k, v in env.items()
                                                       if k.startswith(("TASKMAN_", "PYTHON"))), []),
                    command], check=True, timeout=10)
    try:
        wait_for(lambda: "Tasks (0)" in screen(session), timeout=60, interval=0.3, message="the console")
        tmux("send-keys", "-t", session, "n")
        wait_for(lambda: "New task" in screen(session), timeout=10, interval=0.2, message="the form")
        tmux("send-keys", "-t", session, "-l", "typed-in-tmux")
        time.sleep(0.3)
        tmux("send-keys", "-t", session, "C-s")
        try:
            wait_for(lambda: "typed-in-tmux" in screen(session) and "✔" in screen(session), timeout=30,
                     interval=0.3, message="the task and its result in the list")
        except AssertionError:
            raise AssertionError(f"the screen was:\n{screen(session)}") from None
        wait_for(lambda: "hello" in screen(session), timeout=10, interval=0.3,
                 message="the printed line in the log pane")
        address = json.loads((tmp_path / "data" / "redis.json").read_text())
        tmux("send-keys", "-t", session, "q")
        wait_for(lambda: "EXITED 0" in screen(session), timeout=40, interval=0.3, message="a clean exit")
        assert not (tmp_path / "data" / "redis.json").exists()
        stat = Path(f"/proc/{address['pid']}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    finally:
        tmux("kill-session", "-t", session)
