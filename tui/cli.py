"""The ``taskman`` command line: thin click commands over ``core.service``.

Exit codes are a contract: 0 success, 2 refused input (the message on stderr), 1 anything else.
Read commands take ``--json`` and then print exactly what the REST API returns.

Everything printed that came from data (names, descriptions, results, errors, printed lines, log
messages, audit details) goes through ``core.text`` first, TTY or not: control characters are shown
as ``\x1b`` and never reach the terminal as they are.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import TYPE_CHECKING

import click

from core.config import Settings
from core.errors import InvalidSpec, NoRedis, TaskmanError
from core.text import (
    definition_fields,
    json_text,
    local_time,
    log_time,
    one_line,
    read_json,
    relative_time,
    run_time,
    visible,
)

if TYPE_CHECKING:  # loaded by the commands that need them: `taskman cron` or `--help` connect to nothing
    from core.models import Task
    from core.service import Service


def _user() -> str:
    """The local user's name, for the audit trail's actor (``cli:<user>``, ``console:<user>``)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        import os

        return f"uid{os.getuid()}"


def _service():
    from core.service import Service

    return Service.from_settings(Settings()).acting_as(f"cli:{_user()}")


def _sized_by_the_terminal() -> None:
    """Let the console take its size from the terminal, and its resizes. Textual asks
    ``shutil.get_terminal_size``, which prefers exported ``COLUMNS``/``LINES`` to the terminal: such values,
    stale once the window changes, held the console at their size and it ignored every resize."""
    import os

    try:
        os.get_terminal_size(sys.__stdout__.fileno())  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):
        return  # no terminal to ask: the variables are all there is
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)


def handles_errors(func):
    """Turn taskman's errors into a message on stderr and the contract's exit code."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except NoRedis as exc:
            if exc.cause is None or exc.answering:  # none configured, or one that refuses writes: the message says
                click.echo(f"error: {visible(exc.message)}", err=True)
            else:
                click.echo(f"error: cannot reach Redis ({visible(exc.cause)}). Check TASKMAN_REDIS_URL, "
                           "or start everything with `taskman up`.", err=True)
            sys.exit(1)
        except TaskmanError as exc:
            click.echo(f"error: {visible(exc.message)}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper


def _emit_json(value) -> None:
    click.echo(json_text(value, indent=2))


def _block(text: str, indent: str) -> None:
    """Print ``text`` line by line under ``indent``: no line of data can pose as one of ours."""
    for line in visible(text).split("\n"):
        click.echo(f"{indent}{line}")


def _cell(text: str, width: int) -> str:
    """``text`` cut or padded to ``width`` terminal cells (CJK characters take two)."""
    from rich.cells import set_cell_size

    return set_cell_size(text, width)


LOG_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """taskman: define, schedule and watch Celery tasks from the terminal."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the created tasks as JSON.")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@handles_errors
def submit(file, as_json: bool) -> None:
    """Create tasks from FILE (or - for stdin): one JSON spec or an array of specs (all or none)."""
    text = file.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskmanError(
            f"{file.name}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise TaskmanError(f"{file.name}: the JSON is nested too deeply") from None
    if data == []:
        # An empty array is a valid batch (an empty namespace exports as one, and export → submit
        # round-trips), so this is a success that says so rather than silence.
        click.echo("nothing to submit: the array holds no specs", err=True)
        if as_json:
            _emit_json([])
        return
    service = _service()
    tasks = service.create_many(data if isinstance(data, list) else [data])
    if as_json:
        _emit_json([task.to_dict() for task in tasks] if isinstance(data, list) else tasks[0].to_dict())
        return
    for task in tasks:
        click.echo(f"{task.id}  {one_line(task.name)}  ({task.kind.value}, {task.mode.value}, "
                   f"next {relative_time(task.next_run_at)})")


@main.command("list")
@click.option("--state", help="Only tasks in this state (active, paused, done), or whose last run is in this "
                             "one (queued, running, succeeded, failed, timed_out, stopped, retrying).")
@click.option("--last", help="Only tasks whose last run is in this state (running, failed, ...).")
@click.option("--kind", help="Only tasks of this kind: code, api, registered (or reg).")
@click.option("--mode", help="Only tasks of this mode: now, delay, cron (or immediate, delayed, scheduled).")
@click.option("--name", help="Only tasks whose name contains this text.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--offset", default=0, type=click.IntRange(min=0))
@click.option("--json", "as_json", is_flag=True)
@handles_errors
def list_tasks(state, last, kind, mode, name, limit, offset, as_json) -> None:
    """List tasks, newest first; the filters take the words the list shows (core.filters)."""
    try:
        tasks = _service().list_tasks(state=state, last=last, kind=kind, mode=mode, name=name, limit=limit,
                                      offset=offset)
    except InvalidSpec as exc:  # a filter word: name the option it came from, as for any bad option
        raise click.BadParameter(exc.reason, param_hint=f"'--{exc.field}'") from None
    if as_json:
        _emit_json([task.to_dict() for task in tasks])
        return
    click.echo(f"{'ID':16}  {'NAME':24}  {'KIND':10}  {'MODE':9}  {'STATE':7}  {'NEXT':19}  LAST")
    now = time.time()
    for task in tasks:
        took = run_time(task.last_duration_ms, task.last_started_at, running=task.last_run_state == "running",
                        now=now)
        latest = f"{task.last_run_state or '–'} {took}".rstrip()
        click.echo(f"{task.id:16}  {_cell(one_line(task.name), 24)}  {task.kind.value:10}  {task.mode.value:9}  "
                   f"{task.state.value:7}  {relative_time(task.next_run_at):19}  {latest}")


@main.command()
@click.argument("task_id")
@click.option("--runs", default=20, show_default=True, type=click.IntRange(0, 1000),
              help="How many recent runs to show.")
@click.option("--json", "as_json", is_flag=True)
@handles_errors
def show(task_id, runs, as_json) -> None:
    """Show a task's definition and recent runs."""
    task = _service().get(task_id, runs=runs)
    if as_json:
        _emit_json(task.to_dict())
        return
    data = task.to_dict()
    fields, code = definition_fields(data["spec"])
    click.echo(f"{one_line(task.name)}  [{task.id}]  {task.kind.value} · {task.mode.value} · {task.state.value}")
    click.echo(f"next run: {data['next_run_at'] or '–'}")
    for key, text in fields:
        if "\n" in text:
            click.echo(f"{key}:")
            _block(text, "    ")
        else:
            click.echo(f"{key}: {text}")
    if code is not None:
        click.echo("function_code:")
        _block(code, "    ")
    click.echo(f"runs ({len(task.runs)} shown):")
    for index, run in enumerate(task.runs):
        running = run.state.value == "running"
        took = run_time(run.duration_ms, run.started_at, running=running)
        if running and took:
            took += " so far"
        click.echo(f"  {run.id}  {run.state.value:9}  attempt {run.attempt}/{run.max_attempts}  "
                   f"{relative_time(run.started_at or run.queued_at)}  {took}")
        if run.overrides:
            click.echo(f"      run with: {one_line(json_text(run.to_dict()['overrides']))}")
        if run.error:
            click.echo(f"      error: {one_line(run.error)}")
        elif run.state.value == "succeeded":
            click.echo(f"      result: {one_line(json_text(run.result)[:200])}")
        if index == 0 and run.output:
            click.echo("      output:")
            _block("\n".join(visible(run.output).split("\n")[-20:]), "        ")
        if index == 0 and run.traceback:
            click.echo("      traceback:")
            _block("\n".join(visible(run.traceback).split("\n")[-20:]), "        ")


@main.command()
@click.argument("task_id")
@click.argument("file", type=click.File("r", encoding="utf-8"), required=False)
@click.option("--set", "assignments", multiple=True, metavar="FIELD=VALUE",
              help="Change one field; VALUE is read as JSON when it parses, else as text. Repeatable.")
@click.option("--json", "as_json", is_flag=True)
@handles_errors
def edit(task_id, file, assignments, as_json) -> None:
    """Change fields of a task (FILE: a JSON object of fields, or --set); effective from its next run."""
    changes: dict = {}
    if file is not None:
        try:
            changes = json.loads(file.read())
        except RecursionError:
            raise TaskmanError(f"{file.name}: the JSON is nested too deeply") from None
        except json.JSONDecodeError as exc:
            raise TaskmanError(f"{file.name}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    for assignment in assignments:
        field, sep, raw = assignment.partition("=")
        if not sep or not field:
            raise TaskmanError(f"--set {assignment!r}: write it as FIELD=VALUE")
        try:
            changes[field] = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            changes[field] = raw
    if not changes:
        raise TaskmanError("nothing to change: give a JSON file of fields or --set FIELD=VALUE")
    task = _service().update(task_id, changes)
    if as_json:
        _emit_json(task.to_dict())
    else:
        click.echo(f"{task.id}: updated ({task.kind.value}, {task.mode.value}, next {relative_time(task.next_run_at)})")


def _simple(action: str, act: Callable[[Service, str], Task | None], help_text: str):
    """A command ``taskman ACTION TASK_ID`` that calls ``act(service, task_id)``: the task as it is now, or
    None once it is deleted."""

    @main.command(name=action, help=help_text)
    @click.argument("task_id")
    @click.option("--json", "as_json", is_flag=True)
    @handles_errors
    def command(task_id, as_json):
        task = act(_service(), task_id)
        if as_json:
            _emit_json(task.to_dict() if task is not None else {"deleted": task_id})
        elif task is None:
            click.echo(f"deleted {task_id}")
        else:
            click.echo(f"{task_id}: {task.state.value}")

    return command


@main.command()
@click.argument("task_id")
@click.option("--args", "args_json", metavar="JSON", help="This run's positional arguments, a JSON array "
              "(code and registered tasks); the task keeps its own.")
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="This run's keyword arguments, a JSON object "
              "(code and registered tasks).")
@click.option("--data", "data_json", metavar="JSON", help="This run's request body (API tasks), as JSON; it "
              "replaces the task's body, whether that was given as data or json.")
@click.option("--json", "as_json", is_flag=True)
@handles_errors
def run(task_id, args_json, kwargs_json, data_json, as_json) -> None:
    """Run the task now, whatever its schedule; --args/--kwargs/--data run it once with other arguments."""
    overrides = {}
    for option, field, raw in (("--args", "args", args_json), ("--kwargs", "kwargs", kwargs_json),
                               ("--data", "data", data_json)):
        if raw is not None:
            overrides[field] = read_json(raw, option)
    outcome = _service().run_now(task_id, overrides or None)
    if as_json:
        _emit_json(outcome.to_dict())
    else:
        click.echo(f"queued run {outcome.id}" + (f" with {', '.join(sorted(overrides))} of its own"
                                                 if overrides else ""))


_simple("stop", lambda service, task_id: service.stop(task_id),
        "Stop the task: queued runs never start, running ones are killed, the schedule pauses.")
_simple("pause", lambda service, task_id: service.pause(task_id), "Pause a delayed or cron task's schedule.")
_simple("resume", lambda service, task_id: service.resume(task_id), "Resume a paused task's schedule.")
_simple("delete", lambda service, task_id: service.delete(task_id),
        "Stop the task and remove its definition and schedule.")


@main.command()
@handles_errors
def export() -> None:
    """Print every task definition as a JSON array that `taskman submit` accepts."""
    _emit_json(_service().export())


@main.command()
@click.option("--json", "as_json", is_flag=True)
@handles_errors
def tasks(as_json) -> None:
    """List the Celery task names the workers have registered (for registered tasks)."""
    service = _service()
    names = service.registered_tasks()
    if as_json:
        _emit_json(names)
        return
    for name, detail in sorted(names.items()):
        click.echo(f"{one_line(name):40}  {one_line(', '.join(detail['queues']))}  "
                   f"({one_line(', '.join(detail['workers']))})")
    ok, summary = service.isolation_summary()
    click.echo(("" if ok else "warning: ") + one_line(summary), err=not ok)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@handles_errors
def workers(as_json) -> None:
    """Workers (host, pool, concurrency, messages taken ahead, runs active, processed, last heartbeat, isolation
    walls), queues (waiting and unacknowledged messages) and the registered task names: the console's workers
    view."""
    view = _service().workers()
    if as_json:
        _emit_json(view.to_dict())
        return
    from core.text import human_ago

    click.echo(f"{'WORKER':28}  {'POOL':8}  {'CONC':>4}  {'AHEAD':>5}  {'ACTIVE':>6}  {'PROCESSED':>9}  "
               f"{'HEARTBEAT':14}  WALLS")
    for worker in view.workers:
        seen = human_ago(worker.beat_age) if worker.beat_age is not None else "–"
        click.echo(f"{_cell(one_line(worker.name), 28)}  {one_line(worker.pool):8}  {_number(worker.concurrency):>4}  "
                   f"{_number(worker.prefetch):>5}  {_number(worker.active):>6}  {_number(worker.processed):>9}  "
                   f"{_cell(seen if worker.alive else f'silent {seen}', 14)}  {one_line(worker.walls_summary())}")
    if not view.workers:
        click.echo("no worker is up: start one with `taskman worker` (or everything with `taskman up`)")
    click.echo()
    click.echo(f"{'QUEUE':28}  {'WAITING':>7}  {'UNACKED':>7}  CONSUMERS")
    for queue in view.queues:
        click.echo(f"{_cell(one_line(queue.name), 28)}  {queue.waiting:>7}  {_number(queue.unacked):>7}  "
                   f"{queue.consumers}")
    click.echo(f"{'(all)':28}  {sum(q.waiting for q in view.queues):>7}  {view.unacked:>7}")
    click.echo()
    click.echo(f"registered tasks ({len(view.tasks)}): " + one_line(", ".join(sorted(view.tasks))))


def _number(value) -> str:
    return "–" if value is None else str(value)


@main.command()
@click.argument("expression")
@click.option("--tz", default="UTC", show_default=True, help="IANA timezone the expression is read in.")
@click.option("--from", "start", help="ISO 8601 instant to start after (default: now).")
@click.option("--count", default=5, show_default=True, type=click.IntRange(1, 1000))
@handles_errors
def cron(expression, tz, start, count) -> None:
    """Print the next fire times of a cron EXPRESSION, one ISO 8601 line each."""
    from core import cron as cron_rules
    from core.errors import InvalidSpec

    try:
        cron_rules.check_timezone(tz)
    except InvalidSpec as exc:
        raise InvalidSpec("--tz", exc.reason) from None
    cron_rules.check_expression(expression, tz)
    if start:
        try:
            after = datetime.fromisoformat(start)
        except ValueError:
            raise InvalidSpec("--from", f"{start!r} is not an ISO 8601 date-time") from None
        if after.tzinfo is None:
            after = after.replace(tzinfo=cron_rules.check_timezone(tz))
    else:
        after = datetime.now(UTC)
    for fire in cron_rules.next_fires(expression, tz, after, count):
        click.echo(fire.isoformat())


@main.command()
@click.argument("task_id", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as they come.")
@click.option("-n", "--lines", default=50, show_default=True, type=click.IntRange(0, 100_000),
              help="How many past lines to show first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@handles_errors
def logs(task_id, follow, lines, as_json) -> None:
    """Print the log stream (of one task when TASK_ID is given); -f follows it."""
    service = _service()
    if task_id:
        service.get(task_id, runs=0)

    names: dict[str, str] = {}

    def name_of(task_id: str) -> str:
        if task_id not in names:
            found = service.tasks([task_id])
            names[task_id] = found[0].name if found else task_id
        return names[task_id]

    def emit(entry: dict) -> None:
        if as_json:
            click.echo(json_text(entry))
        else:
            click.echo(f"{log_time(entry['ts'])} {_cell(one_line(name_of(entry['task'])), 16)} "
                       f"{one_line(entry['level']):7} {one_line(entry['msg'])}")

    history = service.recent_logs(task_id, lines)
    cursor = history[-1][0] if history else service.logs_cursor()
    for _, entry in history:
        emit(entry)
    while follow:
        batch = service.logs_since(cursor, task_id)
        cursor = batch.cursor
        for _, entry in batch.entries:
            emit(entry)


def _served_queue(_ctx, _param, values: tuple[str, ...]) -> tuple[str, ...]:
    """``--queue`` values: taskman's three queues, or a queue of the operator's own for registered tasks."""
    import re

    from core.models import CODE_QUEUE, HTTP_QUEUE, QUEUE_NAME_PATTERN, queue_refusal

    for value in values:
        if not re.match(QUEUE_NAME_PATTERN, value):
            raise click.BadParameter(f"{value!r} is not a queue name (1 to 100 letters, digits, '.', '_', ':', '-')")
        if value not in (CODE_QUEUE, HTTP_QUEUE) and (refusal := queue_refusal(value)):
            raise click.BadParameter(refusal)
    return values


@main.command()
@click.option("--queue", "queues", multiple=True, callback=_served_queue,
              help="Serve only this queue (repeatable): code, http, registered, or a queue of your own that "
                   "registered tasks name in their spec; default: the three.")
@click.option("--concurrency", "-c", type=click.IntRange(1, 1024), help="Processes (prefork) or threads (http).")
@click.option("--prefetch", type=click.IntRange(1, 1000),
              help="Messages each process or thread takes ahead; default: the queue's prefetch_* setting.")
@click.option("--loglevel", "-l", default="INFO", show_default=True, type=LOG_LEVELS)
@handles_errors
def worker(queues, concurrency, prefetch, loglevel) -> None:
    """Start workers: by default a prefork pool for code, one for registered tasks and a threads pool for http."""
    from tui.processes import run_workers

    sys.exit(run_workers(queues, concurrency, loglevel, prefetch))


@main.command()
@click.option("--loglevel", "-l", default="INFO", show_default=True, type=LOG_LEVELS)
@handles_errors
def beat(loglevel) -> None:
    """Start the scheduler (only one acts at a time; others stand by)."""
    from tui.processes import run_beat

    sys.exit(run_beat(loglevel))


@main.command()
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535))
def echo(port) -> None:
    """Serve a small HTTP echo service on 127.0.0.1 to try API tasks on (README's examples call it)."""
    from tui.echo_server import serve

    try:
        serve(port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None


@main.command()
@handles_errors
def tui() -> None:
    """Open the console on the configured (or running embedded) Redis."""
    from tui.app import TaskmanApp

    service = _service()
    service.ping()
    _sized_by_the_terminal()
    TaskmanApp(service.acting_as(f"console:{_user()}")).run()


@main.command()
@click.option("--no-console", is_flag=True, help="Start Redis, worker and scheduler, and wait (for scripts).")
@handles_errors
def up(no_console) -> None:
    """Start everything: a private Redis (unless TASKMAN_REDIS_URL names one), the workers, the scheduler, the
    console."""
    from tui.processes import Stack

    settings = Settings()
    # Until the console opens, what the stack says goes to the terminal (an `up` waiting up to 30 s for a stopping
    # one to finish says so); then the console shows it.
    with Stack(settings, on_report=lambda line: click.echo(f"taskman up: {line}", err=True)) as stack:
        if no_console:
            click.echo(f"taskman is up on {stack.display_url}; Ctrl-C stops it", err=True)
            threading.Thread(target=_say_isolation, args=(stack.settings,), daemon=True).start()
            stack.wait()
        else:
            import signal

            from core.service import Service
            from tui.app import TaskmanApp

            app = TaskmanApp(Service.from_settings(stack.settings).acting_as(f"console:{_user()}"),
                             supervision=stack.status)

            def tell_console(line: str) -> None:
                try:
                    app.call_from_thread(app.notify, line, title="taskman up", severity="warning", timeout=15)
                except RuntimeError:  # the console is not running (yet, or any more): the status line shows it
                    pass

            stack.on_report = tell_console
            signalled: list[int] = []

            def stop_console(signum, _frame):
                signalled.append(signum)
                app.call_later(app.exit)

            for signum in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, stop_console)
            _sized_by_the_terminal()
            try:
                app.run()
                crashed = bool(app.return_code)
            except Exception:
                import traceback

                traceback.print_exc()
                crashed = True
            if crashed and not signalled:
                # The console died of an unexpected error (printed above). The stack is not its to take
                # down: Redis, the worker and the scheduler carry on until asked to stop.
                click.echo(f"\nThe console stopped on an unexpected error (above). Redis, the worker and the "
                           f"scheduler keep running on {stack.display_url}: `taskman tui` opens the console "
                           "again; Ctrl-C here stops everything.", err=True)
                stack.wait()


def _say_isolation(settings: Settings, within: float = 60.0) -> None:
    """Once a code worker has reported, say which isolation walls its code runs get."""
    from core.service import Service

    service = Service.from_settings(settings)
    deadline = time.monotonic() + within
    ok, summary = False, "no code worker reported its isolation walls yet"
    while time.monotonic() < deadline:
        try:
            if service.isolation():
                ok, summary = service.isolation_summary()
                break
        except TaskmanError:  # Redis restarting (NoRedis): ask again
            pass
        time.sleep(0.5)
    click.echo(f"taskman up: {'' if ok else 'WARNING: '}{one_line(summary)}", err=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="Log every request.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Processes serving the one port; they share only Redis (tokens, the rate limit, the audit trail).")
@handles_errors
def api(host, port, log_level, access_log, workers) -> None:
    """Serve the REST API (OpenAPI docs at /docs); every endpoint but /api/health needs a token."""
    import uvicorn

    from api.app import create_app
    from core.service import Service

    settings = Settings()
    service = Service.from_settings(settings)
    service.ping()
    options = {"host": host, "port": port, "log_level": log_level, "access_log": access_log, "server_header": False,
               "timeout_graceful_shutdown": 3}
    if workers == 1:
        uvicorn.run(create_app(service, settings), **options)
    else:  # each process builds its own app, reading the same settings (the environment it inherits)
        uvicorn.run("api.app:from_environment", factory=True, workers=workers, **options)


@main.group()
def token() -> None:
    """Create, list and revoke REST API tokens (roles: viewer, operator, admin)."""


@token.command("create")
@click.option("--name", required=True, help="What the token is for, e.g. ci-bot (unique).")
@click.option("--role", required=True, type=click.Choice(["viewer", "operator", "admin"]))
@click.option("--json", "as_json", is_flag=True, help="Print an object with a `token` field.")
@handles_errors
def token_create(name, role, as_json) -> None:
    """Create a token and print its secret: shown this once, only its hash is kept."""
    secret, record = _service().create_token(name, role)
    if as_json:
        _emit_json({"token": secret, **record})
        return
    click.echo(f"token {name!r} ({role}) created; this is the only time its secret is shown:", err=True)
    click.echo(secret)


@token.command("list")
@click.option("--json", "as_json", is_flag=True)
@handles_errors
def token_list(as_json) -> None:
    """List tokens: name, role, who created them, when last used (never the secrets)."""
    records = _service().tokens()
    if as_json:
        _emit_json(records)
        return
    click.echo(f"{'NAME':24}  {'ROLE':8}  {'CREATED':29}  {'BY':20}  {'LAST USED':29}  FINGERPRINT")
    for record in records:
        click.echo(f"{_cell(one_line(record['name']), 24)}  {record['role']:8}  {record['created_at'] or '–':29}  "
                   f"{_cell(one_line(record['created_by'] or '–'), 20)}  {record['last_used_at'] or '–':29}  "
                   f"{record['fingerprint']}")


@token.command("revoke")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@handles_errors
def token_revoke(name, as_json) -> None:
    """Revoke the token called NAME; requests with it get 401 from now on."""
    record = _service().revoke_token(name)
    if as_json:
        _emit_json(record)
    else:
        click.echo(f"revoked {name} ({record['role']})")


@main.command("audit")
@click.option("-n", "--lines", default=50, show_default=True, type=click.IntRange(1, 1000),
              help="How many recent entries.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new entries as they come.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON: an array, newest first (as GET /api/audit); with -f one object per line.")
@handles_errors
def audit_trail(lines, follow, as_json) -> None:
    """Print the audit trail: who changed what, when, from which front end."""
    service = _service()
    entries = service.audit_entries(lines)
    if as_json and not follow:
        _emit_json(entries)
        return

    def emit(entry: dict) -> None:
        if as_json:
            click.echo(json_text(entry))
            return
        detail = json_text(entry["detail"]) if entry["detail"] else ""
        click.echo(f"{local_time(entry['ts'])}  {_cell(one_line(entry['actor']), 20)}  {one_line(entry['action']):12}  "
                   f"{one_line(entry['target']):16}  {one_line(detail)}")

    for entry in reversed(entries):
        emit(entry)
    cursor = entries[0]["id"] if entries else "0-0"  # the newest entry, or the start of an empty trail
    while follow:
        batch = service.audit_since(cursor)
        cursor = batch.cursor
        for _, entry in batch.entries:
            emit(entry)


if __name__ == "__main__":
    main()
