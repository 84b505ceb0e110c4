"""Runs: a task's run history, and one run.

No ``from __future__ import annotations`` here: FastAPI reads the parameter annotations at runtime.
"""

from typing import Annotated

from fastapi import APIRouter, Path, Request

from api.deps import Caller, Limit, Offset, TaskId, list_page
from api.schemas import JSONResponse, RunOut, errors
from core.models import RunState

router = APIRouter(tags=["runs"])


@router.get("/api/tasks/{task_id}/runs", summary="A task's run history, newest first",
            responses={200: {"model": list[RunOut]}, **errors(401, 404, 422, 503)})
def task_runs(request: Request, svc: Caller, task_id: TaskId, state: RunState | None = None,
              limit: Limit = 50, offset: Offset = 0) -> JSONResponse:
    runs = svc.runs(task_id, limit=limit, offset=offset, state=state)
    return list_page(request, [run.to_dict() for run in runs], limit, offset, None)


@router.get("/api/runs/{run_id}", summary="One run", responses={200: {"model": RunOut}, **errors(401, 404, 422, 503)})
def get_run(svc: Caller, run_id: Annotated[str, Path(description="The run's id.")]) -> JSONResponse:
    return JSONResponse(svc.get_run(run_id).to_dict())
