"""Hostile data in the console (issue 9), under Pilot against the real stack and under tmux via ``taskman up``.

Names, descriptions, printed lines, results and errors carrying Rich markup or terminal control sequences
are shown as plain text with control characters made visible: in the list, the editor's title, the
log pane, the detail view, the confirm dialog, notifications, the audit trail and the copy form. What
is checked is what the console would write to the terminal (the compositor's segments). And an
unexpected error in a handler or a worker is shown while the console, and the stack, carry on.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from textual.widgets import DataTable

from core.text import json_text, one_line, visible
from tests.conftest import ROOT, _process_env, wait_for
from tests.tui.test_console import until as console_until
from tui.app import TaskmanApp
from tui.screens.audit import AuditScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.detail import DetailScreen
from tui.screens.main import MainScreen, TasksChanged
from tui.screens.new_task import NewTaskScreen
from tui.widgets.editor import EditorPane
from tui.widgets.log_pane import LogPane
from tui.widgets.task_table import TaskTable

SIZE = (200, 50)
FAR_DELAY = 30 * 24 * 3600
UNSAFE = [chr(code) for code in [*range(0x00, 0x09), *range(0x0b, 0x20), *range(0x7f, 0xa0)]] + ["\u202e"]
MARKUP_NAMES = ["weekly [/]", "[@click=app.screenshot()]x", "[bold red]loud[/] [link=file:///etc/passwd]l[/link]",
                "[b]unclosed", "close [/b] and [@click=app.quit]quit[/]"]


until = functools.partial(console_until, timeout=30.0)


def segments(app):
    """Every segment the console would write to the terminal for the current screen."""
    for strip in app.screen._compositor.render_strips():
        yield from strip


def screen_text(app) -> str:
    return "\n".join("".join(segment.text for segment in strip) for strip in app.screen._compositor.render_strips())


def assert_terminal_safe(app) -> None:
    """No raw control character in anything drawn, and no markup action (``@click``) attached to any cell."""
    for segment in segments(app):
        raw = [char for char in segment.text if char in UNSAFE]
        assert not raw, f"raw control characters {raw!r} drawn in {segment.text!r}"
        meta = segment.style.meta if segment.style is not None else {}
        assert not any("@click" in str(key) or "app." in str(value) for key, value in (meta or {}).items()), meta


async def select(pilot, task_id: str) -> None:
    screen = pilot.app.screen
    table = screen.query_one(TaskTable)
    await until(pilot, lambda: task_id in table.rows, message=f"{task_id} listed")
    table.move_cursor(row=table.get_row_index(task_id))
    await until(pilot, lambda: screen.query_one(EditorPane).current is not None
                and screen.query_one(EditorPane).current.id == task_id, message="the selection")


async def final(pilot, service, task_id: str):
    return await until(pilot, lambda: (runs := service.get(task_id, runs=1).runs) and runs[0].state.final and runs[0],
                       message=f"a final run of {task_id}")


def notified(app) -> list[str]:
    """The messages of the notifications shown so far; each must be plain text (never parsed as markup)."""
    notifications = list(app._notifications)
    assert not any(notification.markup for notification in notifications)
    return [notification.message for notification in notifications]


def assert_survived(app) -> None:
    assert app.is_running and app.return_code is None
    assert app.errors == [], "no unexpected error: " + "\n".join(app.errors)


async def test_markup_in_names_and_output_is_plain_text_everywhere(stack, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a screenshot taken by a clicked [@click=...] would land here
    tag = uuid.uuid4().hex[:6]
    tasks = []
    for name in MARKUP_NAMES:
        tasks.append(stack.create({
            "name": f"{name} {tag}", "description": f"desc {name}",
            "function_code": f"def f():\n    print({name!r})\n    print('[@click=app.quit]quit[/]')\n"
                             f"    return {{'name': {name!r}, 'markup': '[/]'}}",
            "function_name": "f"}))
    failing = stack.create({"name": f"fails [/] {tag}", "function_code":
                            "def f():\n    raise ValueError('[bold]no[/] [/] [@click=app.quit]x')",
                            "function_name": "f"})
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        screen = pilot.app.screen
        table = screen.query_one(TaskTable)
        for task in [*tasks, failing]:
            await final(pilot, stack, task.id)
            await until(pilot, lambda t=task: t.id in table.rows, message="listed")
            assert table.get_cell(task.id, "name").plain == task.name
        logs = screen.query_one(LogPane)
        await until(pilot, lambda: any(entry.get("msg") == "[@click=app.quit]quit[/]" for entry in logs.entries),
                    message="the printed markup in the log pane")
        for task in [*tasks, failing]:
            await select(pilot, task.id)
            await pilot.pause(0.2)
            text = screen_text(pilot.app)
            assert f"{task.name} · code · now" in text, "the editor's title shows the name as written"
            assert_terminal_safe(pilot.app)
        drawn = "\n".join("".join(segment.text for segment in line) for line in logs.lines)
        assert "[@click=app.quit]quit[/]" in drawn and MARKUP_NAMES[0] in drawn

        # Click where the [@click=app.screenshot()] name is drawn: nothing may happen.
        lines = screen_text(pilot.app).splitlines()
        row, line = next((index, line) for index, line in enumerate(lines) if "[@click=app.screenshot()]x" in line)
        await pilot.click(offset=(line.index("[@click") + 3, row))
        await pilot.pause(0.5)
        assert not list(tmp_path.iterdir()), "clicking a name must not run an action"

        for task in (tasks[0], tasks[1], failing):
            await select(pilot, task.id)
            await pilot.press("enter")
            detail = await until(pilot, lambda: isinstance(pilot.app.screen, DetailScreen) and pilot.app.screen)
            await until(pilot,
                        lambda task=task: "run " in screen_text(pilot.app) and task.name in screen_text(pilot.app),
                        message="the detail view")
            await until(pilot, lambda: "result:" in screen_text(pilot.app) or "error:" in screen_text(pilot.app),
                        message="the run's result")
            text = screen_text(pilot.app)
            assert f"desc {task.name.rsplit(' ', 1)[0]}" in text or task is failing
            assert "[/]" in text
            assert_terminal_safe(pilot.app)
            assert detail is pilot.app.screen
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="back")

        await select(pilot, tasks[0].id)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen), message="the confirm dialog")
        await pilot.pause(0.2)
        assert f"Delete {tasks[0].name}?" in screen_text(pilot.app)
        assert_terminal_safe(pilot.app)
        await pilot.press("n")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="the dialog to close")

        await pilot.press("r")
        await until(pilot, lambda: f"queued a run of {tasks[0].name}" in notified(pilot.app),
                    message="the notification, as written")
        await pilot.press("p")  # "runs once, now; there is no schedule to pause": a warning quoting the name
        await until(pilot, lambda: any(message.startswith(f"{tasks[0].name} runs once")
                                       for message in notified(pilot.app)), message="the warning")

        await pilot.press("c")
        await until(pilot, lambda: isinstance(pilot.app.screen, NewTaskScreen), message="the copy form")
        await until(pilot, lambda: f"New task (copy of {tasks[0].name})" in screen_text(pilot.app), message="title")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="back")

        await pilot.press("a")
        audit_screen = await until(pilot, lambda: isinstance(pilot.app.screen, AuditScreen) and pilot.app.screen,
                                   message="the audit trail")
        audit_table = audit_screen.query_one(DataTable)

        def audit_cells() -> list[str]:
            return [str(cell) for row in range(audit_table.row_count) for cell in audit_table.get_row_at(row)]

        try:
            await until(pilot, lambda: any("weekly [/]" in cell for cell in audit_cells()),
                        message="names in the audit details")
        except AssertionError as exc:  # say what the trail held, and any error the console survived
            raise AssertionError(f"{exc}; {audit_table.row_count} rows, first: {audit_cells()[:10]}; "
                                 f"errors: {pilot.app.errors[-2:]}; notified: {notified(pilot.app)[-3:]}") from None
        await pilot.pause(0.2)
        assert_terminal_safe(pilot.app)
        await pilot.press("escape")
        assert_survived(pilot.app)
    for task in [*tasks, failing]:
        stack.delete(task.id)
    created = stack.create({"name": f"after {tag}", "function_code": "def f():\n    return 1", "function_name": "f"})
    assert (await _final_plain(stack, created.id)).result == 1


async def _final_plain(service, task_id, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = service.get(task_id, runs=1).runs
        if runs and runs[0].state.final:
            return runs[0]
        time.sleep(0.1)
    raise AssertionError("no final run")


ESCAPES = ("\\x1b]52;c;cm0gLXJmIH4=\\x07 \\x1b]0;owned\\x07 \\x1b[2J \\x9b2J "
           "\\x1b]8;;http://127.0.0.1:9/\\x07link\\x1b]8;;\\x07 \\x7f \\u202e")


async def test_control_characters_are_made_visible_in_the_console(stack, http_server):
    tag = uuid.uuid4().hex[:6]
    loud = stack.create({"name": f"loud \u202e{tag}", "description": "line one\nline two\tcolumn",
                         "function_code": f'def f():\n    print("{ESCAPES}")\n    print("a\\rb")\n'
                                          f'    return {{"r": "{ESCAPES}"}}', "function_name": "f"})
    failing = stack.create({"name": f"fails {tag}", "function_code":
                            'def f():\n    raise ValueError("\\x1b[31mred\\x1b[0m\\n12:00:00.000 forged")',
                            "function_name": "f"})
    echoed = stack.create({"name": f"echo {tag}",
                           "api_url": f"{http_server.base_url}/get?q=%1B%5D0%3Bt%07%C2%9B&x=%E2%80%AE"})
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        screen = pilot.app.screen
        logs = screen.query_one(LogPane)
        for task in (loud, failing, echoed):
            await final(pilot, stack, task.id)
        await until(pilot, lambda: any("\x1b]52" in entry.get("msg", "") for entry in logs.entries),
                    message="the raw line in the log stream")
        await pilot.pause(0.3)
        drawn = "\n".join("".join(segment.text for segment in line) for line in logs.lines)
        assert "\\x1b]52;c;cm0gLXJmIH4=\\x07" in drawn and "\\x9b2J" in drawn and "a\\x0db" in drawn
        assert "\\n12:00:00.000 forged" in drawn, "an error's newline cannot forge a log line"
        assert not any(line.lstrip().startswith("12:00:00.000 forged") for line in drawn.splitlines())
        assert_terminal_safe(pilot.app)
        for task in (loud, failing, echoed):
            await select(pilot, task.id)
            await pilot.pause(0.2)
            assert_terminal_safe(pilot.app)
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(pilot.app.screen, DetailScreen), message="the detail view")
            await until(pilot, lambda: "result:" in screen_text(pilot.app) or "error:" in screen_text(pilot.app),
                        message="the run")
            await pilot.pause(0.2)
            text = screen_text(pilot.app)
            assert_terminal_safe(pilot.app)
            if task is loud:
                assert "\\x1b]52" in text and "\\u202e" in text and "line two" in text
            if task is echoed:
                assert "\\u001b]0;t" in text or "\\x1b]0;t" in text
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="back")
        assert_survived(pilot.app)
    for task in (loud, failing, echoed):
        stack.delete(task.id)


async def test_an_unexpected_error_is_shown_and_the_console_carries_on(stack):
    name = f"after-error-{uuid.uuid4().hex[:6]}"
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        screen = pilot.app.screen
        table = screen.query_one(TaskTable)
        box = screen.query_one("#list")
        await until(pilot, lambda: box.border_title and box.border_title.startswith("Tasks ("), message="list")
        screen.post_message(TasksChanged(None, None))  # a handler that raises: a bug, not an input error
        await until(pilot, lambda: any(message.startswith("TypeError") for message in notified(pilot.app)),
                    message="the error shown")
        assert pilot.app.is_running and len(pilot.app.errors) == 1 and "TypeError" in pilot.app.errors[0]
        def broken() -> None:
            raise LookupError("no_such_method")

        screen.call_service(broken)  # a thread worker that fails
        await until(pilot, lambda: any("no_such_method" in message for message in notified(pilot.app)),
                    message="the worker's error shown")
        task = stack.create({"name": name, "function_code": "def f():\n    return 1", "function_name": "f"})
        await until(pilot, lambda: task.id in table.rows, message="the list still follows the events")
        await until(pilot, lambda: table.tasks[task.id].last_run_state == "succeeded", message="and the runs")
        assert pilot.app.is_running and pilot.app.return_code is None
    stack.delete(task.id)


async def test_every_screens_worker_errors_reach_the_app(stack, tmp_path):
    """A bug in a worker of the detail view, the form, the audit trail or the import dialog is shown by the app's
    one handler (``TaskmanApp.report_error``), and the console carries on: Worker.StateChanged does not bubble,
    so a screen that did not handle it itself used to lose it."""
    import copy

    from tui.screens.import_file import ImportScreen

    task = stack.create({"name": f"worker-errors-{uuid.uuid4().hex[:6]}", "cron_expression": "0 0 1 1 *",
                         "function_code": "def f():\n    return 1", "function_name": "f"})
    broken = copy.copy(stack)

    def fails(what: str):
        def method(*args, **kwargs):
            raise LookupError(f"{what} broke")
        return method

    for method in ("get", "audit_entries", "registered_tasks", "create_many"):
        setattr(broken, method, fails(method))
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"name": "never", "function_code": "def f():\n    return 1",
                                     "function_name": "f"}))
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        app = pilot.app
        await until(pilot, lambda: isinstance(app.screen, MainScreen), message="the main screen")
        for screen, method in ((DetailScreen(broken, task.id), "get"), (AuditScreen(broken), "audit_entries"),
                               (NewTaskScreen(broken), "registered_tasks"), (ImportScreen(broken), "create_many")):
            await app.push_screen(screen)
            if isinstance(screen, ImportScreen):
                await pilot.pause()
                screen.load(str(spec_file))
            await until(pilot, lambda method=method: any(f"LookupError: {method} broke" in message
                                                          for message in notified(app)),
                        message=f"{type(screen).__name__}'s worker error shown")
            assert app.is_running and app.return_code is None
            app.pop_screen()
        assert len(app.errors) == 4
    stack.delete(task.id)


# -- the helper itself, on arbitrary Unicode --------------------------------------------------------

nasty_text = st.text(alphabet=st.one_of(st.characters(codec=None), st.sampled_from(UNSAFE + ["[", "]", "/", "@"]),
                                        st.sampled_from(["\u200f", "\u2028", "\U0001f600", "\u4e2d", "\ud800"])),
                     max_size=60)


@given(text=nasty_text)
def test_core_text_leaves_nothing_a_terminal_would_obey(text):
    for shown in (one_line(text), visible(text)):
        assert not any(char in UNSAFE or "\ud800" <= char <= "\udfff" for char in shown)
        shown.encode("utf-8")  # never a lone surrogate
    assert "\n" not in one_line(text)
    assert visible(text).count("\n") == text.count("\n")
    dumped = json_text({"k": text, "l": [text]})
    assert json.loads(dumped) == {"k": text, "l": [text]}, "json_text keeps the value"
    assert not any(char in UNSAFE or "\ud800" <= char <= "\udfff" for char in dumped)


@given(texts=st.lists(nasty_text, min_size=1, max_size=5))
def test_the_log_pane_and_list_render_any_text_as_one_plain_line(texts):
    from rich.console import Console

    from tui.safe import plain

    console = Console(width=80, record=True, force_terminal=True, color_system=None)
    pane = LogPane()
    for text in texts:
        line = pane._line({"ts": "0", "task": "t", "run": "r", "level": "print", "msg": text})
        assert "\n" not in line.plain and not any(char in UNSAFE for char in line.plain)
        cell = plain(text)
        assert cell.plain == one_line(text)
        console.print(cell)
    assert not any(char in UNSAFE for char in console.export_text())


# -- under tmux: `taskman up` with such names arriving while it runs ----------------------------------


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_taskman_up_shows_markup_names_and_keeps_running(tmp_path):
    session = f"taskman-hostile-{uuid.uuid4().hex[:6]}"
    env = _process_env({"TASKMAN_DATA_DIR": str(tmp_path / "data"), "TASKMAN_NAMESPACE": "tmux-hostile"})
    env.pop("TASKMAN_REDIS_URL", None)
    env["TERM"] = "xterm-256color"

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=10).stdout

    def screen() -> str:
        return tmux("capture-pane", "-t", session, "-p")

    command = f"cd {ROOT} && {sys.executable} -m tui.cli up; echo EXITED $?; sleep 30"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "32",
                    "-e", f"PATH={os.environ['PATH']}", *sum((["-e", f"{k}={v}"] for k, v in env.items()
                                                              if k.startswith(("TASKMAN_", "PYTHON"))), []),
                    command], check=True, timeout=10)
    try:
        wait_for(lambda: "Tasks (0)" in screen(), timeout=60, interval=0.3, message="the console")
        specs = [{"name": "weekly [/]", "function_code": "def f():\n    print('[/] printed')\n    return 1",
                  "function_name": "f"},
                 {"name": "[@click=app.screenshot()]x", "cron_expression": "0 0 1 1 *",
                  "task_name": "taskman.echo"}]
        done = subprocess.run([sys.executable, "-m", "tui.cli", "submit", "-"], input=json.dumps(specs),
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=30)
        assert done.returncode == 0, done.stderr
        try:
            wait_for(lambda: "weekly [/]" in screen() and "[@click=app.screenshot()]x" in screen()
                     and "[/] printed" in screen(), timeout=30, interval=0.3, message="the names, as written")
        except AssertionError:
            raise AssertionError(f"the screen was:\n{screen()}") from None
        tmux("send-keys", "-t", session, "Down")
        time.sleep(0.5)
        assert "EXITED" not in screen() and "Traceback" not in screen()
        listed = subprocess.run([sys.executable, "-m", "tui.cli", "list"], capture_output=True, text=True,
                                cwd=ROOT, env=env, timeout=30)
        assert listed.returncode == 0 and "weekly [/]" in listed.stdout, "the stack is up"
        tmux("send-keys", "-t", session, "q")
        wait_for(lambda: "EXITED 0" in screen(), timeout=40, interval=0.3, message="a clean exit")
    finally:
        tmux("kill-session", "-t", session)
