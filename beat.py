"""The scheduler process — thin: a Celery beat scheduler that delegates to ``core.scheduler``.

``celery -A worker beat`` picks it up (the app's ``beat_scheduler`` names it) and ``taskman beat``
runs it too. Celery beat's default scheduler scans every entry each tick; ours claims from the
due set, so ten thousand cron tasks cost what ten do.
"""

from __future__ import annotations

from celery.beat import Scheduler as CeleryScheduler

from core.config import Settings
from core.dispatch import Dispatcher
from core.embedded import resolve_redis_url
from core.scheduler import Scheduler, refuse_evicting_redis
from core.store import Store


class TaskmanScheduler(CeleryScheduler):
    """Celery beat scheduler whose schedule is taskman's due set in Redis."""

    def setup_schedule(self) -> None:
        settings = Settings()
        store = Store.from_settings(settings, resolve_redis_url(settings))
        refuse_evicting_redis(store)
        self.core = Scheduler(store, Dispatcher(self.app, settings), interval=settings.scheduler_interval,
                              lock_ttl=settings.scheduler_lock_ttl, lease=settings.claim_lease,
                              dead_worker_grace=settings.dead_worker_grace)

    def tick(self, *args, **kwargs) -> float:
        return self.core.tick()

    def close(self) -> None:
        self.core.close()
        super().close()

    @property
    def info(self) -> str:
        return "    . taskman due set (leader lock in Redis)"
