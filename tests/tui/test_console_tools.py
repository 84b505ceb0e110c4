"""The console's tools from issue 12, driven by keystrokes against real Redis, workers and scheduler:
the workers view, the log pane's find / wrap / save / copy / hold, running once with other arguments,
``?`` per screen and a palette without duplicates."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, TextArea

from tests.conftest import IDLE_RUN
from tests.tui.test_console import SIZE, _final, _text, cron_task, select_task, type_text, unique, until
from tui.app import TaskmanApp
from tui.screens.audit import AuditScreen
from tui.screens.detail import DetailScreen
from tui.screens.help import HelpScreen
from tui.screens.main import MainScreen
from tui.screens.new_task import NewTaskScreen
from tui.screens.run_with import RunWithScreen
from tui.screens.save_lines import SaveLinesScreen
from tui.screens.workers import WorkersScreen
from tui.widgets.log_pane import LogFind, LogPane

pytestmark = pytest.mark.usefixtures("stack")


def cells(table: DataTable, row: int) -> list[str]:
    return [str(cell) for cell in table.get_row_at(row)]


def column(table: DataTable, name: str) -> list[str]:
    return [str(table.get_cell_at((row, table.get_column_index(name)))) for row in range(table.row_count)]


def help_keys(screen: HelpScreen) -> dict[str, str]:
    table = screen.query_one("#keys", DataTable)
    return {str(row[0]): str(row[1]) for row in (table.get_row_at(i) for i in range(table.row_count))}


async def focus_logs(pilot, key: str = "L") -> LogPane:
    """Put the keys in the log pane, as a user would (``L``, or ``shift+tab`` from the list)."""
    logs = pilot.app.screen.query_one(LogPane)
    await pilot.press(key)
    await until(pilot, lambda: logs.has_focus, message=f"{key} to focus the log pane")
    return logs


async def task_with_lines(stack, pilot, lines: list[str]) -> LogPane:
    """A task that printed ``lines``, selected, its logs scoped to it and every line in the pane."""
    name = unique("printer")
    body = "\n".join(f"    print({line!r})" for line in lines)
    task = stack.create({"name": name, "function_name": "f", "function_code": f"def f():\n{body}\n    return 1"})
    await _final(stack, task.id)
    await select_task(pilot, name)
    logs = pilot.app.screen.query_one(LogPane)
    await pilot.press("l")
    await until(pilot, lambda: sum(entry.get("level") == "print" for entry in logs.shown) == len(lines),
                message="the printed lines in the pane")
    return logs


# -- the workers view -------------------------------------------------------------------------------


async def test_w_opens_the_workers_view_with_pools_heartbeats_walls_queues_and_names(stack):
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        await pilot.press("w")
        screen = await until(pilot, lambda: isinstance(pilot.app.screen, WorkersScreen) and pilot.app.screen)
        workers, queues = screen.query_one("#workers", DataTable), screen.query_one("#queues", DataTable)
        registered = screen.query_one("#registered", DataTable)
        await until(pilot, lambda: {"prefork", "threads"} <= set(column(workers, "pool")), message="both pools")
        names = column(workers, "worker")
        code, http = names.index(next(n for n in names if n.startswith("code@"))), \
            names.index(next(n for n in names if n.startswith("http@")))
        assert cells(workers, code)[1:4] == ["prefork", "2", cells(workers, code)[3]]
        assert cells(workers, http)[2] == "8"
        assert re.fullmatch(r"\d+ s ago|just now", column(workers, "heartbeat")[code]), column(workers, "heartbeat")
        assert column(workers, "walls")[code].startswith("all ") and column(workers, "walls")[http] == "no code runs"
        assert {"code", "http", "registered"} <= set(column(queues, "queue"))
        assert {"ops.add", "taskman.echo"} <= set(column(registered, "name"))
        assert str(workers.border_title).startswith("Workers (2 up")
        await pilot.press("question_mark")
        keys = help_keys(await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen) and pilot.app.screen))
        assert {"esc / q", "r", "?"} <= set(keys) and "n" not in keys, keys
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, WorkersScreen), message="back to the view")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="back to the list")


async def test_the_workers_view_follows_a_run_and_names_each_wall_when_wide(stack):
    task = stack.create(cron_task(unique("busy"), IDLE_RUN, timeout=60))
    async with TaskmanApp(stack).run_test(size=(200, 50)) as pilot:
        await pilot.press("w")
        screen = await until(pilot, lambda: isinstance(pilot.app.screen, WorkersScreen) and pilot.app.screen)
        workers = screen.query_one("#workers", DataTable)
        await until(pilot, lambda: any(n.startswith("code@") for n in column(workers, "worker")), message="rows")
        assert "host" in [str(key.value) for key in workers.columns]
        row = next(i for i, n in enumerate(column(workers, "worker")) if n.startswith("code@"))
        assert "✔landlock" in column(workers, "walls")[row] and "✔seccomp" in column(workers, "walls")[row]
        stack.run_now(task.id)
        await until(pilot, lambda: column(workers, "active")[row] == "1", message="the run counted as active")
        stack.stop(task.id)
        await until(pilot, lambda: column(workers, "active")[row] == "0", message="and no longer")


async def test_the_workers_view_says_when_redis_is_away_and_reads_again_when_it_is_back(settings, tmp_path):
    from core.embedded import RedisServer
    from core.service import Service

    first = RedisServer(tmp_path / "redis", appendonly=True).start()
    service = Service.from_settings(settings.replace(redis_url=first.url, namespace="wdown"))
    second = None
    try:
        async with TaskmanApp(service).run_test(size=SIZE) as pilot:
            await pilot.press("w")
            screen = await until(pilot, lambda: isinstance(pilot.app.screen, WorkersScreen) and pilot.app.screen)
            banner, queues = screen.query_one("#workers-banner"), screen.query_one("#queues", DataTable)
            await until(pilot, lambda: queues.row_count == 3, message="the queues")
            first.stop()
            await until(pilot, lambda: banner.display and "reading again" in str(banner.render()), timeout=15,
                        message="the banner")
            second = RedisServer(tmp_path / "redis", appendonly=True, port=first.port).start()
            await until(pilot, lambda: not banner.display, timeout=20, message="the banner to go")
    finally:
        first.stop()
        if second is not None:
            second.stop()


# -- the log pane -----------------------------------------------------------------------------------


async def test_find_highlights_every_match_jumps_with_n_and_shift_n_and_holds_the_pane(stack):
    needle = f"needle{uuid.uuid4().hex[:6]}"
    lines = [needle if i in (5, 20, 35) else f"hay {i}" for i in range(60)]
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        logs = await task_with_lines(stack, pilot, lines)
        await focus_logs(pilot)
        await pilot.press("n")  # nothing is being found: n is the list's "new task"
        await until(pilot, lambda: isinstance(pilot.app.screen, NewTaskScreen), message="n to make a task")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="back")
        await focus_logs(pilot)
        await pilot.press("slash")
        box = await until(pilot, lambda: next(iter(pilot.app.screen.query(LogFind)), None), message="the box")
        assert box.has_focus
        await type_text(pilot, needle.upper())  # any case
        await until(pilot, lambda: len(logs.matches) == 3, message="three matches highlighted")
        highlighted = [i for i, line in enumerate(logs.lines) if any(s.style and s.style.reverse for s in line)]
        assert len(highlighted) == 3
        await pilot.press("enter")
        assert logs.has_focus and not box.display and logs.current == 2 and not logs.following
        assert "3/3" in str(logs.border_subtitle) and "held" in str(logs.border_title)

        def in_view() -> bool:
            line = logs.starts[logs.matches[logs.current]]
            return logs.scroll_y <= line < logs.scroll_y + logs.scrollable_content_region.height

        assert in_view()
        await pilot.press("N")
        assert logs.current == 1 and "2/3" in str(logs.border_subtitle) and in_view()
        await pilot.press("N", "N")
        assert logs.current == 2 and in_view(), "N wraps round to the newest"
        await pilot.press("n")
        assert logs.current == 0 and in_view(), "n wraps round to the oldest"
        await pilot.press("slash")
        await pilot.press("escape")  # esc closes the find box only: the list's filter stays
        assert not box.display and logs.query_text == needle.upper()
        assert isinstance(pilot.app.screen, MainScreen) and pilot.app.screen.table.row_count == 1


async def test_held_lines_wait_and_all_appear_when_follow_resumes(stack):
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        logs = await task_with_lines(stack, pilot, ["before"])
        task_id = logs.scope
        await pilot.press("f")
        assert not logs.following and "held" in str(logs.border_title)
        shown_before = list(logs.shown)
        run = stack.run_now(task_id)
        await until(pilot, lambda: sum(e.get("run") == run.id for e in logs.waiting) >= 3, message="lines waiting")
        await until(pilot, lambda: stack.get_run(run.id).state.final, message="the run to end")
        await until(pilot, lambda: "waiting" in str(logs.border_subtitle), message="the pane to say lines wait")
        assert logs.shown == shown_before, "a held pane shows nothing new"
        waiting = [entry for entry in logs.waiting if entry.get("task") == task_id]
        await pilot.press("f")
        assert logs.following and "follow" in str(logs.border_title) and not logs.waiting
        assert logs.shown[-len(waiting):] == waiting, "every line that waited is shown, in order"
        assert logs.scroll_y == logs.max_scroll_y


async def test_a_flood_while_held_is_kept_and_shown_in_order_when_follow_resumes(stack):
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        logs = await task_with_lines(stack, pilot, ["before"])
        await pilot.press("f")
        task = stack.get(logs.scope or "")
        stack.update(task.id, {"function_code": "def f():\n    for i in range(1500):\n        print('flood', i)"})
        run = stack.run_now(task.id)
        await until(pilot, lambda: sum(e.get("run") == run.id and e.get("level") == "print"
                                       for e in logs.waiting) == 1500, message="the flood waiting")
        await until(pilot, lambda: any(e.get("run") == run.id and "succeeded" in e.get("msg", "")
                                       for e in logs.waiting), message="the run's last line waiting")
        waiting = sum(e.get("task") == task.id for e in logs.waiting)
        assert waiting >= 1502 and f"{waiting} new lines waiting" in str(logs.border_subtitle)
        await pilot.press("f")
        printed = [e["msg"] for e in logs.shown if e.get("run") == run.id and e.get("level") == "print"]
        assert printed == [f"flood {i}" for i in range(1500)]
        assert logs.scroll_y == logs.max_scroll_y


async def test_w_in_the_log_pane_toggles_wrapping(stack):
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        logs = await task_with_lines(stack, pilot, ["x" * 300])
        await focus_logs(pilot, "shift+tab")
        wrapped = len(logs.lines)
        assert logs.wrap and wrapped > len(logs.shown)
        await pilot.press("w")
        assert not logs.wrap and len(logs.lines) == len(logs.shown) and "no wrap" in str(logs.border_subtitle)
        await pilot.press("w")
        assert logs.wrap and len(logs.lines) == wrapped


async def test_shift_s_saves_the_lines_shown_where_asked_and_says_where(stack, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        logs = await task_with_lines(stack, pilot, ["saved line one", "saved line two"])
        await focus_logs(pilot)
        await pilot.press("S")
        dialog = await until(pilot, lambda: isinstance(pilot.app.screen, SaveLinesScreen) and pilot.app.screen)
        box = dialog.query_one("#save-path", Input)
        assert box.value.startswith("taskman-logs-printer-") and box.value.endswith(".txt")
        name = box.value
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="the dialog to close")
        saved = tmp_path / name
        assert saved.read_text().splitlines() == logs.lines_shown()
        assert any("saved line two" in line for line in saved.read_text().splitlines())
        assert any(str(saved) in str(n.message) for n in pilot.app._notifications), "it says where, in full"
        await pilot.press("S")
        dialog = await until(pilot, lambda: isinstance(pilot.app.screen, SaveLinesScreen) and pilot.app.screen)
        box = dialog.query_one("#save-path", Input)
        box.value = name
        await pilot.press("enter")
        error = dialog.query_one("#save-error")
        await until(pilot, lambda: "exists already" in str(error.render()), message="no overwrite")
        box.value = "no-such-dir/x.txt"
        await pilot.press("enter")
        await until(pilot, lambda: "cannot write" in str(error.render()), message="the OS's refusal")
        box.value = str(tmp_path / "elsewhere.txt")
        await pilot.press("enter")
        await until(pilot, lambda: (tmp_path / "elsewhere.txt").exists(), message="a path asked for")


async def test_y_copies_a_log_line_and_the_detail_view_copies_a_result(stack):
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        logs = await task_with_lines(stack, pilot, ["copy me"])
        await until(pilot, lambda: "succeeded" in logs.lines_shown()[-1], message="the run's last line")
        await focus_logs(pilot)
        await pilot.press("y")
        assert pilot.app.clipboard == logs.lines_shown()[-1]
        await pilot.press("slash")
        await type_text(pilot, "copy me")
        await pilot.press("enter")
        await pilot.press("y")
        assert pilot.app.clipboard.endswith("copy me")
        await pilot.press("shift+tab")
        await until(pilot, lambda: not logs.has_focus, message="focus off the pane")
        pilot.app.screen.table.focus()
        await pilot.press("enter")
        detail = await until(pilot, lambda: isinstance(pilot.app.screen, DetailScreen) and pilot.app.screen)
        await until(pilot, lambda: detail.runs, message="the runs")
        await pilot.press("y")
        assert pilot.app.clipboard == "1"


# -- run once with other arguments ------------------------------------------------------------------


async def test_shift_r_runs_once_with_other_arguments_refusing_in_place(stack):
    name = unique("run-with")
    task = stack.create({"name": name, "cron_expression": "0 0 1 1 *", "function_name": "f", "args": [2],
                         "function_code": "def f(x=1, y=0):\n    return {'x': x, 'y': y}"})
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        await select_task(pilot, name)
        await pilot.press("R")
        dialog = await until(pilot, lambda: isinstance(pilot.app.screen, RunWithScreen) and pilot.app.screen)
        args, kwargs = dialog.query_one("#args", Input), dialog.query_one("#kwargs", Input)
        assert (args.value, kwargs.value) == ("[2]", "{}") and args.has_focus
        error = dialog.query_one("#run-error")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "nothing differs" in str(error.render()), message="nothing to change")
        args.value = "[5,"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "args" in str(error.render()) and "JSON" in str(error.render()), message="JSON")
        args.value = '{"x": 5}'
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "JSON array" in str(error.render()), message="the service's refusal")
        assert args.has_focus and stack.runs(task.id) == []
        args.value = "[5]"
        kwargs.value = '{"y": 7}'
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="the dialog to close")
        run = await _final(stack, task.id)
        assert run.result == {"x": 5, "y": 7} and run.overrides == {"args": [5], "kwargs": {"y": 7}}
        await pilot.press("enter")
        detail = await until(pilot, lambda: isinstance(pilot.app.screen, DetailScreen) and pilot.app.screen)
        view = detail.query_one("#run-view")
        await until(pilot, lambda: 'run with: {"args": [5], "kwargs": {"y": 7}}' in _text(view),
                    message="the detail view to say what the run was given")
    assert stack.get(task.id).spec.args == [2]


async def test_shift_r_on_an_api_task_sends_another_body(stack, http_server):
    name = unique("body-with")
    task = stack.create({"name": name, "cron_expression": "0 0 1 1 *", "method": "POST",
                         "api_url": f"{http_server.base_url}/post", "json": {"from": "the task"}})
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        await select_task(pilot, name)
        await pilot.press("R")
        dialog = await until(pilot, lambda: isinstance(pilot.app.screen, RunWithScreen) and pilot.app.screen)
        body = dialog.query_one("#body", TextArea)
        assert '"from": "the task"' in body.text
        body.load_text('{"from": "the dialog"}')
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="the dialog to close")
    run = await _final(stack, task.id)
    assert run.result["body"]["json"] == {"from": "the dialog"}


# -- ? per screen, the palette ----------------------------------------------------------------------


async def test_question_mark_lists_the_keys_of_the_screen_you_are_on(stack):
    name = unique("keys-here")
    stack.create(cron_task(name))
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        await select_task(pilot, name)
        await pilot.press("question_mark")
        keys = help_keys(await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen) and pilot.app.screen))
        assert {"n", "R", "w", "L", "/", "N", "S", "y"} <= set(keys)
        assert "in the log pane (L puts the keys there)" in keys
        await pilot.press("escape")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, DetailScreen), message="the detail view")
        await pilot.press("question_mark")
        keys = help_keys(await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen) and pilot.app.screen))
        assert {"esc / q", "r", "y", "?"} <= set(keys) and "n" not in keys and "w" not in keys, keys
        await pilot.press("escape", "escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="back")
        await pilot.press("a")
        await until(pilot, lambda: isinstance(pilot.app.screen, AuditScreen), message="the audit trail")
        await pilot.press("question_mark")
        keys = help_keys(await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen) and pilot.app.screen))
        assert {"esc / q", "r", "?"} <= set(keys) and "y" not in keys, keys
        await pilot.press("escape", "escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="back to the list")
        await pilot.press("n")
        form = await until(pilot, lambda: isinstance(pilot.app.screen, NewTaskScreen) and pilot.app.screen)
        form.query_one("#name", Input).focus()
        await pilot.press("question_mark")
        assert form.query_one("#name", Input).value.endswith("?"), "in a form ? is text"
        await pilot.press("f1")
        keys = help_keys(await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen) and pilot.app.screen))
        assert {"ctrl+s", "esc"} <= set(keys) and "w" not in keys, keys


async def test_the_palette_has_each_command_once(stack):
    app = TaskmanApp(stack)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="the main screen")
        titles = [command.title for command in app.get_system_commands(pilot.app.screen)]
        assert len(titles) == len(set(titles)), sorted(titles)
        assert {"Keys", "Quit", "Workers", "Run with…", "Theme"} <= set(titles)
        keys = next(c for c in app.get_system_commands(pilot.app.screen) if c.title == "Keys")
        keys.callback()
        await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen), message="our keys screen")


def test_saved_file_names_are_plain(tmp_path):
    from datetime import datetime

    from tui.screens.save_lines import default_name, where

    assert default_name("日报 / ../x", datetime(2026, 1, 2, 3, 4, 5)) == "taskman-logs-x-20260102-030405.txt"
    assert default_name("all", datetime(2026, 1, 2, 3, 4, 5)) == "taskman-logs-all-20260102-030405.txt"
    assert where("a/b.txt", tmp_path) == tmp_path / "a" / "b.txt" and where("/x/y").is_absolute()
    assert where("~/z.txt") == Path.home() / "z.txt"
