"""The main screen: task list, editor and live logs, with the status line on top.

Every Redis read runs in a thread worker and comes back as a message, one per stream read (a burst of
events or log lines is one message, not one per entry); the list is loaded once, the newest page drawn
before the older pages are read, and then kept current from the events stream (only the tasks an event
names are read again), so a list of ten thousand tasks stays responsive and an idle console costs Redis
one blocking read per stream. A worker's unexpected error goes
to the app (``TaskmanApp.report_error``); Redis being away is ``NoRedis``, shown in the banner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Input, Static
from textual.worker import get_current_worker

from core import filters
from core.errors import NoRedis, TaskmanError
from core.metrics import Activity
from core.models import Mode, Task, TaskState
from core.service import Service
from tui import actions, feed
from tui.guard import CarriesOn
from tui.safe import plain
from tui.widgets.editor import EditorPane
from tui.widgets.log_pane import LogPane
from tui.widgets.status_bar import StatusBar
from tui.widgets.task_table import TaskTable

if TYPE_CHECKING:
    from tui.app import TaskmanApp

FIRST_PAGE = 500
"""Tasks read before the list is first drawn: the newest, so the first paint does not wait for the rest."""
PAGE = 2_000
"""Tasks read per message after the first page (drawn), each added below the rows already shown; small
enough that the console answers keys between two pages."""
MOST = 20_000
"""Tasks the console holds (the newest); a filter also searches the older ones (``search_older``), and
``taskman list`` and the API page through them all."""
FOUND_MOST = 1_000
"""Older tasks one search brings in (they stay held, below the others, and are followed like them). They are
read from Redis, about 2.5 s of CPU for 80,000 here."""
FILTER_AT_ONCE = 2_000
"""Up to this many tasks held, the list is filtered at every key typed; past it (so whenever the console holds
``MOST`` and searches the older tasks too), at a pause in the typing."""
FILTER_PAUSE = 0.15
"""Seconds without a key after which a long list is filtered (drawing 20,000 rows takes over a second)."""
SEARCH_YIELD = 0.01
"""Seconds the search pauses after each page of 500, so the keys and the list stay quick meanwhile."""
STATUS_EVERY = 3.0
"""Seconds between reads of the status line (one round trip, ~8 commands): with the two blocking stream
reads, an idle console costs Redis under 5 commands per second (`bench/console.py`)."""
NARROW = 110


@dataclass
class TasksLoaded(Message):
    """The newest tasks were read (first load or after Redis came back); ``drawn`` is set once they are."""

    tasks: list[Task]
    drawn: threading.Event = field(default_factory=threading.Event)


@dataclass
class TasksMore(Message):
    """The next page of older tasks, read after the first paint; ``last`` when no more will come, and
    ``truncated`` when that is because the console holds ``MOST`` and older ones may exist."""

    tasks: list[Task]
    last: bool
    drawn: threading.Event = field(default_factory=threading.Event)
    truncated: bool = False


@dataclass
class OlderFound(Message):
    """What a search of the tasks the console does not hold found for the filter ``text``."""

    text: str
    tasks: list[Task]


@dataclass
class TasksChanged(Message):
    """Events named these tasks; ``tasks`` holds their new state, ``gone`` the deleted ids."""

    tasks: list[Task]
    gone: list[str]


@dataclass
class LogsArrived(Message):
    """New entries on the log stream: everything one read of it brought."""

    entries: list[dict]


@dataclass
class StatusRead(Message):
    """The status line's numbers (or, with ``error``, that Redis is unreachable)."""

    values: dict | None
    error: str = ""


class MainScreen(CarriesOn, Screen):
    """Lists tasks, edits the selected one, and tails logs."""

    CSS_PATH = "main.tcss"
    BINDINGS = actions.bindings()

    def __init__(self, service: Service) -> None:
        super().__init__()
        self.service = service
        self.activity = Activity()
        self.redis_ok = True
        self.truncated = False
        """The console holds ``MOST`` tasks and older ones may exist: a filter searches them too."""
        self.searching = False
        self._filter_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield Static("", id="banner")
        with Horizontal(id="top"):
            with Vertical(id="list"):
                yield TaskTable(id="tasks")
                yield Static("", id="empty")
            yield EditorPane(id="editor")
        yield Input(placeholder="filter: words in names, state:failed last:running kind:api mode:cron", id="filter")
        yield LogPane(id="logs")
        yield Footer()

    @property
    def table(self) -> TaskTable:
        return self.query_one(TaskTable)

    @property
    def editor(self) -> EditorPane:
        return self.query_one(EditorPane)

    @property
    def logs(self) -> LogPane:
        return self.query_one(LogPane)

    def on_resize(self, event) -> None:
        """Below 110 columns the editor opens only while editing (``e``), so the list keeps its width."""
        self.set_class(event.size.width < NARROW, "narrow")

    def on_mount(self) -> None:
        self.query_one("#list").border_title = "Tasks"
        self.logs.border_title = "Logs · all (follow)"
        self.query_one("#filter", Input).display = False
        self.start_feeds()
        self.set_interval(1.0, self.table.refresh_due_times)
        self.table.focus()

    def start_feeds(self) -> None:
        self.watch_tasks()
        self.tail_logs()
        self.poll_status()

    # -- readers (thread workers) ----------------------------------------------------------------

    @work(thread=True, exclusive=True, group="tasks")
    def watch_tasks(self) -> None:
        """Load every task, then follow the events stream and re-read only what events name."""
        worker = get_current_worker()
        delay = 0.5
        while not worker.is_cancelled:
            try:
                activity, cursor = self.service.recent_activity()
                self.activity = activity
                self._load_pages(worker)
                delay = 0.5
                while not worker.is_cancelled:
                    batch = self.service.events_since(cursor)
                    cursor = batch.cursor
                    if not batch.entries:
                        continue
                    changed: set[str] = set()
                    gone: list[str] = []
                    for _, event in batch.entries:
                        self.activity.add(event)
                        task_id = event.get("task_id")
                        if not task_id:
                            continue
                        if event.get("type") == "task.deleted":
                            gone.append(task_id)
                            changed.discard(task_id)
                        else:
                            changed.add(task_id)
                    tasks = self.service.tasks(changed)
                    gone += [task_id for task_id in changed if task_id not in {t.id for t in tasks}]
                    self.post_message(TasksChanged(tasks, gone))
            except NoRedis as exc:
                self.post_message(StatusRead(None, exc.cause or exc.message))
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _load_pages(self, worker) -> None:
        """The newest tasks first (drawn at once), then older pages below them, up to ``MOST``. A task created
        meanwhile shifts the pages by one (read twice, kept once); the events read afterwards bring every
        change made meanwhile."""
        first = self.service.list_tasks(limit=FIRST_PAGE)
        drawn = threading.Event()
        self.post_message(TasksLoaded(first, drawn))
        offset, last = len(first), len(first) < FIRST_PAGE
        while not last and not worker.is_cancelled:
            drawn.wait(5.0)  # this thread's reading would otherwise hold the GIL while the first page draws
            drawn = threading.Event()
            size = min(PAGE, MOST - offset)
            page = self.service.list_tasks(limit=size, offset=offset) if size > 0 else []
            offset += len(page)
            last = len(page) < size or offset >= MOST
            self.post_message(TasksMore(page, last, drawn, truncated=len(page) == size and offset >= MOST))

    @work(thread=True, exclusive=True, group="search")
    def search_older(self, text: str) -> None:
        """The tasks past the ones held that the filter ``text`` picks (at most ``FOUND_MOST``); a newer filter
        cancels this search."""
        worker = get_current_worker()

        def stop_or_yield() -> bool:
            time.sleep(SEARCH_YIELD)  # between two pages read, the console's own thread gets the processor
            return worker.is_cancelled

        try:
            found = self.service.matching_tasks(filters.parse(text, partial=True), limit=FOUND_MOST,
                                                older_than=max(0, MOST - PAGE), cancelled=stop_or_yield)
        except NoRedis:
            found = []
        if not worker.is_cancelled:
            self.post_message(OlderFound(text, found))

    @work(thread=True, exclusive=True, group="logs")
    def tail_logs(self) -> None:
        """The last lines, then every batch of new ones as one message, until cancelled."""
        worker = get_current_worker()
        cursor: str | None = None
        while not worker.is_cancelled:
            try:
                if cursor is None:
                    recent = self.service.recent_logs(None, 500)
                    cursor = recent[-1][0] if recent else self.service.logs_cursor()
                    if recent:
                        self.post_message(LogsArrived([entry for _, entry in recent]))
                batch = self.service.logs_since(cursor)
                cursor = batch.cursor
                if batch.entries:
                    self.post_message(LogsArrived([entry for _, entry in batch.entries]))
            except NoRedis:
                time.sleep(1.0)

    @work(thread=True, exclusive=True, group="status")
    def poll_status(self) -> None:
        """Read the status line's numbers; the next read is scheduled only after this one ends."""
        try:
            values = feed.status(self.service)
        except NoRedis as exc:
            self.post_message(StatusRead(None, exc.cause or exc.message))
        else:
            self.post_message(StatusRead(values))

    # -- messages from the readers -----------------------------------------------------------------

    @on(TasksLoaded)
    def _loaded(self, message: TasksLoaded) -> None:
        self.truncated = False  # until the last page says otherwise
        self.table.load(message.tasks)
        self.logs.names = {task.id: task.name for task in message.tasks}
        scoped = self.table.tasks.get(self.logs.scope) if self.logs.scope else None
        self.logs.show_scope(self.logs.scope, self._log_title(scoped))
        self._show_count()
        self.call_after_refresh(message.drawn.set)

    @on(TasksMore)
    def _more(self, message: TasksMore) -> None:
        self.table.extend(message.tasks, last=message.last)
        self.truncated = message.truncated
        self.logs.names.update({task.id: task.name for task in message.tasks})
        self._show_count()
        self.call_after_refresh(message.drawn.set)

    @on(TasksChanged)
    def _changed(self, message: TasksChanged) -> None:
        for task_id in message.gone:
            self.table.remove_task(task_id)
        self.table.upsert(message.tasks)
        self.logs.names.update({task.id: task.name for task in message.tasks})
        self._show_count()

    @on(OlderFound)
    def _older_found(self, message: OlderFound) -> None:
        if message.text != self.query_one("#filter", Input).value:
            return  # the filter changed since: its own search is on its way
        self.searching = False
        self.table.extend(message.tasks, last=True)  # last: the name column widens for longer names found
        self.logs.names.update({task.id: task.name for task in message.tasks})
        self._show_count()

    def _show_count(self) -> None:
        """The list's title counts the tasks (shown/all while a filter is on); an empty list says what to do."""
        table, box = self.table, self.query_one("#list")
        total = len(table.tasks)
        counted = f"Tasks ({table.row_count}/{total})" if table.filtered else f"Tasks ({total})"
        box.border_title = f"{counted} · {table.sort_label}" if table.sort_label else counted
        if table.row_count:
            hint = ""
        elif table.filtered and self.searching:
            hint = f"No task of the newest {total:,} matches; searching the older ones…"
        elif table.filtered:
            hint = "No task matches the filter; esc clears it."
        else:
            hint = "No tasks yet. Press n to create one, or i to import a JSON file."
        empty = self.query_one("#empty", Static)
        if empty.content != hint:  # an update lays the whole screen out again: only when it says more
            empty.update(hint)
        box.set_class(not table.row_count, "empty")

    @on(LogsArrived)
    def _logs(self, message: LogsArrived) -> None:
        self.logs.add(message.entries)

    @on(StatusRead)
    def _status(self, message: StatusRead) -> None:
        banner = self.query_one("#banner", Static)
        app = cast("TaskmanApp", self.app)
        location = app.redis_label
        if message.values is None:
            self.redis_ok = False
            banner.update(plain(f"Redis at {location} is unreachable ({message.error}) — reconnecting…"))
            banner.display = True
            self.query_one(StatusBar).update(redis=location, ok=False, workers=0, due=0,
                                             per_minute=self.activity.per_minute(),
                                             failed_hour=self.activity.failures_last_hour())
        else:
            if not self.redis_ok:
                banner.display = False
                self.redis_ok = True
            banner.display = False
            values = message.values
            self.query_one(StatusBar).update(redis=location, ok=True, workers=values["workers"],
                                             due=values["due"], queued=values["queued"],
                                             scheduler=values["scheduler"], per_minute=self.activity.per_minute(),
                                             failed_hour=self.activity.failures_last_hour(),
                                             walls=values.get("walls", ""), restarts=app.restarts())
        self.set_timer(STATUS_EVERY, self.poll_status)

    @on(TaskTable.Sorted)
    def _sorted(self) -> None:
        self._show_count()

    @on(TaskTable.Selected)
    def _selected(self, message: TaskTable.Selected) -> None:
        self.editor.show(message.task)
        if self.logs.scope is not None and message.task is not None and not self.editor.dirty:
            self.logs.show_scope(message.task.id, self._log_title(message.task))

    def _log_title(self, task: Task | None) -> Text:
        follow = "follow" if self.logs.following else "held"
        return plain(f"Logs · {task.name if task else 'all'} ({follow})")

    @on(EditorPane.SaveRequested)
    def _save(self, message: EditorPane.SaveRequested) -> None:
        self.call_service(self.service.update, message.task_id, message.changes, on_done=self._saved,
                          on_refused=lambda exc: self.editor.set_hint(exc.message, error=True))

    def _saved(self, task: Task) -> None:
        self.editor.saved(task)
        self.table.upsert([task])
        self._show_count()
        self.remove_class("editing")
        self.table.focus()

    # -- actions -----------------------------------------------------------------------------------

    @work(thread=True)
    def call_service(self, call: Callable[..., Any], *args: Any, on_done: Callable[[Any], None] | None = None,
                     on_refused: Callable[[TaskmanError], None] | None = None, success: str = "") -> None:
        """Run ``call(*args)`` (a service method) off the UI thread; then ``on_done`` with what it returned.
        An error users can cause goes to ``on_refused``, or is a notification."""
        try:
            result = call(*args)
        except TaskmanError as exc:
            if on_refused is not None:
                self.app.call_from_thread(on_refused, exc)
            else:
                self.app.call_from_thread(self.notify, exc.message, title=exc.title, severity="error")
            return
        if on_done is not None:
            self.app.call_from_thread(on_done, result)
        if success:
            self.app.call_from_thread(self.notify, success)

    def _need_task(self) -> Task | None:
        task = self.table.selected
        if task is None:
            self.notify("no task selected", severity="warning")
        return task

    def action_new_task(self) -> None:
        from tui.screens.new_task import NewTaskScreen

        self.app.push_screen(NewTaskScreen(self.service), self._created)

    def action_duplicate_task(self) -> None:
        from tui.screens.new_task import NewTaskScreen

        if task := self._need_task():
            self.app.push_screen(NewTaskScreen(self.service, template=task), self._created)

    def _created(self, task: Task | None) -> None:
        """The form made ``task``: put the cursor on it (clearing a filter that hides it), so the next key
        acts on the new task, not on the one that was selected before. The events feed may have brought it
        already, fresher (a run that started or even ended since the form's create returned): that one stays."""
        if task is None:
            return
        if task.id not in self.table.tasks:
            self.table.upsert([task])
        if not self.table.select(task.id):
            self._close_filter(clear=True)
            self.table.select(task.id)
        self._show_count()
        self.table.focus()

    def action_open_detail(self) -> None:
        from tui.screens.detail import DetailScreen

        if task := self._need_task():
            self.app.push_screen(DetailScreen(self.service, task.id))

    @on(TaskTable.RowSelected, "#tasks")
    def _row_chosen(self) -> None:
        self.action_open_detail()

    def action_run_task(self) -> None:
        if task := self._need_task():
            self.call_service(self.service.run_now, task.id, success=f"queued a run of {task.name}")

    def action_stop_task(self) -> None:
        if task := self._need_task():
            self.call_service(self.service.stop, task.id, success=f"stopped {task.name}")

    def action_toggle_pause(self) -> None:
        if task := self._need_task():
            if task.mode is Mode.IMMEDIATE:
                self.notify(f"{task.name} runs once, now; there is no schedule to pause", severity="warning")
            elif task.state is TaskState.PAUSED:
                self.call_service(self.service.resume, task.id, success=f"resumed {task.name}")
            else:
                self.call_service(self.service.pause, task.id, success=f"paused {task.name}")

    def action_edit_task(self) -> None:
        if self._need_task():
            self.add_class("editing")
            self.editor.area.focus()

    def action_save(self) -> None:
        self.editor.request_save()

    def action_discard(self) -> None:
        """esc: in the filter box, clear the filter; in the editor (or with its changes unsaved), discard them;
        with a filter on, clear it. Each goes back to the list."""
        if self.logs.close_find():  # esc in the log pane's find box closes it, and only it
            return
        box = self.query_one("#filter", Input)
        if box.has_focus or (box.display and not self.editor.dirty and not self.editor.has_focus_within):
            self._close_filter(clear=True)
            return
        if self.editor.dirty:
            self.editor.discard()
        self.remove_class("editing")
        self.table.focus()

    def action_delete_task(self) -> None:
        from tui.screens.confirm import ConfirmScreen

        if task := self._need_task():
            def confirmed(yes: bool | None) -> None:
                if yes:
                    self.call_service(self.service.delete, task.id, success=f"deleted {task.name}")

            self.app.push_screen(ConfirmScreen(f"Delete {task.name}? Its schedule and definition go; "
                                               "its run history expires later."), confirmed)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_typed(self, event: Input.Changed) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
            self._filter_timer = None
        if len(self.table.tasks) <= FILTER_AT_ONCE:
            self._filter(event.value)
        else:  # each key would draw the list again: wait for a pause in the typing
            self._filter_timer = self.set_timer(FILTER_PAUSE, lambda text=event.value: self._filter(text))

    def _filter(self, text: str) -> None:
        self._filter_timer = None
        self.table.apply_filter(text)
        self.searching = self.truncated and bool(text.strip())
        if self.searching:
            self.search_older(text)
        else:
            self.workers.cancel_group(self, "search")
        self._show_count()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self._close_filter(clear=False)

    def _close_filter(self, *, clear: bool) -> None:
        box = self.query_one("#filter", Input)
        if clear:
            if self._filter_timer is not None:
                self._filter_timer.stop()
            box.value = ""
            self._filter("")
        box.display = bool(box.value)
        self.table.focus()

    def action_toggle_log_scope(self) -> None:
        task = self.table.selected
        if self.logs.scope is None and task is not None:
            self.logs.show_scope(task.id, self._log_title(task))
        else:
            self.logs.show_scope(None, self._log_title(None))

    def action_toggle_follow(self) -> None:
        self.logs.set_following(not self.logs.following)
        self.logs.border_title = self._log_title(self.table.selected if self.logs.scope else None)

    @on(LogPane.FollowChanged)
    def _follow_changed(self) -> None:
        """The log pane held itself (a jump to a match): its title says so."""
        self.logs.border_title = self._log_title(self.table.selected if self.logs.scope else None)

    def action_import_json(self) -> None:
        from tui.screens.import_file import ImportScreen

        self.app.push_screen(ImportScreen(self.service), self._imported)

    def _imported(self, tasks: list[Task] | None) -> None:
        """The import made ``tasks``: the cursor lands on the first of them, as after ``n``."""
        if tasks:
            self.table.upsert([task for task in tasks if task.id not in self.table.tasks])
            self._created(tasks[0])

    def action_audit(self) -> None:
        from tui.screens.audit import AuditScreen

        self.app.push_screen(AuditScreen(self.service))

    def action_focus_logs(self) -> None:
        self.logs.focus()

    def action_workers(self) -> None:
        from tui.screens.workers import WorkersScreen

        self.app.push_screen(WorkersScreen(self.service))

    def action_run_with(self) -> None:
        from tui.screens.run_with import RunWithScreen

        if task := self._need_task():
            self.app.push_screen(RunWithScreen(self.service, task))

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        self.app.push_screen(HelpScreen())
