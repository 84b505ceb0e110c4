"""Snapshots of the console's main screen, the new-task form with a cron preview, and the detail view;
at 80x24 and 200x50 too, with the form showing a refusal and the keys dialog (at 200x50 the main screen
shows the wide list's columns, over a history of runs).

The data is fixed (a namespace of its own, paused tasks, run records with set times), the clock
and the time zone are pinned, and each picture is taken only once the state it shows is on
screen (waited for, never slept for), so the pictures change only when the console's look does.
Update them with ``pytest --snapshot-update``.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from datetime import datetime

import pytest
from rich.console import Console
from textual.widgets import DataTable, Input, Select, Static, TextArea

import tui.screens.new_task as new_task_module
import tui.widgets.task_table as task_table_module
from core.models import Run, RunState, TaskState
from core.service import Service
from tests.tui.test_console import until
from tui.app import TaskmanApp
from tui.screens.detail import DetailScreen
from tui.screens.help import HelpScreen
from tui.screens.new_task import NewTaskScreen
from tui.widgets.editor import EditorPane
from tui.widgets.task_table import TaskTable

SIZE = (120, 32)
SMALL = (80, 24)
LARGE = (200, 50)
T0 = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC
NOW = T0 + 180
"""The task list's "now": its relative times (``+4m``, ``3m ago``) read against it."""
LABEL = "redis.test:6379"


@pytest.fixture(autouse=True)
def pinned_clock(monkeypatch):
    """UTC as the local zone (the detail view shows local times), T0 as the form's "now" and NOW as the
    task list's.

    Without this the pictures depend on the machine's TZ, and the cron preview's next fires and the
    list's relative times on the date and time the tests run.
    """
    previous = os.environ.get("TZ")
    os.environ["TZ"] = "UTC0"
    time.tzset()

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.fromtimestamp(T0, tz)

    monkeypatch.setattr(new_task_module, "datetime", Frozen)
    monkeypatch.setattr(task_table_module, "clock", lambda: NOW)
    yield
    if previous is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = previous
    time.tzset()


@pytest.fixture
def fixed(settings, redis_server):
    """A namespace holding the same three tasks every time, nothing running."""
    service = Service.from_settings(settings.replace(namespace=f"snap{uuid.uuid4().hex[:6]}"))
    specs = [
        {"name": "ping-billing", "api_url": "http://billing.internal/health", "cron_expression": "*/5 * * * *",
         "headers": {"Authorization": "Bearer secret"}},
        {"name": "nightly-export", "task_name": "taskman.echo", "kwargs": {"days": 1},
         "cron_expression": "30 2 * * *"},
        {"name": "daily_report", "cron_expression": "0 9 * * 1-5", "function_name": "daily_report",
         "function_code": "import json\n\ndef daily_report(day=None):\n    rows = [1, 2, 3]\n"
                          "    print(f'{len(rows)} rows')\n    return {'rows': len(rows)}\n"},
    ]
    tasks = service.create_many(specs)
    for task in tasks:
        service.pause(task.id)
    report = tasks[-1]
    pipe = service.store.pipeline()
    for index, (state, error) in enumerate([(RunState.SUCCEEDED, None), (RunState.RETRYING, "ValueError: bad day"),
                                            (RunState.FAILED, "ValueError: bad day")]):
        run = Run(id=f"run{index}", task_id=report.id, state=state, attempt=1 + (index > 0) * (index),
                  max_attempts=3, trigger="cron", queued_at=T0 - 3600 * index, started_at=T0 - 3600 * index,
                  finished_at=T0 - 3600 * index + 0.012, duration_ms=12.0 + index,
                  result={"rows": 3} if state is RunState.SUCCEEDED else None,
                  output="3 rows\n", error=error,
                  traceback=None if error is None else
                  'Traceback (most recent call last):\n  File "<task>", line 4, in daily_report\n'
                  "ValueError: bad day\n")
        service.store.add_run(run, pipe)
    pipe.execute()
    service.store.set_last_run(report.id, "run0", RunState.SUCCEEDED, 12.0, service.store.redis)
    yield service, report
    keys = service.store.redis.keys(f"{service.store.keys.namespace}:*")
    if keys:
        service.store.redis.delete(*keys)


@pytest.fixture
def history(fixed):
    """The fixed tasks with a history of finished runs, as the wide list shows it: ping-billing active, due
    in 4 minutes, its 20 runs five minutes apart (one failed), the latest a minute ago; nightly-export's one
    run timed out a day ago; daily_report's latest run is its failed one."""
    service, report = fixed
    store = service.store
    by_name = {task.name: task for task in service.list_tasks()}
    ping, export = by_name["ping-billing"], by_name["nightly-export"]
    pipe = store.pipeline()
    store.set_task_state(ping.id, TaskState.ACTIVE, NOW + 240, pipe)
    pipe.execute()
    runs = [(ping.id, f"ping{index}", NOW - 60 - 300 * (19 - index),
             RunState.FAILED if index == 12 else RunState.SUCCEEDED, 60.0 + 7 * index) for index in range(20)]
    runs.append((export.id, "export0", NOW - 86400 - 600, RunState.TIMED_OUT, 5000.0))
    for task_id, run_id, started, state, duration in runs:
        run = Run(id=run_id, task_id=task_id, state=state, trigger="cron", queued_at=started, started_at=started,
                  finished_at=started + duration / 1000, duration_ms=duration,
                  error=None if state is RunState.SUCCEEDED else "it went wrong")
        pipe = store.pipeline()
        store.add_run(run, pipe)
        store.set_last_run(task_id, run_id, state, duration, pipe)
        pipe.execute()
    store.set_last_run(report.id, "run2", RunState.FAILED, 14.0, store.redis)
    return service, report


def app_for(service) -> TaskmanApp:
    return TaskmanApp(service, redis_label=LABEL)


def text_of(widget: Static) -> str:
    """What a Static shows, as plain text."""
    console = Console(width=200, file=io.StringIO(), color_system=None)
    console.print(widget.content)
    return console.file.getvalue()


def finished(pilot, group: str) -> bool:
    """No worker of ``group`` is pending or running (so its results have been applied)."""
    return all(worker.is_finished for worker in pilot.app.workers if worker.group == group)


async def steady(pilot) -> None:
    """Let pending messages, layout and animations run, then repaint every widget from its state.

    The repaint matters: under CPU load a picture once showed the runs table's header still drawn
    with the widths it had before the rows arrived, the rows with their final widths.
    """
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()
    for widget in pilot.app.screen.walk_children(with_self=True):
        widget.refresh()
    await pilot.pause()


async def _loaded(pilot) -> None:
    """The main screen as pictured: three rows, the first task in the editor, the status line read."""
    table = pilot.app.screen.query_one(TaskTable)
    editor = pilot.app.screen.query_one(EditorPane)
    await until(pilot, lambda: table.row_count == 3, message="three rows")
    await until(pilot, lambda: "daily_report" in str(editor.border_title), message="daily_report in the editor")
    await until(pilot, lambda: "workers" in text_of(pilot.app.screen.query_one("#facts", Static)),
                message="the status line")
    await until(pilot, lambda: finished(pilot, "status"), message="the status read")
    await steady(pilot)


def test_main_screen(snap_compare, fixed):
    service, _ = fixed
    assert snap_compare(app_for(service), terminal_size=SIZE, run_before=_loaded)


def test_new_task_form_with_cron_preview(snap_compare, fixed):
    service, _ = fixed

    async def open_form(pilot) -> None:
        await _loaded(pilot)
        await pilot.press("n")
        form = await until(pilot, lambda: isinstance(pilot.app.screen, NewTaskScreen) and pilot.app.screen)
        form.query_one("#mode", Select).value = "scheduled"
        form.query_one("#name", Input).value = "leap-day"
        form.query_one("#cron", Input).value = "0 0 29 2 *"
        form.set_focus(None)  # no blinking cursor in the picture
        preview = form.query_one("#cron-preview", Static)
        await until(pilot, lambda: form.query_one("#cron-section").display and "Tue 29 Feb" in text_of(preview),
                    message="the cron preview")
        await steady(pilot)

    assert snap_compare(app_for(service), terminal_size=SIZE, run_before=open_form)


async def _detail_shown(pilot) -> tuple[DataTable, Static]:
    """Open the first task's detail view and wait until its three runs are drawn, run0 shown; (runs, view)."""
    await _loaded(pilot)
    await pilot.press("enter")
    screen = await until(pilot, lambda: isinstance(pilot.app.screen, DetailScreen) and pilot.app.screen)
    runs = screen.query_one("#runs", DataTable)
    view = screen.query_one("#run-view", Static)
    # the history is loaded (and drawn) before a key moves the cursor, so a late load
    # cannot redraw the table under it
    await until(pilot, lambda: runs.row_count == 3 and finished(pilot, "detail-load"), message="three runs")
    await until(pilot, lambda: "run run0" in text_of(view), message="run0 shown")
    await steady(pilot)
    return runs, view


def test_detail_view(snap_compare, fixed):
    service, _ = fixed

    async def open_detail(pilot) -> None:
        runs, view = await _detail_shown(pilot)
        await pilot.press("down")
        await until(pilot, lambda: runs.cursor_row == 1 and "run run1 · retrying" in text_of(view),
                    message="run1 selected and shown")
        await steady(pilot)

    assert snap_compare(app_for(service), terminal_size=SIZE, run_before=open_detail)


def test_main_screen_80x24(snap_compare, fixed):
    service, _ = fixed
    assert snap_compare(app_for(service), terminal_size=SMALL, run_before=_loaded)


async def _refused(pilot) -> None:
    """The new-task form showing the refusal of a code task that does not parse."""
    await _loaded(pilot)
    await pilot.press("n")
    form = await until(pilot, lambda: isinstance(pilot.app.screen, NewTaskScreen) and pilot.app.screen)
    form.query_one("#name", Input).value = "refused"
    form.query_one("#code", TextArea).load_text("def main(:\n    pass")
    await pilot.press("ctrl+s")
    error = form.query_one("#form-error", Static)
    await until(pilot, lambda: "function_code" in text_of(error), message="the refusal")
    form.set_focus(None)  # no blinking cursor in the picture
    await steady(pilot)


async def _help_shown(pilot) -> None:
    await _loaded(pilot)
    await pilot.press("question_mark")
    await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen), message="the keys dialog")
    await steady(pilot)


def test_new_task_form_with_a_refusal_80x24(snap_compare, fixed):
    service, _ = fixed
    assert snap_compare(app_for(service), terminal_size=SMALL, run_before=_refused)


def test_detail_view_80x24(snap_compare, fixed):
    service, _ = fixed

    async def open_detail(pilot) -> None:
        await _detail_shown(pilot)

    assert snap_compare(app_for(service), terminal_size=SMALL, run_before=open_detail)


def test_help_dialog_80x24(snap_compare, fixed):
    service, _ = fixed
    assert snap_compare(app_for(service), terminal_size=SMALL, run_before=_help_shown)


async def _wide_list_loaded(pilot) -> None:
    """The main screen with the history's cells drawn in the wide list."""
    await _loaded(pilot)
    table = pilot.app.screen.query_one(TaskTable)
    await until(pilot, lambda: table.wide and table.row_count == 3, message="the wide list")
    await until(pilot, lambda: any("95% of 20" in str(cell) for row in range(3) for cell in table.get_row_at(row)),
                message="ping-billing's success rate")
    await steady(pilot)


def test_main_screen_200x50(snap_compare, history):
    service, _ = history
    assert snap_compare(app_for(service), terminal_size=LARGE, run_before=_wide_list_loaded)


def test_new_task_form_with_a_refusal_200x50(snap_compare, fixed):
    service, _ = fixed
    assert snap_compare(app_for(service), terminal_size=LARGE, run_before=_refused)


def test_detail_view_200x50(snap_compare, fixed):
    service, _ = fixed

    async def open_detail(pilot) -> None:
        await _detail_shown(pilot)

    assert snap_compare(app_for(service), terminal_size=LARGE, run_before=open_detail)


def test_help_dialog_200x50(snap_compare, fixed):
    service, _ = fixed
    assert snap_compare(app_for(service), terminal_size=LARGE, run_before=_help_shown)
