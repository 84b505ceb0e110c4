"""Numbers for monitoring: kept incrementally in Redis, read in one round trip, shown anywhere.

Counters are never computed by scanning runs. A worker's finish adds to them in the same MULTI as
the run's final transition (guarded: a finish that lost to a stop adds nothing); a stop adds its
``stopped`` count in the stop's pipeline; the scheduler adds the lateness of its fires once per
tick. Gauges (queue depths, due entries, workers alive) are read live: a Celery queue is a Redis
list (``Keys.celery_queue``), workers write a heartbeat (``Store.heartbeat``).

``snapshot`` returns everything as a ``Snapshot``; ``GET /metrics`` renders it in Prometheus's text
format and the console's status line reads the same object. The status line's runs per minute and
failures in the last hour are an ``Activity``, counted from the events stream as it is followed.

Fields of the ``metrics`` hash (``{le}`` is a bucket's upper bound; bucket counts are per bucket,
made cumulative when read):
``runs:{kind}:{state}``, ``retries:{kind}``, ``duration:{kind}:le:{le}``, ``duration:{kind}:sum``,
``duration:{kind}:count``, ``lag:le:{le}``, ``lag:sum``, ``lag:count``, ``lag:last``.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from core.events import RUN_ENDINGS, EventType
from core.models import Kind, RunState
from core.store import Store

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                    600.0, 1800.0, 3600.0, math.inf)
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, math.inf)
BASE_QUEUES = ("code", "http", "registered")
RATE_MINUTES = 30
"""How many minutes of finished runs an ``Activity`` keeps (the console's sparkline)."""


def bound(value: float) -> str:
    """A bucket bound as Prometheus writes it (``0.005``, ``1.0``, ``+Inf``)."""
    return "+Inf" if math.isinf(value) else repr(float(value))


def bucket_for(value: float, buckets: tuple[float, ...]) -> str:
    """The bound of the first of ``buckets`` (ascending) that holds ``value``."""
    index = bisect.bisect_left(buckets, value)
    return bound(buckets[index]) if index < len(buckets) and not math.isnan(value) else "+Inf"


def run_increments(kind: str, state: RunState, duration_ms: float | None) -> tuple[dict[str, int], dict[str, float]]:
    """Counter increments for one attempt that ended in ``state`` (duration ``None``: it never started)."""
    counts = {f"runs:{kind}:{state.value}": 1}
    sums: dict[str, float] = {}
    if state is RunState.RETRYING:
        counts[f"retries:{kind}"] = 1
    if duration_ms is not None:
        seconds = max(0.0, duration_ms / 1000)
        counts[f"duration:{kind}:le:{bucket_for(seconds, DURATION_BUCKETS)}"] = 1
        counts[f"duration:{kind}:count"] = 1
        sums[f"duration:{kind}:sum"] = seconds
    return counts, sums


def record_lags(store: Store, lags: Iterable[float]) -> None:
    """Add one scheduler tick's fire lateness (seconds) to the lag histogram, in one round trip."""
    lags = [max(0.0, lag) for lag in lags]
    if not lags:
        return
    counts: dict[str, int] = {"lag:count": len(lags)}
    for index, count in Counter(bisect.bisect_left(LAG_BUCKETS, lag) for lag in lags).items():
        counts[f"lag:le:{bound(LAG_BUCKETS[index]) if index < len(LAG_BUCKETS) else '+Inf'}"] = count
    store.add_metrics(counts, {"lag:sum": sum(lags)}, {"lag:last": max(lags)})


@dataclass
class Histogram:
    """Cumulative bucket counts (``(le, count)``, ending with ``+Inf``), their sum and count."""

    buckets: list[tuple[str, int]]
    sum: float = 0.0
    count: int = 0


def _histogram(counters: dict[str, str], prefix: str, buckets: tuple[float, ...]) -> Histogram:
    running = 0
    cumulative = []
    for upper in buckets:
        running += int(counters.get(f"{prefix}:le:{bound(upper)}", 0))
        cumulative.append((bound(upper), running))
    return Histogram(cumulative, float(counters.get(f"{prefix}:sum", 0.0)), int(counters.get(f"{prefix}:count", 0)))


@dataclass
class Snapshot:
    """Every monitoring number at one moment."""

    at: float
    runs: dict[tuple[str, str], int] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    durations: dict[str, Histogram] = field(default_factory=dict)
    lag: Histogram = field(default_factory=lambda: Histogram([(bound(b), 0) for b in LAG_BUCKETS]))
    last_lag: float | None = None
    queues: dict[str, int] = field(default_factory=dict)
    unacked: int = 0
    due: int = 0
    tasks: int = 0
    workers: int = 0
    scheduler: bool = False
    refuses_writes: str | None = None
    """Why Redis refuses writes (its disk or its memory full), or None."""

    @property
    def queued(self) -> int:
        """Messages waiting in every Celery queue."""
        return sum(self.queues.values())

    @property
    def finished(self) -> int:
        """Attempts that ended, in any state."""
        return sum(self.runs.values())

    @property
    def failed(self) -> int:
        """Attempts that ended failed or timed out (retried ones included)."""
        return sum(count for (_, state), count in self.runs.items() if state in ("failed", "timed_out", "retrying"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "runs": [{"kind": kind, "state": state, "count": count}
                     for (kind, state), count in sorted(self.runs.items())],
            "retries": dict(sorted(self.retries.items())),
            "durations": {kind: {"buckets": dict(h.buckets), "sum": h.sum, "count": h.count}
                          for kind, h in sorted(self.durations.items())},
            "scheduler_lag": {"buckets": dict(self.lag.buckets), "sum": self.lag.sum, "count": self.lag.count,
                              "last": self.last_lag},
            "queues": dict(sorted(self.queues.items())), "unacked": self.unacked, "due": self.due,
            "tasks": self.tasks, "workers": self.workers, "scheduler": self.scheduler,
        }


def snapshot(store: Store, heartbeat_ttl: float = 10.0) -> Snapshot:
    """Read every number: counters from the metrics hash, gauges live (two round trips)."""
    now = time.time()
    queues = set(BASE_QUEUES)
    for detail in store.registered().values():
        queues.update(detail.get("queues") or ())
    read = store.gauges(sorted(queues), now - heartbeat_ttl)
    counters: dict[str, str] = read["counters"]
    snap = Snapshot(at=now, queues=read["queues"], unacked=read["unacked"], due=read["due"], tasks=read["tasks"],
                    workers=read["workers"], scheduler=read["scheduler"], refuses_writes=read["refuses_writes"])
    kinds = {kind.value for kind in Kind}
    for name, value in counters.items():
        parts = name.split(":")
        if parts[0] == "runs" and len(parts) == 3:
            snap.runs[(parts[1], parts[2])] = int(value)
        elif parts[0] == "retries" and len(parts) == 2:
            snap.retries[parts[1]] = int(value)
        elif parts[0] == "duration" and len(parts) >= 3:
            kinds.add(parts[1])
    for kind in sorted(kinds):
        snap.durations[kind] = _histogram(counters, f"duration:{kind}", DURATION_BUCKETS)
    snap.lag = _histogram(counters, "lag", LAG_BUCKETS)
    snap.last_lag = float(counters["lag:last"]) if "lag:last" in counters else None
    return snap


def render(snap: Snapshot) -> bytes:
    """The snapshot in Prometheus's text exposition format."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    class _Collector:
        def collect(self):
            runs = CounterMetricFamily("taskman_runs", "Run attempts that ended, by task kind and final state.",
                                       labels=["kind", "state"])
            for (kind, state), count in sorted(snap.runs.items()):
                runs.add_metric([kind, state], count)
            yield runs
            retries = CounterMetricFamily("taskman_run_retries", "Failed attempts that were retried.",
                                          labels=["kind"])
            for kind, count in sorted(snap.retries.items()):
                retries.add_metric([kind], count)
            yield retries
            duration = HistogramMetricFamily("taskman_run_duration_seconds",
                                             "How long run attempts took, by task kind.", labels=["kind"])
            for kind, hist in sorted(snap.durations.items()):
                duration.add_metric([kind], hist.buckets, hist.sum)
            yield duration
            lag = HistogramMetricFamily("taskman_scheduler_lag_seconds",
                                        "How late the scheduler fired due entries (delays, cron, retries).")
            lag.add_metric([], snap.lag.buckets, snap.lag.sum)
            yield lag
            if snap.last_lag is not None:
                yield GaugeMetricFamily("taskman_scheduler_last_lag_seconds",
                                        "Lateness of the latest fire (the largest of its tick).", value=snap.last_lag)
            depth = GaugeMetricFamily("taskman_queue_depth", "Messages waiting in a Celery queue.", labels=["queue"])
            for queue, length in sorted(snap.queues.items()):
                depth.add_metric([queue], length)
            yield depth
            yield GaugeMetricFamily("taskman_unacked_messages",
                                    "Messages delivered to workers and not yet acknowledged (running or reserved).",
                                    value=snap.unacked)
            yield GaugeMetricFamily("taskman_due_entries", "Entries waiting in the due set (delays, cron, retries, "
                                    "send guards of queued runs not yet started).", value=snap.due)
            yield GaugeMetricFamily("taskman_tasks", "Task definitions stored.", value=snap.tasks)
            yield GaugeMetricFamily("taskman_workers_alive", "Workers whose heartbeat is recent.", value=snap.workers)
            yield GaugeMetricFamily("taskman_scheduler_leader", "1 while a scheduler holds the lock.",
                                    value=1 if snap.scheduler else 0)
            yield GaugeMetricFamily("taskman_redis_refuses_writes",
                                    "1 while Redis answers but refuses writes (its disk or its memory full).",
                                    value=1 if snap.refuses_writes else 0)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry)


@dataclass
class Activity:
    """Runs finished per minute (the last ``RATE_MINUTES``) and failures in the last hour, counted from
    events as they are read (``Service.recent_activity``, then each batch of ``Service.events_since``)."""

    finished: deque[float] = field(default_factory=deque)
    failed: deque[float] = field(default_factory=deque)

    def add(self, event: dict[str, Any]) -> None:
        """Count ``event`` if it is a run's ending."""
        kind = event.get("type", "")
        if kind in RUN_ENDINGS:
            stamp = float(event.get("ts") or time.time())
            self.finished.append(stamp)
            if kind in (EventType.RUN_FAILED, EventType.RUN_TIMED_OUT):
                self.failed.append(stamp)
        self._trim()

    def _trim(self) -> None:
        now = time.time()
        while self.finished and self.finished[0] < now - 60 * RATE_MINUTES:
            self.finished.popleft()
        while self.failed and self.failed[0] < now - 3600:
            self.failed.popleft()

    def per_minute(self) -> list[float]:
        """Finished runs in each of the last ``RATE_MINUTES`` minutes, oldest first."""
        self._trim()
        now = time.time()
        buckets = [0.0] * RATE_MINUTES
        for stamp in self.finished:
            index = RATE_MINUTES - 1 - int((now - stamp) // 60)
            if 0 <= index < RATE_MINUTES:
                buckets[index] += 1
        return buckets

    def failures_last_hour(self) -> int:
        self._trim()
        return len(self.failed)
