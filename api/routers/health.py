"""Liveness for load balancers and people: Redis, workers alive, the scheduler, the code runs' walls.
The one endpoint without a token; it answers 503 (not an error body) while Redis is unreachable, and 200 with
``"status": "degraded"`` while Redis answers but refuses writes (its disk or its memory full): reads still work
there, and every API process shares that Redis, so taking them out of a load balancer would help nobody.

No ``from __future__ import annotations`` here: FastAPI reads the parameter annotations at runtime.
"""

import time

import anyio.to_thread
from fastapi import APIRouter, Request

from api.deps import AppService
from api.schemas import JSONResponse
from core.errors import NoRedis
from core.service import Service

router = APIRouter(tags=["monitoring"])


@router.get("/api/health", summary="Liveness: Redis, workers, scheduler (no token needed)",
            responses={503: {"description": "Redis unreachable"}})
async def health(request: Request, service: AppService) -> JSONResponse:
    return await anyio.to_thread.run_sync(check, request, service, limiter=request.app.state.health_threads)


def check(request: Request, service: Service) -> JSONResponse:
    """The health answer, read in one of the endpoint's own threads (``HEALTH_THREADS``)."""
    started = time.perf_counter()
    try:
        snap = service.metrics_snapshot()
        reports = service.isolation()
        lost = service.data_loss()
    except NoRedis as exc:
        return JSONResponse({"status": "unavailable", "redis": f"unreachable: {exc.cause or exc.message}"},
                            status_code=503)
    jailed, isolation = service.isolation_summary(reports)
    refusal = snap.refuses_writes
    return JSONResponse({"status": "degraded" if refusal else "ok",
                         "redis": f"refuses writes: {refusal}" if refusal else "ok",
                         "workers": snap.workers, "scheduler": snap.scheduler,
                         "queued": snap.queued, "due": snap.due, "log_streams": request.app.state.slots.open,
                         "isolation": {"ok": jailed, "summary": isolation,
                                       "workers": {worker: {"missing": report.get("missing", []),
                                                            "accept_weak": report.get("accept_weak", False)}
                                                   for worker, report in reports.items()}},
                         "data_lost_at": lost["at"] if lost else None,
                         "redis_ms": round((time.perf_counter() - started) * 1000, 3)})
