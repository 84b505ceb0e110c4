"""Tasks: create (one or a batch), list, read, edit, delete, and act on them (run, stop, pause, resume);
scheduled tasks only; registered Celery task names; the export of every definition.

No ``from __future__ import annotations`` here: FastAPI reads the parameter annotations at runtime.
"""

from typing import Annotated

from fastapi import APIRouter, Query, Request

from api.deps import MAX_PAGE, Body, Caller, Changer, Limit, Offset, OptionalBody, TaskId, batch_cost, list_page
from api.schemas import (
    BODY_ERRORS,
    ONE_OR_MANY,
    READ_ERRORS,
    RUN_WITH,
    TASK_ERRORS,
    DeletedOut,
    JSONResponse,
    RunOut,
    TaskOut,
    body_doc,
    errors,
)
from core.errors import InvalidSpec
from core.models import Mode, Task

router = APIRouter()

NameFilter = Annotated[str | None, Query(max_length=200, description="Only names containing this text.")]
# Filter words (``core.filters``): the words the console shows; anything else is refused with 422.
StateWord = Annotated[str | None, Query(max_length=40, description=(
    "A task state (active, paused, done) or the state of the task's last run (queued, running, succeeded, "
    "failed, timed_out, stopped, retrying)."))]
LastWord = Annotated[str | None, Query(max_length=40, description=(
    "The state of the task's last run: queued, running, succeeded, failed, timed_out, stopped, retrying."))]
KindWord = Annotated[str | None, Query(max_length=40, description="code, api, registered (or reg).")]
ModeWord = Annotated[str | None, Query(max_length=40, description=(
    "now, delay, cron (or immediate, delayed, scheduled)."))]


def created(tasks: list[Task], batch: bool) -> JSONResponse:
    """201 with the created tasks (an array for a batch; one task, with its ``Location``, otherwise)."""
    if batch:
        return JSONResponse([task.to_dict() for task in tasks], status_code=201)
    return JSONResponse(tasks[0].to_dict(), status_code=201, headers={"Location": f"/api/tasks/{tasks[0].id}"})


@router.post("/api/tasks", tags=["tasks"], status_code=201, summary="Create one task or many (all or none)",
             responses={201: {"model": TaskOut | list[TaskOut]}, **BODY_ERRORS},
             openapi_extra=body_doc(ONE_OR_MANY, "One task spec (the seed's JSON format), or an array of "
                                                 "specs: every one is validated first, then all are created."))
def create_tasks(svc: Caller, body: Body) -> JSONResponse:
    svc.throttle(batch_cost(body))
    return created(svc.create_many(body if isinstance(body, list) else [body]), isinstance(body, list))


@router.get("/api/tasks", tags=["tasks"], summary="List tasks, newest first",
            responses={200: {"model": list[TaskOut]}, **READ_ERRORS})
def list_tasks(request: Request, svc: Caller, state: StateWord = None, kind: KindWord = None,
               mode: ModeWord = None, last: LastWord = None, name: NameFilter = None, limit: Limit = 100,
               offset: Offset = 0) -> JSONResponse:
    tasks = svc.list_tasks(state=state, kind=kind, mode=mode, last=last, name=name, limit=limit, offset=offset)
    filtered = any(value is not None for value in (state, kind, mode, last, name))
    return list_page(request, [task.to_dict() for task in tasks], limit, offset,
                     None if filtered else svc.count_tasks())


@router.get("/api/tasks/{task_id}", tags=["tasks"], summary="One task with its recent runs",
            responses={200: {"model": TaskOut}, **errors(401, 404, 422, 503)})
def get_task(svc: Caller, task_id: TaskId,
             runs: Annotated[int, Query(ge=0, le=MAX_PAGE, description="How many recent runs.")] = 20
             ) -> JSONResponse:
    return JSONResponse(svc.get(task_id, runs=runs).to_dict())


@router.patch("/api/tasks/{task_id}", tags=["tasks"], summary="Edit fields (effective from the next run)",
              responses={200: {"model": TaskOut}, **BODY_ERRORS},
              openapi_extra=body_doc({"type": "object", "minProperties": 1, "additionalProperties": True},
                                     "Spec fields to change; null removes a field. Switching mode or kind "
                                     "drops the old one's fields."))
def edit_task(svc: Changer, task_id: TaskId, body: Body) -> JSONResponse:
    if not isinstance(body, dict):
        raise InvalidSpec("body", "must be a JSON object of the spec fields to change")
    if not body:
        raise InvalidSpec("body", "nothing to change: give at least one spec field")
    return JSONResponse(svc.update(task_id, body).to_dict())


@router.delete("/api/tasks/{task_id}", tags=["tasks"], summary="Stop the task and remove its definition",
               responses={200: {"model": DeletedOut}, **TASK_ERRORS})
def delete_task(svc: Changer, task_id: TaskId) -> JSONResponse:
    svc.delete(task_id)
    return JSONResponse({"deleted": task_id})


@router.post("/api/tasks/{task_id}/stop", tags=["tasks"],
             summary="Stop: queued runs never start, running ones are killed, the schedule pauses",
             responses={200: {"model": TaskOut}, **TASK_ERRORS})
def stop_task(svc: Changer, task_id: TaskId) -> JSONResponse:
    return JSONResponse(svc.stop(task_id).to_dict())


@router.post("/api/tasks/{task_id}/run", tags=["tasks"], status_code=202, summary="Queue a run now",
             responses={202: {"model": RunOut}, **BODY_ERRORS},
             openapi_extra={"requestBody": {"required": False, "description": (
                 "Optional: run once with other arguments, the task unchanged: `args` (array) and `kwargs` "
                 "(object) for code and registered tasks, `data` or `json` (the request body) for API tasks."),
                 "content": {"application/json": {"schema": RUN_WITH}}}})
def run_task(svc: Changer, task_id: TaskId, body: OptionalBody) -> JSONResponse:
    run = svc.run_now(task_id, body)
    return JSONResponse(run.to_dict(), status_code=202, headers={"Location": f"/api/runs/{run.id}"})


@router.post("/api/tasks/{task_id}/pause", tags=["tasks"], summary="Pause a delayed or cron task's schedule",
             responses={200: {"model": TaskOut}, **TASK_ERRORS})
def pause_task(svc: Changer, task_id: TaskId) -> JSONResponse:
    return JSONResponse(svc.pause(task_id).to_dict())


@router.post("/api/tasks/{task_id}/resume", tags=["tasks"], summary="Resume a paused task's schedule",
             responses={200: {"model": TaskOut}, **TASK_ERRORS})
def resume_task(svc: Changer, task_id: TaskId) -> JSONResponse:
    return JSONResponse(svc.resume(task_id).to_dict())


@router.post("/api/scheduled-tasks", tags=["tasks"], status_code=201,
             summary="Create scheduled (cron) tasks only; any other mode is refused",
             responses={201: {"model": TaskOut | list[TaskOut]}, **BODY_ERRORS},
             openapi_extra=body_doc(ONE_OR_MANY, "A scheduled task spec (needs `cron_expression`; "
                                                 "`task_type` may be left out) or an array of them."))
def create_scheduled(svc: Caller, body: Body) -> JSONResponse:
    svc.throttle(batch_cost(body))
    tasks = svc.create_many(body if isinstance(body, list) else [body], only=Mode.SCHEDULED)
    return created(tasks, isinstance(body, list))


@router.get("/api/scheduled-tasks", tags=["tasks"], summary="List scheduled (cron) tasks, newest first",
            responses={200: {"model": list[TaskOut]}, **READ_ERRORS})
def list_scheduled(request: Request, svc: Caller, state: StateWord = None, kind: KindWord = None,
                   last: LastWord = None, name: NameFilter = None, limit: Limit = 100,
                   offset: Offset = 0) -> JSONResponse:
    tasks = svc.list_tasks(state=state, kind=kind, mode=Mode.SCHEDULED, last=last, name=name, limit=limit,
                           offset=offset)
    return list_page(request, [task.to_dict() for task in tasks], limit, offset, None)


@router.get("/api/export", tags=["admin"], summary="Every definition, secrets included (admin only)",
            responses={200: {"content": {"application/json": {"schema": {"type": "array", "items": {
                "$ref": "#/components/schemas/TaskSpec"}}}}}, **errors(401, 403, 503)})
def export(svc: Caller) -> JSONResponse:
    """The same array as `taskman export`: POST it to /api/tasks to recreate every task. Every other
    read masks secret headers, query parameters and body fields as `***`; this one does not."""
    return JSONResponse(svc.export())


@router.get("/api/registered-tasks", tags=["tasks"], summary="Celery task names the workers registered",
            responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}, **READ_ERRORS})
def registered(svc: Caller) -> JSONResponse:
    return JSONResponse(svc.registered_tasks())
