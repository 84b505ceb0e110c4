"""The workers and queues overview (Flower's first page): who serves what, how busy, how isolated.

Everything comes from what the workers already write to Redis: their registry entry at start (task
names, queues served, the isolation walls their code runs get), their heartbeat every 2 s with a few
numbers about themselves (host, pool, concurrency, runs active, messages processed), and the Celery
queues themselves (a list per queue, kombu's hash of unacknowledged messages). Reading it costs a few
round trips and no scan, so a screen may ask every couple of seconds while it is open.

Times are Redis's clock (``at``), the one the heartbeats are written by, so "seen 3 s ago" does not
depend on the reader's clock.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from core.metrics import BASE_QUEUES
from core.models import CODE_QUEUE, iso
from core.store import Store
from core.walls import ALL_WALLS

FORGOTTEN_AFTER = 86_400.0
"""A worker silent for longer than this (killed a day ago, its machine gone) is no longer listed."""
UNACKED_DETAIL_UP_TO = 2000
"""Unacknowledged messages are counted per queue while there are at most this many (else only in all)."""


@dataclass
class WorkerInfo:
    """One Celery worker as its registry entry and last heartbeat describe it."""

    name: str
    """The Celery node name (``code@host``)."""
    host: str
    pid: int | None
    pool: str
    """``prefork``, ``threads``, ``solo``, … (``?`` before its first heartbeat with numbers)."""
    concurrency: int | None
    queues: list[str]
    active: int | None
    """Runs it is executing now."""
    processed: int | None
    """Messages it has taken since it started."""
    last_beat: float | None
    """When it last said it was alive (Redis's clock)."""
    beat_age: float | None
    """Seconds since then, at the overview's ``at``."""
    alive: bool
    walls: dict[str, bool] | None = None
    """Wall → up, for a worker that runs code; None for one that does not."""
    missing: list[str] = field(default_factory=list)
    """Required walls that are down (such a worker refuses code runs unless ``accept_weak``)."""
    accept_weak: bool = False
    prefetch: int | None = None
    """Messages each of its processes (threads) takes ahead of the one it runs; None if it did not say."""

    def walls_summary(self, *, verdict: bool = True) -> str:
        """The isolation walls in a few words: "all 8 up", "landlock, seccomp down, refuses code runs"
        (without ``verdict``, what follows the comma is left out), "no code runs" (a worker that serves no
        code queue)."""
        if self.walls is None:
            return "no code runs"
        down = [wall for wall, up in self.walls.items() if not up]
        if not down:
            return f"all {len(self.walls)} up"
        says = "" if not self.missing or not verdict else (
            ", runs code anyway" if self.accept_weak else ", refuses code runs")
        return f"{', '.join(down)} down{says}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "last_beat": iso(self.last_beat), "walls_summary": self.walls_summary()}


@dataclass
class QueueInfo:
    """One Celery queue: messages waiting, messages delivered and not yet acknowledged, live consumers."""

    name: str
    waiting: int
    unacked: int | None
    """None when there are too many unacknowledged messages to count them per queue."""
    consumers: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Overview:
    """Workers, queues and registered task names at one moment (``at``, Redis's clock)."""

    at: float
    workers: list[WorkerInfo]
    queues: list[QueueInfo]
    unacked: int
    """Unacknowledged messages in all queues."""
    tasks: dict[str, dict]
    """Registered task name → ``{"workers": [...], "queues": [...]}`` (``Store.registered``)."""

    def to_dict(self) -> dict[str, Any]:
        return {"at": iso(self.at), "workers": [worker.to_dict() for worker in self.workers],
                "queues": [queue.to_dict() for queue in self.queues], "unacked": self.unacked,
                "registered_tasks": self.tasks}


def host_of(node: str) -> str:
    """The host part of a Celery node name (``code@box`` → ``box``)."""
    return node.rpartition("@")[2] or node


def overview(store: Store, alive_window: float) -> Overview:
    """Read the overview; a worker is alive if it beat within ``alive_window`` seconds."""
    now = store.server_time()
    beats = store.heartbeats()
    reports = store.worker_reports()
    stats = store.worker_stats()
    workers: list[WorkerInfo] = []
    for node, beat in sorted(beats.items()):
        age = max(0.0, now - beat)
        if age > FORGOTTEN_AFTER:
            continue
        report, said = reports.get(node, {}), stats.get(node, {})
        isolation = report.get("isolation") or None
        queues = sorted(report.get("queues") or ())
        walls = None
        if isolation is not None or CODE_QUEUE in queues:
            up = (isolation or {}).get("up") or {}
            walls = {wall: bool(up.get(wall)) for wall in (*ALL_WALLS, *sorted(set(up) - set(ALL_WALLS)))}
        workers.append(WorkerInfo(
            name=node, host=str(said.get("host") or host_of(node)), pid=said.get("pid"),
            pool=str(said.get("pool") or "?"), concurrency=said.get("concurrency"), queues=queues,
            active=said.get("active"), processed=said.get("processed"), last_beat=beat, beat_age=age,
            alive=age <= alive_window, walls=walls, missing=list((isolation or {}).get("missing") or ()),
            accept_weak=bool((isolation or {}).get("accept_weak")), prefetch=said.get("prefetch")))
    names = set(BASE_QUEUES)
    for report in reports.values():
        names.update(report.get("queues") or ())
    gauges = store.gauges(sorted(names), now - alive_window)
    by_queue = store.unacked_by_queue(UNACKED_DETAIL_UP_TO)
    queues = [QueueInfo(name=name, waiting=int(gauges["queues"][name]),
                        unacked=None if by_queue is None else by_queue.get(name, 0),
                        consumers=sum(1 for worker in workers if worker.alive and name in worker.queues))
              for name in sorted(names)]
    return Overview(at=now, workers=workers, queues=queues, unacked=int(gauges["unacked"]),
                    tasks=store.registered())
