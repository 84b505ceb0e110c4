"""README's console section, key by key, in tmux: what each key of its table says happens, on the screen.

``taskman up`` runs in a private tmux session (its own data dir, so its own embedded Redis, worker and
scheduler; its own namespace) at 120x35, wide enough for the editor beside the list, with a stale
``COLUMNS=80 LINES=24`` exported that the console must not take for its size. Two tasks come from
``taskman submit`` in "another terminal" first, so there is a list to move in, a delayed task and a cron
task to run, pause and copy. Then the keys go in README's order and after each the test waits for what
README promises to be on the screen (``capture-pane``; never a fixed sleep as the check): ``n`` with its
tab/esc/ctrl+s, moving, ``enter``, ``r``, ``p``, ``s``, ``e``/``esc``, ``c``, ``d``, ``/`` with README's words and
the ``Tasks (n/m)`` title, ``l``/``f`` and the lines that wait, ``L`` with ``/``, ``enter``, ``N`` and ``w``,
``w``, ``?``, and ``q``, after which no process the console started is left. The lines that wait in the held
log pane come from a run started elsewhere: a notice (of ``r``, say) would cover the corner that counts them.

The selected task is read off the editor's title (``╭─ NAME · code · …``), which follows the list's cursor.
The session and every process under it are ended by PID (checked against its start time) whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, _process_env, wait_for

pytestmark = [pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
              pytest.mark.timeout(240)]

WIDTH, HEIGHT = 120, 35
POLL = 0.05
"""Seconds between two looks at the screen: a key's effect shows within a frame or two."""
TASKS: list[dict] = [
    {"name": "readme-cron", "cron_expression": "0 0 1 1 *", "function_name": "nightly",
     "function_code": "def nightly():\n    print('nightly ran')\n    return 7\n"},
    {"name": "readme-later", "task_type": "delayed", "delay_seconds": 3600, "function_name": "later",
     "function_code": "def later():\n    return 1\n"},
]


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=10).stdout


def _stat(pid: int) -> list[str] | None:
    """``/proc/PID/stat``'s fields after the command name (state first), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


def descendants(root: int) -> dict[int, str]:
    """Every process under ``root`` (by parent PID), each with its start time, so a reused PID is never taken
    for it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and (fields := _stat(child)) is not None:
                found[child] = fields[19]
                todo.append(child)
    return found


class Pane:
    """The tmux pane the console runs in: keys in, the screen out, waits that show the screen when they fail."""

    def __init__(self, session: str) -> None:
        self.session = session

    def screen(self) -> str:
        return tmux("capture-pane", "-t", self.session, "-p")

    def footer(self) -> str:
        lines = [line for line in self.screen().splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def typing(self, message: str) -> None:
        """Wait until a text box has the keys: the footer shows only what a text box leaves to the screen. (Keys
        sent before the focus moves would go to the list: ``d`` there deletes, ``e`` edits.)"""
        wait_for(lambda: self.footer().split("▏")[0].strip() == "/ filter", timeout=15, interval=POLL, message=message)

    def keys(self, *keys: str) -> None:
        tmux("send-keys", "-t", self.session, *keys)

    def type(self, text: str) -> None:
        tmux("send-keys", "-t", self.session, "-l", text)

    def wait(self, *texts: str, gone: tuple[str, ...] = (), pattern: str | None = None, footer: str | None = None,
             timeout: float = 15, message: str = "") -> str:
        """Wait until the screen holds every one of ``texts`` (and ``pattern``, a regex), none of ``gone``, and the
        footer holds ``footer``; return that screen."""

        def shown() -> str | None:
            screen = self.screen()
            if not all(text in screen for text in texts) or any(text in screen for text in gone):
                return None
            if pattern is not None and not re.search(pattern, screen, re.MULTILINE):
                return None
            if footer is not None and footer not in self.footer():
                return None
            return screen or None

        try:
            return wait_for(shown, timeout=timeout, interval=POLL, message=message or f"{texts} on the screen")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nthe screen was:\n{self.screen()}") from None

    def selected(self, name: str, message: str = "") -> str:
        """Wait until ``name`` is the selected task: the editor beside the list shows it."""
        return self.wait(pattern=rf"╭─ {re.escape(name)} · code · ", message=message or f"the cursor on {name}")

    def listed(self, *names: str, title: str, message: str = "") -> None:
        """Wait until the list's title reads ``title`` and its rows are ``names``, in that order."""

        def rows() -> bool:
            screen = self.screen()
            shown = re.findall(r"^│ (\S.*?) +(?:code|api|reg) +(?:now|delay|cron) ", screen, re.MULTILINE)
            return f"╭─ {title} ─" in screen and shown == list(names)

        try:
            wait_for(rows, timeout=15, interval=POLL, message=message or f"{title}: {names}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nthe screen was:\n{self.screen()}") from None

    def row(self, name: str, cells: str, message: str = "") -> str:
        """Wait until the list's row of ``name`` reads ``cells`` (a regex over the cells after the name)."""
        return self.wait(pattern=rf"│ {re.escape(name)}\s+{cells}", message=message or f"{name}'s row: {cells}")


@pytest.fixture
def console(tmp_path) -> Iterator[tuple[Pane, dict[str, str]]]:
    """``taskman up`` in tmux; yields the pane and the environment another terminal would use."""
    session = f"taskman-readme-{uuid.uuid4().hex[:6]}"
    data = tmp_path / "data"
    env = _process_env({"TASKMAN_DATA_DIR": str(data), "TASKMAN_NAMESPACE": f"readme{uuid.uuid4().hex[:6]}",
                        "TASKMAN_CONFIG": str(tmp_path / "none.toml")})
    env.pop("TASKMAN_REDIS_URL", None)  # its own Redis
    passed = [arg for key, value in env.items() if key.startswith(("TASKMAN_", "PYTHON")) or key == "PATH"
              for arg in ("-e", f"{key}={value}")]
    # The tmux server may be older than this test and hold variables of its own: the command drops them. It
    # also exports a stale terminal size (as a shell's profile may): the console must take the pane's instead.
    command = (f"cd {ROOT} && env -u TASKMAN_REDIS_URL COLUMNS=80 LINES=24 TERM=xterm-256color "
               f"{sys.executable} -m tui.cli up; echo EXITED $?; sleep 60")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(WIDTH), "-y", str(HEIGHT), *passed,
                    command], check=True, timeout=10)
    pane_pid = int(tmux("display-message", "-p", "-t", session, "#{pane_pid}").strip() or 0)
    seen: dict[int, str] = {}
    try:
        yield Pane(session), env
    finally:
        seen.update(descendants(pane_pid) if pane_pid else {})
        tmux("kill-session", "-t", session)  # SIGHUP: `taskman up` stops its stack
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(pid, started) for pid, started in seen.items()):
            time.sleep(0.2)
        for pid, started in seen.items():
            if _alive(pid, started):
                os.kill(pid, signal.SIGKILL)


def submit(env: dict[str, str], specs: list[dict]) -> None:
    """``taskman submit -`` from another terminal: it finds the console's Redis through the data dir."""
    subprocess.run([sys.executable, "-m", "tui.cli", "submit", "-"], input=json.dumps(specs), text=True, env=env,
                   cwd=ROOT, check=True, capture_output=True, timeout=60)


def run_elsewhere(data_dir: Path, env: dict[str, str], name: str) -> None:
    """Run the task named ``name`` from another front end (the service ``taskman run`` calls), on the console's
    Redis (found through its data dir): its lines arrive unasked, and no notice of the console's own ``r``
    covers the log pane's corner, where they are counted, for the five seconds a notice stays."""
    from core.config import Settings
    from core.service import Service

    service = Service.from_settings(Settings(data_dir=data_dir, namespace=env["TASKMAN_NAMESPACE"]))
    service.acting_as("cli:readme-test").run_now(next(task.id for task in service.list_tasks(name=name)
                                                      if task.name == name))


def test_readme_console_keys_one_by_one(console, tmp_path):
    pane, env = console
    pane.wait("Tasks (0)", "No tasks yet. Press n to create one", timeout=60, message="the console, empty")
    # at the pane's 120 columns, not the COLUMNS=80 it was given: wide enough for the editor beside the list
    pane.wait(pattern=r"^╭─ Tasks \(0\) ─+╮╭─ editor ─+╮$", message="the console as wide as the pane")
    submit(env, TASKS)
    pane.listed("readme-later", "readme-cron", title="Tasks (2)", message="the submitted tasks, newest first")

    # n: the form; tab moves on to the code editor, where tab indents and esc moves on; ctrl+s creates it
    # and puts the cursor on it. Its run shows in LAST as ✔ and a duration.
    pane.keys("n")
    pane.wait("New task", "Name", footer="esc cancel", message="the new-task form")
    pane.type("readme-hello")
    pane.keys("Tab", "Tab")
    pane.wait(footer="esc next field", message="the code editor, its esc shown as 'next field'")
    pane.keys("Tab")
    pane.wait(pattern=r"1 {5,}def main\(\):", message="tab indenting in the code editor")
    pane.keys("C-z")
    pane.wait(pattern=r"1  def main\(\):", message="the indent undone")
    pane.keys("Escape")
    pane.wait(footer="esc cancel", message="esc leaving the code editor for the next field")
    pane.keys("C-s")
    pane.wait("Tasks (3)", gone=("New task",), message="the created task in the list")
    pane.selected("readme-hello", "the cursor on the created task")
    pane.row("readme-hello", r"code\s+now\s+done\s+–\s+✔ \d+(\.\d)? m?s\b", "its run in LAST: ✔ and a duration")
    pane.wait(pattern=r"readme-hello hello\s", message="its printed line in the log pane")

    # ↑/↓, j/k, g/G (home/end): move in the list, first / last task (newest first).
    for key, name in [("j", "readme-later"), ("G", "readme-cron"), ("k", "readme-later"), ("g", "readme-hello"),
                      ("End", "readme-cron"), ("Home", "readme-hello"), ("Down", "readme-later"),
                      ("Up", "readme-hello")]:
        pane.keys(key)
        pane.selected(name, f"{key} putting the cursor on {name}")

    # enter: the detail view (definition, run history, the selected run's result and output); esc comes back.
    pane.keys("Enter")
    screen = pane.wait("readme-hello · code · immediate", "runs (1)", "succeeded", "result:", "output:",
                       footer="esc back", message="the detail view")
    assert re.search(r"^│hello\s", screen, re.MULTILINE), screen
    pane.keys("Escape")
    pane.wait("Tasks (3)", footer="n new", message="back on the list")

    # r: run now; the cron task's LAST goes from – to ✔ with a duration, its printed line in the logs.
    pane.keys("G")
    pane.selected("readme-cron")
    pane.row("readme-cron", r"code\s+cron\s+active\s+Jan 01\s+–", "the cron task, never run")
    pane.keys("r")
    pane.row("readme-cron", r"code\s+cron\s+active\s+Jan 01\s+✔ \d+(\.\d)? m?s\b", "the run now in LAST")
    pane.wait(pattern=r"readme-cron nightly ran\s", message="its printed line in the log pane")

    # p: pause, then resume; s: stop, which pauses a cron task too (p resumes it).
    pane.keys("p")
    pane.row("readme-cron", r"code\s+cron\s+paused\s+–", "the task paused, nothing next")
    pane.keys("p")
    pane.row("readme-cron", r"code\s+cron\s+active\s+Jan 01", "the task resumed")
    pane.keys("s")
    pane.wait("stopped readme-cron", message="the stop's notice")
    pane.row("readme-cron", r"code\s+cron\s+paused\s+–", "the stopped cron task paused")
    pane.keys("p")
    pane.row("readme-cron", r"code\s+cron\s+active\s+Jan 01", "the task resumed again")

    # e: edit in place; esc discards at once and goes back to the list.
    pane.keys("e")
    pane.wait(footer="/ filter", gone=("n new",), message="the keys in the editor")
    pane.type("XYZZY")
    pane.wait(pattern=r"1  XYZZYdef nightly\(\):", message="the typed text in the editor")
    pane.keys("Escape")
    pane.wait("changes discarded", pattern=r"1  def nightly\(\):", gone=("XYZZY",), footer="n new",
              message="esc discarding the edit")
    pane.keys("k")
    pane.selected("readme-later", "k moving the list: the keys are back on it")
    pane.keys("j")
    pane.selected("readme-cron")

    # c: duplicate into the form; ctrl+s creates the copy and the cursor lands on it.
    pane.keys("c")
    pane.wait("New task (copy of readme-cron)", "readme-cron copy", "on cron", message="the form, filled in")
    pane.keys("C-s")
    pane.wait("Tasks (4)", gone=("New task",), message="the copy in the list")
    pane.selected("readme-cron copy", "the cursor on the copy")

    # d: delete asks first; n keeps the task, y deletes it.
    pane.keys("d")
    pane.wait("Delete readme-cron copy?", "Yes (y)", "No (n)", message="the question")
    pane.keys("n")
    pane.wait("Tasks (4)", gone=("Delete readme-cron copy?",), message="the task kept after 'n'")
    pane.keys("d")
    pane.wait("Delete readme-cron copy?", message="the question again")
    pane.keys("y")
    pane.wait(gone=("Delete readme-cron",), message="the question answered")
    pane.listed("readme-hello", "readme-later", "readme-cron", title="Tasks (3)", message="the copy deleted")

    # /: filter with README's words; the title counts what shows; enter keeps the filter, esc clears it.
    pane.keys("g")
    pane.selected("readme-hello")
    pane.keys("/")
    pane.wait("filter: words in names, state:failed", message="the filter box")
    pane.typing("the keys in the filter box")
    pane.type("mode:cron")
    pane.listed("readme-cron", title="Tasks (1/3)", message="mode:cron picking the cron task")
    pane.selected("readme-cron", "the cursor (and the editor) on the one task the filter shows")
    pane.keys(*["BSpace"] * len("mode:cron"))
    pane.listed("readme-hello", "readme-later", "readme-cron", title="Tasks (3)", message="the filter emptied")
    pane.type("last:succeeded")
    pane.listed("readme-hello", "readme-cron", title="Tasks (2/3)",
                message="last:succeeded picking the tasks whose last run succeeded")
    pane.keys("Enter")
    pane.wait("Tasks (2/3)", footer="n new", message="enter: the filter stays, the keys back on the list")
    pane.keys("Escape")
    pane.listed("readme-hello", "readme-later", "readme-cron", title="Tasks (3)", message="esc clearing the filter")

    # l / f: the selected task's logs or all; hold, lines wait (the corner counts them), follow shows them. The
    # lines come from a run started in another terminal.
    pane.keys("g")
    pane.selected("readme-hello")
    pane.keys("l")
    pane.wait("Logs · readme-hello (follow)", message="the logs of the selected task")
    pane.keys("f")
    pane.wait("Logs · readme-hello (held)", message="the log pane held")
    run_elsewhere(tmp_path / "data", env, "readme-hello")
    pane.wait(pattern=r"\d+ new lines? waiting, f shows them", message="lines waiting, counted in the corner")
    assert len(re.findall(r"succeeded in \d", pane.screen())) == 1, pane.screen()
    pane.keys("f")
    pane.wait("Logs · readme-hello (follow)", gone=("waiting, f shows",), message="following again")
    wait_for(lambda: len(re.findall(r"succeeded in \d", pane.screen())) == 2, timeout=10, interval=POLL,
             message="the lines that waited, shown")
    pane.keys("l")
    pane.wait("Logs · all (follow)", message="the logs of every task")

    # L: the keys go to the log pane: / finds (every match counted), enter jumps to the newest and holds,
    # N goes to the previous one, w wraps or not; esc comes back.
    pane.keys("L")
    pane.wait(footer="/ find", message="the log pane's keys")
    pane.keys("/")
    pane.wait("find in the log lines shown", message="the find box")
    pane.typing("the keys in the find box")
    pane.type("hello")
    pane.wait(pattern=r"“hello” \d+ ─", message="the matches counted")
    count = int(re.search(r"“hello” (\d+) ─", pane.screen()).group(1))  # type: ignore[union-attr]
    assert count >= 5, pane.screen()  # two runs' three lines each, the task's name in most
    pane.keys("Enter")
    pane.wait("Logs · all (held)", f"“hello” {count}/{count}", gone=("find in the log lines shown",),
              message="enter: the newest match, the pane held")
    pane.keys("N")
    pane.wait(f"“hello” {count - 1}/{count}", message="N: the previous match")
    pane.keys("w")
    pane.wait(f"“hello” {count - 1}/{count} · no wrap", message="w: long lines no longer wrapped")
    pane.keys("w")
    pane.wait(gone=("no wrap",), message="w: wrapped again")
    pane.keys("Escape")
    pane.wait(footer="n new", message="esc: the keys back on the list")
    pane.keys("j")
    pane.selected("readme-later", "the list taking keys again")

    # w: workers and queues, with the registered task names; esc back.
    pane.keys("w")
    pane.wait("Registered tasks", "taskman.echo", "Queues", "code@", "registered@", "http@",
              pattern=r"Workers \(3 up\)", footer="esc back", message="the workers view")
    pane.keys("Escape")
    pane.wait("Tasks (3)", footer="n new", message="back from the workers view")

    # ?: the keys of this screen, the list's among them; esc closes it.
    pane.keys("?")
    pane.wait("Keys — ctrl+p", "Create a task", "in the list", "Move down the list", message="the keys dialog")
    pane.keys("End")
    pane.wait("in the log pane", "Find text in the log lines shown", message="the log pane's keys, further down")
    pane.keys("Escape")
    pane.wait(pattern=r"^│ readme-hello +code", gone=("in the log pane", "Keys — ctrl+p"), message="the dialog closed")

    # q: quits the console and stops everything `taskman up` started.
    address = json.loads((tmp_path / "data" / "redis.json").read_text())
    pane_pid = int(tmux("display-message", "-p", "-t", pane.session, "#{pane_pid}").strip())
    stack = descendants(pane_pid)
    assert address["pid"] in stack, (address, stack)
    pane.keys("q")
    pane.wait("EXITED 0", timeout=40, message="a clean exit")
    wait_for(lambda: not any(_alive(pid, started) for pid, started in stack.items()), timeout=10,
             message="every process the console started ended")
    assert not (tmp_path / "data" / "redis.json").exists()
