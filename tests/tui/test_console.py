"""The console driven by keystrokes (Textual's Pilot) against real Redis, workers and scheduler."""

from __future__ import annotations

import time

import pytest
from textual import events
from textual.widgets import DataTable, Input, Select, Static, TextArea

from core.errors import NotFound
from core.models import RunState
from tests.conftest import IDLE_RUN
from tui.app import TaskmanApp
from tui.screens.confirm import ConfirmScreen
from tui.screens.detail import DetailScreen
from tui.screens.help import HelpScreen
from tui.screens.main import MainScreen
from tui.screens.new_task import NewTaskScreen
from tui.widgets.editor import EditorPane
from tui.widgets.log_pane import LogPane
from tui.widgets.task_table import TaskTable

pytestmark = pytest.mark.usefixtures("stack")
SIZE = (120, 40)
FAR_CRON = "0 0 1 1 *"


async def until(pilot, predicate, timeout: float = 20.0, message: str = "condition"):
    """Let the app run until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {message}")


def unique(prefix: str) -> str:
    return f"{prefix}-{time.time_ns() % 10**9}"


async def select_task(pilot, name: str) -> None:
    """Filter the list down to ``name`` and put the cursor on it, the way a user would."""
    screen = pilot.app.screen
    await until(pilot, lambda: any(t.name == name for t in screen.table.tasks.values()), message=f"{name} listed")
    await pilot.press("slash")
    await type_text(pilot, name)
    await pilot.press("enter")
    await until(pilot, lambda: screen.table.selected and screen.table.selected.name == name, message="selection")


async def test_lists_tasks_and_shows_the_selected_code(stack):
    name = unique("listed")
    stack.create({"name": name, "cron_expression": FAR_CRON, "function_code": "def f():\n    return 'x'",
                  "function_name": "f"})
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        await select_task(pilot, name)
        editor = pilot.app.screen.query_one(EditorPane)
        await until(pilot, lambda: "return 'x'" in editor.area.text, message="the code in the editor")
        assert name in editor.border_title


async def test_new_code_task_through_the_form_runs_and_its_logs_arrive(stack):
    name = unique("form-code")
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        await pilot.press("n")
        form = await until(pilot, lambda: isinstance(pilot.app.screen, NewTaskScreen) and pilot.app.screen)
        await pilot.pause()
        for char in name:
            await pilot.press(char)
        code = form.query_one("#code", TextArea)
        code.load_text("def main():\n    print('from the form')\n    return 6 * 7\n")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="the form to close")
        task = next(t for t in stack.list_tasks(name=name))
        run = await until(pilot, lambda: (r := stack.get(task.id).runs) and r[0].state.final and r[0])
        assert run.result == 42
        logs = pilot.app.screen.query_one(LogPane)
        await until(pilot, lambda: any(e.get("msg") == "from the form" for e in logs.entries),
                    message="the worker's print in the log pane")
        table = pilot.app.screen.query_one(TaskTable)
        await until(pilot, lambda: table.tasks[task.id].last_run_state == "succeeded",
                    message="the list to show the result")


async def test_the_forms_task_never_hides_a_fresher_one_the_events_brought(stack):
    """The form's create returns the task as it was created; its run may start and end before the form's
    screen closes, and the events feed then has the fresher task already. Handing the form's copy to the
    list afterwards must not take the list back to "no run yet" (nothing would correct it later)."""
    import copy

    name = unique("form-race")
    created = stack.create({"name": name, "function_code": "def f():\n    return 1", "function_name": "f"})
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        screen = pilot.app.screen
        table = screen.query_one(TaskTable)
        await until(pilot, lambda: created.id in table.tasks and table.tasks[created.id].last_run_state == "succeeded",
                    message="the run's end in the list")
        stale = copy.copy(created)
        assert stale.last_run_state is None
        screen._created(stale)
        await pilot.pause()
        assert table.tasks[created.id].last_run_state == "succeeded"
        assert table.selected is not None and table.selected.id == created.id


async def test_new_api_and_registered_tasks_through_the_form(stack, http_server):
    api_name, reg_name = unique("form-api"), unique("form-reg")
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        await pilot.press("n")
        form = await until(pilot, lambda: isinstance(pilot.app.screen, NewTaskScreen) and pilot.app.screen)
        form.query_one("#kind", Select).value = "api"
        form.query_one("#name", Input).value = api_name
        form.query_one("#url", Input).value = f"{http_server.base_url}/post"
        form.query_one("#method", Select).value = "POST"
        form.query_one("#body", TextArea).load_text('{"hello": "form"}')
        await pilot.pause()
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="the form to close")

        await pilot.press("n")
        form = await until(pilot, lambda: isinstance(pilot.app.screen, NewTaskScreen) and pilot.app.screen)
        form.query_one("#kind", Select).value = "registered"
        form.query_one("#name", Input).value = reg_name
        select = form.query_one("#task-name", Select)
        await until(pilot, lambda: any(value == "ops.add" for _, value in select._options), message="names")
        select.value = "ops.add"
        form.query_one("#args", Input).value = "[20, 22]"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="the form to close")

    api = stack.list_tasks(name=api_name)[0]
    reg = stack.list_tasks(name=reg_name)[0]
    api_run = await _final(stack, api.id)
    assert api_run.result["body"]["json"] == {"hello": "form"}
    assert (await _final(stack, reg.id)).result == 42


async def _final(service, task_id, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = service.get(task_id).runs
        if runs and runs[0].state.final:
            return runs[0]
        time.sleep(0.05)
    raise AssertionError("no final run")


async def test_form_refuses_bad_input_in_place_and_previews_cron(stack):
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        await pilot.press("n")
        form = await until(pilot, lambda: isinstance(pilot.app.screen, NewTaskScreen) and pilot.app.screen)
        form.query_one("#mode", Select).value = "scheduled"
        cron = form.query_one("#cron", Input)
        cron.value = "0 0 30 2 *"
        preview = form.query_one("#cron-preview", Static)
        await until(pilot, lambda: "never" in str(preview.render()), message="the never-fires refusal")
        cron.value = "0 9 * * 1-5"
        form.query_one("#timezone", Input).value = "Europe/Berlin"
        await until(pilot, lambda: str(preview.render()).startswith("next:"), message="a preview")
        assert str(preview.render()).count(":00") >= 5
        before = stack.store.count_tasks()
        form.query_one("#name", Input).value = unique("bad")
        form.query_one("#code", TextArea).load_text("def main(:\n    pass")
        await pilot.press("ctrl+s")
        error = form.query_one("#form-error", Static)
        await until(pilot, lambda: "function_code" in str(error.render()), message="the refusal")
        assert isinstance(pilot.app.screen, NewTaskScreen)
        assert stack.store.count_tasks() == before


async def test_edit_and_save_code_with_validation_in_place(stack):
    name = unique("editable")
    task = stack.create({"name": name, "cron_expression": FAR_CRON,
                         "function_code": "def f():\n    return 'old'", "function_name": "f"})
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        await select_task(pilot, name)
        editor = pilot.app.screen.query_one(EditorPane)
        await pilot.press("e")
        assert editor.area.has_focus
        editor.area.load_text("def f(:\n    return 'broken'")
        await pilot.press("ctrl+s")
        hint = editor.query_one("#hint", Static)
        await until(pilot, lambda: "function_code" in str(hint.render()), message="the refusal in place")
        assert stack.get(task.id).spec.function_code.endswith("'old'")
        editor.area.load_text("def f():\n    return 'new'")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: stack.get(task.id).spec.function_code.endswith("'new'"), message="the save")
        await until(pilot, lambda: "saved" in str(hint.render()), message="the saved hint")


async def test_run_stop_pause_resume_delete_and_filter(stack):
    name = unique("actions")
    task = stack.create({"name": name, "cron_expression": FAR_CRON, "timeout": 30,
                         "function_code": f"def f():\n    {IDLE_RUN}", "function_name": "f"})
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        await select_task(pilot, name)
        table = pilot.app.screen.query_one(TaskTable)
        assert table.row_count == 1, "the filter leaves only the matching task"
        await pilot.press("r")
        await until(pilot, lambda: (r := stack.get(task.id).runs) and r[0].state is RunState.RUNNING,
                    message="the run to start")
        await pilot.press("s")
        await until(pilot, lambda: stack.get(task.id).runs[0].state is RunState.STOPPED, message="stopped")
        await until(pilot, lambda: table.tasks[task.id].state.value == "paused", message="the list to say paused")
        await pilot.press("p")
        await until(pilot, lambda: stack.get(task.id).state.value == "active", message="resumed")
        await pilot.press("p")
        await until(pilot, lambda: stack.get(task.id).state.value == "paused", message="paused")
        await pilot.press("d")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen), message="the question")
        await pilot.press("n")
        await pilot.pause(0.3)
        assert stack.get(task.id)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen), message="the question")
        await pilot.press("y")

        def deleted():
            try:
                stack.get(task.id)
            except NotFound:
                return True
            return False

        await until(pilot, deleted, message="the delete")
        await until(pilot, lambda: task.id not in table.tasks, message="the row to go")


async def test_detail_view_shows_runs_output_and_traceback(stack):
    name = unique("detailed")
    task = stack.create({"name": name,
                         "function_code": "def f():\n    print('look here')\n    raise ValueError('nope')",
                         "function_name": "f"})
    await _final(stack, task.id)
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        await select_task(pilot, name)
        await pilot.press("enter")
        screen = await until(pilot, lambda: isinstance(pilot.app.screen, DetailScreen) and pilot.app.screen)
        runs = screen.query_one("#runs", DataTable)
        await until(pilot, lambda: runs.row_count == 1, message="the run in the history")
        view = screen.query_one("#run-view", Static)
        await until(pilot, lambda: "look here" in _text(view), message="the output")
        assert "ValueError: nope" in _text(view) and "traceback" in _text(view)
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="back")


def _text(widget: Static) -> str:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(widget.content)
    return console.export_text()


async def test_help_lists_every_key_and_log_scope_toggles(stack):
    name = unique("scoped")
    task = stack.create({"name": name, "function_code": "def f():\n    print('scoped line')\n    return 1",
                         "function_name": "f"})
    await _final(stack, task.id)
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        await select_task(pilot, name)
        logs = pilot.app.screen.query_one(LogPane)
        await pilot.press("l")
        assert logs.scope == task.id and name in logs.border_title
        await pilot.press("l")
        assert logs.scope is None
        await pilot.press("f")
        assert logs.following is False and "held" in logs.border_title
        await pilot.press("question_mark")
        help_screen = await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen) and pilot.app.screen)
        keys = help_screen.query_one("#keys", DataTable)
        assert keys.row_count >= 15
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="back")


async def test_a_banner_while_redis_is_down_and_recovery_by_itself(settings, tmp_path):
    from core.embedded import RedisServer
    from core.service import Service

    first = RedisServer(tmp_path / "redis", appendonly=True).start()
    port = first.port
    service = Service.from_settings(settings.replace(redis_url=first.url, namespace="down"))
    service.create({"name": "survives", "cron_expression": FAR_CRON, "function_code": "def f():\n    return 1",
                    "function_name": "f"})
    second = None
    try:
        async with TaskmanApp(service).run_test(size=SIZE) as pilot:
            screen = pilot.app.screen
            banner = screen.query_one("#banner", Static)
            await until(pilot, lambda: screen.table.row_count == 1, message="the task")
            first.stop()
            await until(pilot, lambda: banner.display and "unreachable" in str(banner.render()), timeout=15,
                        message="the banner")
            second = RedisServer(tmp_path / "redis", appendonly=True, port=port).start()
            await until(pilot, lambda: not banner.display, timeout=20, message="the banner to go")
            service.create({"name": "after-outage", "cron_expression": FAR_CRON,
                            "function_code": "def f():\n    return 1", "function_name": "f"})
            await until(pilot, lambda: screen.table.row_count == 2, timeout=20, message="live updates again")
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def test_edit_an_api_request_keeps_masked_secrets(stack, http_server):
    name = unique("api-edit")
    task = stack.create({"name": name, "api_url": f"{http_server.base_url}/get", "cron_expression": FAR_CRON,
                         "headers": {"Authorization": "Bearer s3cret", "X-Trace": "1"}})
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        await select_task(pilot, name)
        editor = pilot.app.screen.query_one(EditorPane)
        await until(pilot, lambda: editor.area.text.startswith("GET "), message="the request")
        assert "Authorization: Bearer ***" in editor.area.text and "s3cret" not in editor.area.text
        editor.area.load_text(editor.area.text.replace("GET ", "POST ").replace("/get", "/post")
                              + '\n\n{"edited": true}')
        await pilot.press("ctrl+s")
        await until(pilot, lambda: stack.get(task.id).spec.method == "POST", message="the save")
    spec = stack.get(task.id).spec
    assert spec.api_url.endswith("/post") and spec.json_body == {"edited": True}
    assert spec.headers == {"Authorization": "Bearer s3cret", "X-Trace": "1"}
    stack.run_now(task.id)
    run = await _final(stack, task.id)
    assert run.result["body"]["json"] == {"edited": True}
    sent = [r for r in http_server.requests if r["path"] == "/post" and "edited" in r["body"]]
    assert sent and sent[-1]["headers"]["Authorization"] == "Bearer s3cret"


async def test_palette_offers_every_action_and_no_color_works(stack, monkeypatch):
    from tui.actions import ACTIONS

    monkeypatch.setenv("NO_COLOR", "1")
    app = TaskmanApp(stack)
    assert app.no_color
    name = unique("palette")
    task = stack.create({"name": name, "cron_expression": FAR_CRON, "function_code": "def f():\n    return 1",
                         "function_name": "f"})
    async with app.run_test(size=(80, 24)) as pilot:
        await select_task(pilot, name)
        titles = {command.title for command in app.get_system_commands(pilot.app.screen)}
        assert {action.label.capitalize() for action in ACTIONS} <= titles
        run = next(c for c in app.get_system_commands(pilot.app.screen) if c.title == "Run")
        run.callback()
        await until(pilot, lambda: stack.get(task.id).runs, message="a run queued from the palette")


async def test_status_line_reads_workers_queue_and_due_set(stack):
    stack.create({"name": unique("due"), "cron_expression": FAR_CRON, "function_code": "def f():\n    return 1",
                  "function_name": "f"})
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        facts = pilot.app.screen.query_one("#facts", Static)
        text = await until(pilot, lambda: "workers" in (t := str(facts.render())) and t, message="the status")
        assert "workers 2" in text, text
        due = int(text.split("due ")[1].split()[0])
        assert due == stack.store.due_count() and due >= 1
        assert "queued" in text and "scheduler ○" not in text
        assert "jail ●" in text, "every wall of the code worker stands"


async def test_status_line_says_what_taskman_up_restarted(stack):
    status = {"beat": {"running": True, "restarts": 2, "last_exit": -9, "keeps_dying": False},
              "worker-code": {"running": False, "restarts": 5, "last_exit": 1, "keeps_dying": True},
              "worker-http": {"running": True, "restarts": 0, "last_exit": None, "keeps_dying": False}}
    async with TaskmanApp(stack, supervision=lambda: status).run_test(size=(200, 40)) as pilot:
        facts = pilot.app.screen.query_one("#facts", Static)
        text = await until(pilot, lambda: "workers" in (t := str(facts.render())) and t, message="the status")
        assert "restarted beat ×2, worker-code ×5 ✘" in text, text


async def test_import_a_json_file_and_see_the_change_in_the_audit_trail(stack, tmp_path):
    import json as jsonlib

    from tui.screens.audit import AuditScreen
    from tui.screens.import_file import ImportScreen

    names = [unique("imported"), unique("imported")]
    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "x", "task_type": "delayed", "function_code": "def f():\\n  return 1"}]')
    good = tmp_path / "good.json"
    good.write_text(jsonlib.dumps([{"name": names[0], "task_type": "scheduled", "cron_expression": FAR_CRON,
                                    "function_code": "def f():\n    return 1", "function_name": "f"},
                                   {"name": names[1], "task_type": "scheduled", "cron_expression": FAR_CRON,
                                    "task_name": "taskman.echo"}]))
    app = TaskmanApp(stack.acting_as("console:tester"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("i")
        screen = await until(pilot, lambda: isinstance(pilot.app.screen, ImportScreen) and pilot.app.screen)
        box = screen.query_one("#path", Input)
        box.value = str(bad)
        await pilot.press("enter")
        error = screen.query_one("#import-error", Static)
        await until(pilot, lambda: "function_name" in str(error.render()), message="the refusal")
        box.value = str(good)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="the import to finish")
        table = pilot.app.screen.query_one(TaskTable)
        await until(pilot, lambda: {t.name for t in table.tasks.values()} >= set(names), message="both rows")
        await pilot.press("a")
        trail = await until(pilot, lambda: isinstance(pilot.app.screen, AuditScreen) and pilot.app.screen)
        rows = trail.query_one("#audit", DataTable)
        await until(pilot, lambda: rows.row_count > 0, message="audit entries")
        newest = [str(cell) for cell in rows.get_row_at(0)]
        assert newest[1] == "console:tester" and newest[2] == "create"


async def test_duplicate_opens_the_form_filled_in_and_creates_a_copy(stack):
    name = unique("original")
    stack.create({"name": name, "cron_expression": FAR_CRON, "timezone": "Asia/Tokyo", "max_retries": 2,
                  "function_code": "def f(x=1):\n    return x", "function_name": "f", "kwargs": {"x": 5}})
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        await select_task(pilot, name)
        await pilot.press("c")
        form = await until(pilot, lambda: isinstance(pilot.app.screen, NewTaskScreen) and pilot.app.screen)
        assert form.query_one("#name", Input).value == f"{name} copy"
        assert form.query_one("#timezone", Input).value == "Asia/Tokyo"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="the form to close")
    original, copy = stack.list_tasks(name=name, limit=2)[::-1]
    assert copy.name == f"{name} copy"
    same = {key: value for key, value in original.spec.to_dict().items() if key != "name"}
    assert {key: value for key, value in copy.spec.to_dict().items() if key != "name"} == same


# -- what the list shows: running runs, filter words, counts, the empty list ------------------------


def cron_task(name: str, body: str = "return 1", **extra) -> dict:
    """A code task that fires once a year, so it runs only when told to."""
    return {"name": name, "cron_expression": FAR_CRON, "function_name": "f", "function_code": f"def f():\n    {body}",
            **extra}




def last_shown(table: TaskTable, task_id: str) -> str:
    """The LAST cell of a task's row, as text."""
    return str(table.get_cell(task_id, "last"))


def shown_names(table: TaskTable) -> set[str]:
    return {table.tasks[key.value].name for key in table.rows if key.value}


async def type_text(pilot, text: str) -> None:
    """Enter ``text`` where the focus is: its first key pressed, the rest pasted (as a terminal's bracketed
    paste brings it), since Pilot waits for the app to go idle after every key (70-160 ms each)."""
    await pilot.press("space" if text[0] == " " else text[0])
    if text[1:]:
        focused = pilot.app.focused
        assert focused is not None, "nothing has the focus to type into"
        focused.post_message(events.Paste(text[1:]))
        await pilot.pause()


async def test_a_running_run_shows_as_running_its_time_ticks_and_its_start_is_logged_at_once(stack):
    name = unique("long-run")
    task = stack.create(cron_task(name, IDLE_RUN, timeout=60))
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        await select_task(pilot, name)
        table, logs = pilot.app.screen.table, pilot.app.screen.logs
        await pilot.press("r")
        first = await until(pilot, lambda: (shown := last_shown(table, task.id)).startswith("▶") and shown,
                            message="▶ in the LAST column")
        assert table.tasks[task.id].last_run_state == "running"
        run = stack.get(task.id).runs[0]
        await until(pilot, lambda: any(f"run {run.id} started on" in entry.get("msg", "") for entry in logs.entries),
                    message="the run's start in the log pane")
        assert stack.get_run(run.id).state is RunState.RUNNING, "the start is logged while the run runs"
        await until(pilot, lambda: (shown := last_shown(table, task.id)).startswith("▶") and shown != first,
                    message=f"the running time to move on from {first!r}")
        assert last_shown(table, task.id).endswith((" ms", " s")), last_shown(table, task.id)
        await pilot.press("s")
        await until(pilot, lambda: last_shown(table, task.id).startswith("■"), message="■ once stopped")


async def test_every_filter_example_in_readme_works_as_written(stack, http_server):
    from tests.filter_examples import console_examples, expected, specs

    prefix = unique("readme")
    made = {suffix: stack.create(spec) for suffix, spec in specs(prefix, http_server.base_url).items()}
    stack.pause(made["cron"].id)
    for suffix in ("failed", "ok"):
        await _final(stack, made[suffix].id)
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        screen = pilot.app.screen
        table, box = screen.table, screen.query_one("#filter", Input)
        await until(pilot, lambda: all(t.id in table.tasks for t in made.values()), message="the tasks")
        for word in console_examples():
            await pilot.press("slash")
            box.value = ""
            await type_text(pilot, f"{prefix} {word}")
            await pilot.press("enter")
            want = expected(prefix, word)
            await until(pilot, lambda want=want: shown_names(table) == want,
                        message=f"/{prefix} {word} to show {sorted(want)}")


async def test_the_filter_count_stays_right_when_an_event_arrives(stack):
    prefix = unique("counted")
    crons = stack.create_many([cron_task(f"{prefix}-{n}") for n in range(2)])
    stack.create({"name": f"{prefix}-later", "delay_seconds": 86400, "function_name": "f",
                  "function_code": "def f():\n    return 1"})
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        screen = pilot.app.screen
        table, box = screen.table, screen.query_one("#list")
        await until(pilot, lambda: all(t.id in table.tasks for t in crons), message="the tasks")
        await pilot.press("slash")
        await type_text(pilot, f"{prefix} mode:cron")
        await pilot.press("enter")
        await until(pilot, lambda: table.row_count == 2, message="two rows")
        assert box.border_title == f"Tasks (2/{len(table.tasks)})"
        stack.pause(crons[0].id)  # an event about a row that shows
        other = stack.create(cron_task(unique("elsewhere")))  # and one about a task that does not show
        await until(pilot, lambda: other.id in table.tasks and table.tasks[crons[0].id].state.value == "paused",
                    message="both events")
        assert table.row_count == 2 and box.border_title == f"Tasks (2/{len(table.tasks)})", box.border_title


async def test_an_empty_list_says_to_press_n_and_an_empty_filter_says_how_to_clear_it(settings):
    from core.service import Service

    service = Service.from_settings(settings.replace(namespace=f"empty{time.time_ns() % 10**9}"))
    async with TaskmanApp(service).run_test(size=SIZE) as pilot:
        screen = pilot.app.screen
        hint = screen.query_one("#empty", Static)
        await until(pilot, lambda: hint.display and "press n" in str(hint.render()).lower(), message="the hint")
        assert screen.query_one("#list").border_title == "Tasks (0)"
        task = service.create(cron_task("first"))
        await until(pilot, lambda: screen.table.row_count == 1 and not hint.display, message="the row, no hint")
        await pilot.press("slash")
        await type_text(pilot, "nothing-like-it")
        await until(pilot, lambda: hint.display and "esc clears" in str(hint.render()), message="the filter's hint")
        await pilot.press("escape")
        await until(pilot, lambda: screen.table.selected_id == task.id and not hint.display, message="cleared")


# -- keys -------------------------------------------------------------------------------------------


async def test_j_k_g_shift_g_home_and_end_move_in_the_list(stack):
    prefix = unique("keys")
    stack.create_many([cron_task(f"{prefix}-{n}") for n in range(3)])
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        table = pilot.app.screen.table
        await until(pilot, lambda: sum(t.name.startswith(prefix) for t in table.tasks.values()) == 3, message="rows")
        await pilot.press("slash")
        await type_text(pilot, prefix)
        await pilot.press("enter")
        await until(pilot, lambda: table.row_count == 3 and table.has_focus, message="three rows, the list focused")
        for key, row in (("G", 2), ("g", 0), ("j", 1), ("j", 2), ("k", 1), ("home", 0), ("end", 2)):
            await pilot.press(key)
            await until(pilot, lambda row=row: table.cursor_row == row, message=f"{key} to reach row {row}")
        await pilot.press("question_mark")
        help_screen = await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen) and pilot.app.screen)
        keys = help_screen.query_one("#keys", DataTable)
        shown = {str(keys.get_row_at(index)[0]) for index in range(keys.row_count)}
        assert {"j", "k", "g / home", "G / end"} <= shown, shown


async def test_esc_in_the_editor_discards_at_once_and_saving_goes_back_to_the_list(stack):
    name = unique("esc")
    task = stack.create(cron_task(name, "return 'kept'"))
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        await select_task(pilot, name)
        screen = pilot.app.screen
        editor = screen.query_one(EditorPane)
        await until(pilot, lambda: "'kept'" in editor.area.text, message="the code")
        original = editor.area.text
        await pilot.press("e")
        assert editor.area.has_focus
        await type_text(pilot, "xyz")
        assert editor.area.text != original and editor.dirty
        await pilot.press("escape")
        assert editor.area.text == original and not editor.dirty, "one esc discards"
        assert screen.table.has_focus, "and the list has the keys again"
        await pilot.press("e")
        editor.area.load_text("def f():\n    return 'saved'")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: stack.get(task.id).spec.function_code.endswith("'saved'"), message="the save")
        await until(pilot, lambda: screen.table.has_focus, message="the list to have the keys after saving")
        await pilot.press("n")  # a key after saving acts on the list, and never types into the code
        await until(pilot, lambda: isinstance(pilot.app.screen, NewTaskScreen), message="the form")
    assert stack.get(task.id).spec.function_code.endswith("'saved'")


async def test_the_forms_code_editor_shows_a_key_that_leaves_it_and_tab_still_indents(stack):
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        await pilot.press("n")
        form = await until(pilot, lambda: isinstance(pilot.app.screen, NewTaskScreen) and pilot.app.screen)
        code = form.query_one("#code", TextArea)
        code.focus()
        await pilot.pause()
        shown = form.active_bindings["escape"].binding
        assert shown.show and shown.description == "next field", shown
        before = code.text
        await pilot.press("tab")
        assert code.has_focus and code.text != before, "tab indents"
        await pilot.press("escape")
        await until(pilot, lambda: not code.has_focus and form.focused is not None, message="focus past the editor")
        assert isinstance(pilot.app.screen, NewTaskScreen), "esc in the editor does not cancel the form"
        assert form.active_bindings["escape"].binding.description == "cancel"
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="esc elsewhere cancels")


async def test_the_cursor_lands_on_a_new_task_and_on_a_copy_scrolled_into_view(stack):
    prefix = unique("many")
    stack.create_many([cron_task(f"{prefix}-{n:02d}") for n in range(40)])
    name = unique("landed")
    async with TaskmanApp(stack).run_test(size=SIZE) as pilot:
        table = pilot.app.screen.table
        await until(pilot, lambda: sum(t.name.startswith(prefix) for t in table.tasks.values()) == 40, message="rows")
        await pilot.press("G")
        await until(pilot, lambda: table.scroll_y > 0, message="the list scrolled down")
        await pilot.press("n")
        form = await until(pilot, lambda: isinstance(pilot.app.screen, NewTaskScreen) and pilot.app.screen)
        form.query_one("#name", Input).value = name
        form.query_one("#mode", Select).value = "scheduled"
        form.query_one("#cron", Input).value = FAR_CRON
        await pilot.pause()
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="the form to close")
        await until(pilot, lambda: table.selected is not None and table.selected.name == name, message="on the new")
        assert _row_in_view(table), (table.cursor_row, table.scroll_y)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(pilot.app.screen, NewTaskScreen), message="the copy's form")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen), message="the form to close")
        await until(pilot, lambda: table.selected is not None and table.selected.name == f"{name} copy",
                    message="the cursor on the copy")
        assert _row_in_view(table), (table.cursor_row, table.scroll_y)


def _row_in_view(table: TaskTable) -> bool:
    rows_shown = table.scrollable_content_region.height - table.header_height
    return table.scroll_y <= table.cursor_row < table.scroll_y + rows_shown


async def test_the_newest_tasks_are_drawn_first_and_older_pages_follow_below_up_to_the_most_held(settings, monkeypatch):
    """The first paint waits only for the newest page; the rest arrive below it, newest first, up to MOST."""
    from core.service import Service
    from tui.screens import main

    monkeypatch.setattr(main, "FIRST_PAGE", 20)
    monkeypatch.setattr(main, "PAGE", 50)
    monkeypatch.setattr(main, "MOST", 150)
    service = Service.from_settings(settings.replace(namespace=f"paged{time.time_ns() % 10**9}"))
    made = service.create_many([cron_task(f"paged-{n:03}") for n in range(160)])
    newest_first = [task.id for task in sorted(made, key=lambda task: -task.created_at)]
    reads: list[tuple[int, int]] = []
    list_tasks = service.list_tasks

    def recorded(*, limit: int = 100, offset: int = 0):
        reads.append((limit, offset))
        return list_tasks(limit=limit, offset=offset)

    monkeypatch.setattr(service, "list_tasks", recorded)
    async with TaskmanApp(service).run_test(size=SIZE) as pilot:
        screen = pilot.app.screen
        table = screen.table
        await until(pilot, lambda: table.row_count == 150, message="the most held")
        assert [key.value for key in table.rows] == newest_first[:150], "newest first, pages below, no repeats"
        assert reads == [(20, 0), (50, 20), (50, 70), (30, 120)], reads
        assert screen.query_one("#list").border_title == "Tasks (150)"
        later = service.create(cron_task("paged-new"))
        await until(pilot, lambda: table.selected is not None and later.id in table.tasks, message="a new task")
        assert next(iter(table.rows)).value == later.id


async def test_a_filter_also_searches_the_tasks_older_than_the_most_held(settings, monkeypatch):
    """At 100,000 tasks the console holds the newest MOST; a filter finds the older ones in Redis too, once it
    has stopped changing, and they stay held below the others."""
    from core.service import Service
    from tui.screens import main

    monkeypatch.setattr(main, "FIRST_PAGE", 20)
    monkeypatch.setattr(main, "PAGE", 50)
    monkeypatch.setattr(main, "MOST", 120)
    service = Service.from_settings(settings.replace(namespace=f"older{time.time_ns() % 10**9}"))
    service.create_many([cron_task(f"older-{n:03}") for n in range(140)])
    searches: list[int] = []
    matching_tasks = service.matching_tasks

    def recorded(query, **options):
        searches.append(options["older_than"])
        return matching_tasks(query, **options)

    monkeypatch.setattr(service, "matching_tasks", recorded)
    async with TaskmanApp(service).run_test(size=SIZE) as pilot:
        screen = pilot.app.screen
        table = screen.table
        await until(pilot, lambda: table.row_count == 120 and screen.truncated, message="the most held")
        assert "older-019" not in {task.name for task in table.tasks.values()}
        await pilot.press("slash")
        await type_text(pilot, "older-01")  # older-010 .. older-019: none of them is held
        await until(pilot, lambda: table.row_count == 10, message="the older matches found")
        assert sorted(task.name for task in table.tasks.values() if task.name.startswith("older-01")) == [
            f"older-01{n}" for n in range(10)]
        assert searches and all(older == 70 for older in searches), searches  # MOST - PAGE: a margin
        held = len(table.tasks)  # what the searches of the words typed so far ("o", "older-01") brought
        assert 130 <= held <= 140 and screen.query_one("#list").border_title == f"Tasks (10/{held})"
        await pilot.press("escape")
        await until(pilot, lambda: table.row_count == held, message="the found tasks kept below the others")
        assert [key.value for key in table.rows] == [task.id for task in sorted(
            table.tasks.values(), key=lambda task: -task.created_at)], "newest first, the found ones below"
        before = len(searches)
        await pilot.press("slash")
        await type_text(pilot, "older-13")  # held already: found at once, and the search finds nothing new
        await until(pilot, lambda: table.row_count == 10 and len(searches) > before, message="held matches")
        await pilot.pause(0.2)
        assert table.row_count == 10


async def test_a_long_list_is_filtered_once_the_typing_pauses_and_never_drawn_again_for_the_same_rows(settings,
                                                                                                   monkeypatch):
    """At 20,000 rows each drawing of the list takes over a second: keys typed in a row cost one drawing, and
    a word that picks the rows already shown (``t``, ``ta`` ... of names that all start so) costs none."""
    from core.service import Service
    from tui.screens import main

    monkeypatch.setattr(main, "FILTER_AT_ONCE", 50)
    monkeypatch.setattr(main, "FILTER_PAUSE", 2.0)  # longer than any key takes here, even under load
    service = Service.from_settings(settings.replace(namespace=f"pause{time.time_ns() % 10**9}"))
    service.create_many([cron_task(f"deb-{n:03}") for n in range(60)])
    async with TaskmanApp(service).run_test(size=SIZE) as pilot:
        table = pilot.app.screen.table
        await until(pilot, lambda: table.row_count == 60, message="every row")
        drawn: list[int] = []
        load = table.load
        monkeypatch.setattr(table, "load", lambda tasks: (drawn.append(len(tasks)), load(tasks)))
        await pilot.press("slash", *"deb-001")
        assert table.row_count == 60 and not drawn, "nothing drawn while the keys come"
        await until(pilot, lambda: table.row_count == 1, message="the filter, after the pause")
        assert drawn == [60], drawn
        monkeypatch.setattr(main, "FILTER_AT_ONCE", 1_000)  # a short list: filtered at every key
        await pilot.press("escape")
        await until(pilot, lambda: table.row_count == 60, message="every row back")
        drawn.clear()
        await pilot.press("slash", "d", "e", "b")
        assert table.row_count == 60 and drawn == [], "every key picks the rows shown already: none drawn again"
        await pilot.press("-", "0", "5")  # "deb-" and "deb-0" pick all 60 still; "deb-05" picks 10
        assert table.row_count == 10 and drawn == [60], drawn


async def test_o_sorts_by_each_column_in_turn_O_reverses_and_a_header_click_sorts_by_its_column(settings):
    """Sorting keeps the cursor on its task and says in the list's title how the rows are ordered."""
    from core.service import Service

    service = Service.from_settings(settings.replace(namespace=f"sort{time.time_ns() % 10**9}"))
    made = service.create_many([cron_task("bravo"), cron_task("alpha"), cron_task("charlie")])
    service.pause(made[2].id)  # charlie, the newest: paused sorts after active
    async with TaskmanApp(service).run_test(size=SIZE) as pilot:
        screen = pilot.app.screen
        table = screen.table
        box = screen.query_one("#list")
        await until(pilot, lambda: table.row_count == 3, message="every row")

        def names() -> list[str]:
            return [table.tasks[key.value].name for key in table.rows]

        assert names() == ["charlie", "alpha", "bravo"] and box.border_title == "Tasks (3)"
        table.focus()
        await pilot.press("o")
        assert names() == ["alpha", "bravo", "charlie"] and box.border_title == "Tasks (3) · by NAME ▲"
        table.select(made[0].id)  # bravo
        await pilot.press("O")
        assert names() == ["charlie", "bravo", "alpha"] and box.border_title == "Tasks (3) · by NAME ▼"
        assert table.selected is not None and table.selected.id == made[0].id, "the cursor stays on its task"
        await pilot.press("o", "o", "o")  # KIND, MODE (all alike: newest first), then STATE
        assert table.sort_by == "STATE" and names() == ["alpha", "bravo", "charlie"]
        await pilot.press("o", "o", "o")  # NEXT, LAST, then newest first again
        assert table.sort_by is None and names() == ["charlie", "alpha", "bravo"] and box.border_title == "Tasks (3)"
        await pilot.click(TaskTable, offset=(3, 0))  # the NAME header
        assert names() == ["alpha", "bravo", "charlie"]
        await pilot.click(TaskTable, offset=(3, 0))
        assert names() == ["charlie", "bravo", "alpha"] and box.border_title == "Tasks (3) · by NAME ▼"
        later = service.create(cron_task("delta"))
        await until(pilot, lambda: later.id in table.tasks, message="a new task")
        assert names() == ["delta", "charlie", "bravo", "alpha"], "a new task is drawn in its sorted place"


async def test_the_clock_tick_redraws_the_rows_on_screen_and_a_row_scrolled_into_view_catches_up(settings,
                                                                                                monkeypatch):
    """The once-a-second tick looks only at the rows drawn, so it costs the same at 20,000 rows as at 20."""
    from core.service import Service
    from tui.widgets import task_table

    service = Service.from_settings(settings.replace(namespace=f"tick{time.time_ns() % 10**9}"))
    made = service.create_many([{"name": f"tick-{n:02}", "function_name": "f", "delay_seconds": 1800,
                                 "function_code": "def f():\n    return 1"} for n in range(60)])
    due = made[0].next_run_at
    now = [due - 1800]
    monkeypatch.setattr(task_table, "clock", lambda: now[0])
    async with TaskmanApp(service).run_test(size=(120, 30)) as pilot:
        table = pilot.app.screen.table
        await until(pilot, lambda: table.row_count == 60, message="every row")
        first, last = (table.coordinate_to_cell_key((row, 0)).row_key for row in (0, 59))
        assert str(table.get_cell(first, "next")) == str(table.get_cell(last, "next")) == "+30m"
        now[0] = due - 600
        table.refresh_due_times()
        assert str(table.get_cell(first, "next")) == "+10m", "a row on screen is redrawn"
        assert str(table.get_cell(last, "next")) == "+30m", "a row off screen is left for later"
        await pilot.press("G")
        await until(pilot, lambda: table.cursor_row == 59 and table.scroll_offset.y > 0, message="the bottom in view")
        table.refresh_due_times()
        assert str(table.get_cell(last, "next")) == "+10m", "scrolled into view, it catches up at the next tick"
