"""Monitoring numbers: Prometheus's text format at ``/metrics``, the same as JSON at ``/api/metrics``;
the workers and queues overview at ``/api/workers``.

No ``from __future__ import annotations`` here: FastAPI reads the parameter annotations at runtime.
"""

from fastapi import APIRouter
from fastapi.responses import Response

from api.deps import Caller
from api.schemas import READ_ERRORS, JSONResponse
from core.metrics import render

router = APIRouter(tags=["monitoring"])

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=Response,
            responses={200: {"content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}}, **READ_ERRORS})
def prometheus(svc: Caller) -> Response:
    return Response(render(svc.metrics_snapshot()), media_type=PROMETHEUS_TEXT)


@router.get("/api/metrics", summary="The same numbers as /metrics, as JSON",
            responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}, **READ_ERRORS})
def metrics_json(svc: Caller) -> JSONResponse:
    return JSONResponse(svc.metrics_snapshot().to_dict())


@router.get("/api/workers", summary="Workers, queues and registered task names (the console's workers view)",
            responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}, **READ_ERRORS})
def workers(svc: Caller) -> JSONResponse:
    return JSONResponse(svc.workers().to_dict())
