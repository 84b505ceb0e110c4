"""Workers and queues (Flower's first page): who serves what, how busy, how isolated, what waits.

One read of ``Service.workers`` (``core.workers``) fills three tables: the workers (host, pool,
concurrency, runs active, messages processed, last heartbeat, isolation walls), the queues (waiting and
unacknowledged messages, live consumers) and the registered task names. The next read is scheduled
only after the last one ended (every ``EVERY`` seconds while the screen is open), so reads never pile up.
"""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from core.errors import TaskmanError
from core.models import CODE_QUEUE, HTTP_QUEUE
from core.service import Service
from core.text import human_ago
from core.workers import Overview, WorkerInfo
from tui.guard import CarriesOn
from tui.safe import plain
from tui.screens.help import ShowsKeys

EVERY = 2.0
WIDE = 150
"""From this width on, the walls column names each wall with its mark, and the host has its own column."""
OWN_QUEUES = (CODE_QUEUE, HTTP_QUEUE)
"""taskman's own queues: a registered task can never be sent to them, so its row does not name them."""
SHORT_WALLS = {"fresh_process": "fresh", "clean_env": "env", "user": "user", "no_new_privs": "nnp",
               "rlimits": "rlimits", "landlock": "landlock", "seccomp": "seccomp", "netns": "netns"}


class OverviewRead(Message):
    """A read of the overview finished: the overview, or why there is none."""

    def __init__(self, overview: Overview | None, error: str = "") -> None:
        super().__init__()
        self.overview = overview
        self.error = error


def walls_cell(worker: WorkerInfo, wide: bool) -> Text:
    """The WALLS column: every wall with ✔/✘ (wide), or a summary naming the walls that are down."""
    if worker.walls is None:
        return Text("no code runs", style="dim")
    if not wide:
        style = "green" if all(worker.walls.values()) else ("bold red" if worker.missing else "yellow")
        return plain(worker.walls_summary(verdict=False), style=style)
    cell = Text()
    for wall, up in worker.walls.items():
        if cell:
            cell.append(" ")
        cell.append(f"{'✔' if up else '✘'}{SHORT_WALLS.get(wall, wall)}",
                    style="green" if up else ("bold red" if wall in worker.missing else "yellow"))
    if worker.missing:
        cell.append(" → runs code anyway" if worker.accept_weak else " → refuses code runs", style="bold red")
    return cell


def heartbeat_cell(worker: WorkerInfo) -> Text:
    """The HEARTBEAT column: how long ago the worker last beat, and whether that is too long."""
    if worker.beat_age is None:
        return Text("–", style="dim")
    if worker.alive:
        return Text(human_ago(worker.beat_age))
    return Text(f"silent {human_ago(worker.beat_age).removesuffix(' ago')}", style="bold red")


class WorkersScreen(ShowsKeys, CarriesOn, Screen[None]):
    """The workers, queues and registered task names; refreshed every couple of seconds."""

    CSS_PATH = "workers.tcss"
    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "back", id="workers.back", tooltip="Back to the task list"),
        Binding("r", "reload", "refresh", id="workers.reload", tooltip="Read everything again now"),
        Binding("question_mark", "help", "keys", id="workers.help", tooltip="Show this screen's keys"),
    ]

    def __init__(self, service: Service) -> None:
        super().__init__()
        self.service = service
        self.overview: Overview | None = None
        self.wide: bool | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="workers-banner")
        yield DataTable(id="workers", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="lower"):
            yield DataTable(id="queues", cursor_type="row", zebra_stripes=True)
            with Vertical(id="registered-box"):
                yield DataTable(id="registered", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#workers-banner", Static).display = False
        self.query_one("#workers", DataTable).border_title = "Workers"
        self.query_one("#queues", DataTable).border_title = "Queues"
        self.query_one("#registered", DataTable).border_title = "Registered tasks"
        self._columns(self.size.width >= WIDE)
        self.read()
        self.query_one("#workers", DataTable).focus()

    def on_resize(self, event) -> None:
        if (event.size.width >= WIDE) != self.wide:
            self._columns(event.size.width >= WIDE)
            if self.overview is not None:
                self._show(self.overview)

    def _columns(self, wide: bool) -> None:
        self.wide = wide
        workers = self.query_one("#workers", DataTable)
        workers.clear(columns=True)
        names = ["WORKER", *(["HOST"] if wide else []), "POOL", "CONC", "ACTIVE", "PROCESSED", "HEARTBEAT", "WALLS"]
        for name in names:
            workers.add_column(name, key=name.lower())
        queues = self.query_one("#queues", DataTable)
        if not queues.columns:
            for name in ("QUEUE", "WAITING", "UNACKED", "WORKERS"):
                queues.add_column(name, key=name.lower())
            registered = self.query_one("#registered", DataTable)
            for name in ("NAME", "QUEUES", "WORKERS"):
                registered.add_column(name, key=name.lower())

    def action_reload(self) -> None:
        self.read()

    @work(thread=True, exclusive=True, group="workers-read")
    def read(self) -> None:
        """Read the overview off the UI thread and hand it back as a message."""
        try:
            overview = self.service.workers()
        except TaskmanError as exc:  # Redis away (NoRedis): say so, and read again later
            self.post_message(OverviewRead(None, f"{exc.message} — reading again…"))
        else:
            self.post_message(OverviewRead(overview))

    @on(OverviewRead)
    def _read(self, message: OverviewRead) -> None:
        banner = self.query_one("#workers-banner", Static)
        banner.display = message.overview is None
        if message.overview is None:
            banner.update(plain(message.error))
        else:
            self.overview = message.overview
            self._show(message.overview)
        self.set_timer(EVERY, self.read)

    def _show(self, overview: Overview) -> None:
        wide = bool(self.wide)
        workers = self.query_one("#workers", DataTable)
        kept = self._cursor_key(workers)
        workers.clear()
        for worker in overview.workers:
            cells = [plain(worker.name, style="bold" if worker.alive else "dim"),
                     *([plain(worker.host)] if wide else []), plain(worker.pool),
                     _number(worker.concurrency), _number(worker.active), _number(worker.processed),
                     heartbeat_cell(worker), walls_cell(worker, wide)]
            workers.add_row(*cells, key=worker.name)
        alive = sum(worker.alive for worker in overview.workers)
        workers.border_title = f"Workers ({alive} up" + (f", {len(overview.workers) - alive} silent)"
                                                         if alive < len(overview.workers) else ")")
        if not overview.workers:
            workers.add_row(Text("no worker is up: start one with `taskman worker` (or `taskman up`)", style="dim"),
                            *[""] * (len(workers.columns) - 1))
        self._restore(workers, kept)

        queues = self.query_one("#queues", DataTable)
        kept = self._cursor_key(queues)
        queues.clear()
        for queue in overview.queues:
            queues.add_row(plain(queue.name), _number(queue.waiting, zero_dim=True),
                           _number(queue.unacked, zero_dim=True),
                           Text(str(queue.consumers), style="" if queue.consumers else "bold red"), key=queue.name)
        waiting = sum(queue.waiting for queue in overview.queues)
        queues.border_title = f"Queues ({waiting} waiting, {overview.unacked} unacked)"
        self._restore(queues, kept)

        registered = self.query_one("#registered", DataTable)
        kept = self._cursor_key(registered)
        registered.clear()
        for name, detail in overview.tasks.items():
            sendable = [queue for queue in detail.get("queues", ()) if queue not in OWN_QUEUES]
            registered.add_row(plain(name), plain(", ".join(sendable)),
                               plain(", ".join(detail.get("workers", ()))), key=name)
        registered.border_title = f"Registered tasks ({len(overview.tasks)})"
        self._restore(registered, kept)

    @staticmethod
    def _cursor_key(table: DataTable) -> str | None:
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    @staticmethod
    def _restore(table: DataTable, key: str | None) -> None:
        """Keep the cursor on the row it was on before a refresh."""
        if key is not None and key in table.rows:
            table.move_cursor(row=table.get_row_index(key), animate=False)


def _number(value: int | None, *, zero_dim: bool = False) -> Text:
    if value is None:
        return Text("–", style="dim")
    return Text(str(value), style="dim" if zero_dim and value == 0 else "", justify="right")
