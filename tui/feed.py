"""Background reads of Redis for the console, as plain functions the screens run in thread workers.

Nothing here touches a widget: each reader returns data or posts messages that the screens turn into
UI updates on the UI thread. Live updates come from blocking reads of the events and log streams.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import cast

from core import metrics
from core.events import RUN_ENDINGS, EventType
from core.service import Service
from core.store import Entry

RATE_BUCKETS = 30


@dataclass
class Activity:
    """Runs per minute and failures in the last hour, counted from the events stream."""

    finished: deque = field(default_factory=deque)
    failed: deque = field(default_factory=deque)

    def add(self, event: dict) -> None:
        kind = event.get("type", "")
        if kind in RUN_ENDINGS:
            stamp = float(event.get("ts") or time.time())
            self.finished.append(stamp)
            if kind in (EventType.RUN_FAILED, EventType.RUN_TIMED_OUT):
                self.failed.append(stamp)
        self._trim()

    def _trim(self) -> None:
        now = time.time()
        while self.finished and self.finished[0] < now - 60 * RATE_BUCKETS:
            self.finished.popleft()
        while self.failed and self.failed[0] < now - 3600:
            self.failed.popleft()

    def per_minute(self) -> list[float]:
        """Finished runs in each of the last ``RATE_BUCKETS`` minutes, oldest first."""
        self._trim()
        now = time.time()
        buckets = [0.0] * RATE_BUCKETS
        for stamp in self.finished:
            index = RATE_BUCKETS - 1 - int((now - stamp) // 60)
            if 0 <= index < RATE_BUCKETS:
                buckets[index] += 1
        return buckets

    def failures_last_hour(self) -> int:
        self._trim()
        return len(self.failed)


def recent_activity(service: Service) -> tuple[Activity, str]:
    """Activity of the last hour read once from the events stream, and the id to follow from."""
    activity = Activity()
    since = int((time.time() - 3600) * 1000)
    entries = cast(list[Entry], service.store.redis.xrange(service.store.keys.events, min=f"{since}-0", count=20_000))
    for _, entry in entries:
        activity.add(json.loads(entry["event"]))
    last = service.store.stream_tail("events", 1)
    return activity, (last[0][0] if last else "0-0")


def status(service: Service) -> dict:
    """What the status line shows: the same numbers ``GET /metrics`` serves (``core.metrics``)."""
    snap = metrics.snapshot(service.store, service.settings.heartbeat_ttl)
    reports = service.isolation()
    missing = sorted({wall for report in reports.values() for wall in report.get("missing", ())})
    walls = "" if not reports else ("jail ●" if not missing else "walls ✘ " + ",".join(missing))
    lost = service.data_loss()
    if lost and time.time() - lost["at"] < 86400:
        walls = f"REDIS LOST ITS DATA {time.strftime('%m-%d %H:%M', time.localtime(lost['at']))}   {walls}".strip()
    return {"ok": True, "due": snap.due, "workers": snap.workers, "queued": sum(snap.queues.values()),
            "scheduler": snap.scheduler, "walls": walls}
