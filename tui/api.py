"""The REST API: FastAPI over ``core.service``, with bearer tokens, roles and the audit trail.

It adds no logic of its own. Each request's token is verified by ``core.auth`` and the request runs
on ``service.acting_as("api:<token name>", role)``, so the role policy and the audit entry are the
service's business, as they are for the command line and the console. Bodies are the same JSON the
command line reads and responses are exactly what its ``--json`` prints (``Task.to_dict`` and
``Run.to_dict``).

Errors are one JSON shape, ``{"error", "field"?, "message"}``, with the status the error carries
(``core.errors``: 401, 403, 404, 409, 422; 413 for a body over ``api_max_body``; 429 with ``Retry-After``
when a token makes more than ``api_rate_per_minute`` changes; 503 when Redis is away). Bad input never
becomes a 500: bodies are read and parsed here (size-capped, strict JSON), and FastAPI's own validation
errors are mapped to 422 naming the field.

``GET /api/logs`` is Server-Sent Events. A thread per stream follows the log stream with
``core.events.follow_logs`` (a blocking XREAD) and hands entries to the event loop; when the client
goes away the response is cancelled and the thread stops within a second. A stream outlives the
request that opened it, so its token is checked again every ``TOKEN_RECHECK_SECONDS``: once revoked,
the stream sends an ``error`` event and ends.

No ``from __future__ import annotations`` here: FastAPI reads the parameter annotations at runtime.
"""

import asyncio
import json
import logging
import re
import threading
import time
from typing import Annotated, Any

import redis
from fastapi import Depends, FastAPI, Header, Path, Query, Request, responses
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from core import audit, auth, events, metrics
from core.config import Settings
from core.errors import InvalidSpec, RateLimited, TaskmanError, Unauthorized
from core.models import Kind, Mode, RunState, TaskSpec, TaskState
from core.service import MAX_BATCH, Service
from core.text import json_text


class JSONResponse(responses.JSONResponse):
    """JSON with DEL, C1 and bidi controls escaped (``\\u009b``): a task's data curl'ed into a terminal
    cannot drive it. The same JSON value; only its spelling changes."""

    def render(self, content: Any) -> bytes:
        return json_text(content, allow_nan=False, separators=(",", ":")).encode("utf-8")


log = logging.getLogger("taskman.api")

VERSION = "1"
MAX_PAGE = 1000
KEEPALIVE_SECONDS = 15.0
TOKEN_RECHECK_SECONDS = 2.0
TICK_SECONDS = 1.0
STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


# -- documentation models (responses are rendered by core's to_dict; these describe them) -------


class ErrorOut(BaseModel):
    """Every error: which kind, the field at fault (when there is one) and what to do about it."""

    error: str = Field(examples=["InvalidSpec"])
    field: str | None = Field(default=None, examples=["cron_expression"])
    message: str


class RunOut(BaseModel):
    """One attempt at running a task (``Run.to_dict``)."""

    model_config = ConfigDict(extra="allow")

    id: str
    task_id: str
    state: RunState
    attempt: int
    max_attempts: int
    trigger: str
    queued_at: str | None
    scheduled_for: str | None
    started_at: str | None
    finished_at: str | None
    duration_ms: float | None
    result: Any = None
    error: str | None
    traceback: str | None
    output: str
    worker: str | None
    series: str | None


class LastRunOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    state: str | None
    duration_ms: float | None


class TaskOut(BaseModel):
    """A task definition with its runtime state and recent runs (``Task.to_dict``); secrets masked."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str
    kind: Kind
    mode: Mode
    state: TaskState
    next_run_at: str | None
    created_at: str
    updated_at: str
    last_run: LastRunOut | None
    spec: dict[str, Any]
    runs: list[RunOut]


class DeletedOut(BaseModel):
    deleted: str


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(examples=["ci-bot"])
    role: auth.Role = Field(examples=["operator"])


class TokenOut(BaseModel):
    name: str
    role: auth.Role
    created_at: str | None
    created_by: str | None
    last_used_at: str | None
    fingerprint: str


class NewTokenOut(TokenOut):
    token: str = Field(description="The secret. Shown this once; taskman keeps only its hash.")


class AuditOut(BaseModel):
    id: str
    ts: str | None
    actor: str = Field(examples=["api:ci-bot"])
    action: str = Field(examples=["create"])
    target: str
    detail: dict[str, Any]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {401: "Missing, wrong or revoked token", 403: "The token's role does not allow this",
                 404: "No such task or run", 409: "Not possible in the task's current state",
                 413: "Request body too large", 422: "Refused input; `field` names what is wrong",
                 429: "The token made more changes than its rate allows; `Retry-After` says when to retry",
                 503: "Redis unreachable, too many log streams, or the audit trail full"}
    return {status: {"model": ErrorOut, "description": described[status]} for status in statuses}


READ_ERRORS = _errors(401, 422, 503)
TASK_ERRORS = _errors(401, 403, 404, 409, 422, 429, 503)
BODY_ERRORS = _errors(401, 403, 404, 409, 413, 422, 429, 503)


# -- the request body -----------------------------------------------------------------------------


class BodyTooLarge(TaskmanError):
    """A request body over the configured cap (``api_max_body``)."""

    title = "Request too large"
    status = 413


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (numbers must be finite)")


def parse_json(raw: bytes) -> Any:
    """A request body as JSON, or ``InvalidSpec`` on field ``body`` saying what is wrong with it."""
    if not raw.strip():
        raise InvalidSpec("body", "the request needs a JSON body")
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise InvalidSpec("body", f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except UnicodeDecodeError:
        raise InvalidSpec("body", "not valid JSON (the body must be UTF-8 text)") from None
    except RecursionError:
        raise InvalidSpec("body", "JSON nested too deeply") from None
    except ValueError as exc:
        raise InvalidSpec("body", f"not valid JSON ({exc})") from None


def body_reader(limit: int):
    """A dependency that reads at most ``limit`` bytes of the body (413 beyond) and parses it as JSON."""

    async def read_body(request: Request) -> Any:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"the request body is {int(declared)} bytes; at most {limit} are accepted")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"the request body is over {limit} bytes")
            chunks.append(chunk)
        return parse_json(b"".join(chunks))

    return read_body


def _body_doc(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "description": description,
                            "content": {"application/json": {"schema": schema}}}}


SPEC_REF = {"$ref": "#/components/schemas/TaskSpec"}
ONE_OR_MANY = {"oneOf": [SPEC_REF, {"type": "array", "items": SPEC_REF, "minItems": 1}]}


# -- log streams ----------------------------------------------------------------------------------


class TooManyStreams(TaskmanError):
    """This API process already serves ``api_max_streams`` log streams."""

    title = "Too busy"
    status = 503


class StreamSlots:
    """Counts open log streams so one API process never holds more than ``limit`` threads on them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.lock = threading.Lock()

    def take(self) -> None:
        with self.lock:
            if self.open >= self.limit:
                raise TooManyStreams(f"{self.open} log streams are open on this API server, the most it serves; "
                                     "try again later")
            self.open += 1

    def give_back(self) -> None:
        with self.lock:
            self.open -= 1


def sse(entry_id: str, entry: dict[str, Any]) -> str:
    """One log entry as a Server-Sent Event (``id`` lets a client resume with Last-Event-ID)."""
    return f"id: {entry_id}\nevent: log\ndata: {json_text(entry)}\n\n"


def sse_error(error: str, message: str) -> str:
    """The event that ends a stream: what went wrong, in the API's error shape."""
    return f"event: error\ndata: {json.dumps({'error': error, 'message': message})}\n\n"


async def follow_in_thread(service: Service, task_id: str | None, cursor: str, stop: threading.Event):
    """Log entries after ``cursor`` as they arrive (None every ``TICK_SECONDS`` without one); a thread does
    the blocking reads until ``stop``."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(maxsize=500)
    done = object()

    def hand_over(item: Any) -> bool:
        future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while not stop.is_set():
            try:
                future.result(timeout=1.0)
                return True
            except TimeoutError:
                continue
        future.cancel()
        return False

    def pump() -> None:
        try:
            for item in events.follow_logs(service.store, task_id, cursor, stop.is_set):
                if not hand_over(item):
                    return
        except Exception as exc:  # Redis went away: tell the client, then end the stream
            log.warning("log stream ended: %s", exc)
            hand_over(exc)
        finally:
            if not stop.is_set():
                hand_over(done)

    threading.Thread(target=pump, name="taskman-api-logs", daemon=True).start()
    while True:
        try:
            item = await asyncio.wait_for(queue.get(), timeout=TICK_SECONDS)
        except TimeoutError:
            yield None
            continue
        if item is done:
            return
        if isinstance(item, Exception):
            raise item
        yield item


# -- the app --------------------------------------------------------------------------------------


DESCRIPTION = """
Define, run, schedule and watch taskman tasks over HTTP — the same service as the `taskman` command
line and console, with the same JSON.

**Authentication**: every endpoint except `/api/health` needs `Authorization: Bearer <token>`.
Create tokens with `taskman token create --role viewer|operator|admin --name NAME` (the secret is
shown once). Roles: *viewer* reads; *operator* also creates, edits, runs, resumes and deletes API and
registered tasks and stops or pauses any task; *admin* also manages code tasks, tokens and reads the
audit trail and `GET /api/export` (the one read that returns secrets; every other view shows secret
headers, query parameters and body fields as `***`). A missing or wrong token gets 401, a role too low 403.

**Errors** are JSON: `{"error": "InvalidSpec", "field": "cron_expression", "message": "..."}`.
"""


def create_app(service: Service, settings: Settings) -> FastAPI:
    """The FastAPI application serving ``service`` (one Redis namespace) with ``settings``' limits."""
    app = FastAPI(title="taskman", version=VERSION, description=DESCRIPTION, default_response_class=JSONResponse,
                  openapi_tags=[{"name": "tasks"}, {"name": "runs"}, {"name": "logs"}, {"name": "admin"},
                                {"name": "monitoring"}])
    bearer = HTTPBearer(auto_error=False, description="A taskman API token (`taskman token create`).")
    slots = StreamSlots(settings.api_max_streams)
    read_body = body_reader(settings.api_max_body)

    def caller(request: Request,
               credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Service:
        principal = auth.verify(service.store, credentials.credentials if credentials else None)
        request.state.principal = principal
        return service.acting_as(principal.actor, principal.role)

    Caller = Annotated[Service, Depends(caller)]

    def throttle(request: Request, cost: int = 1) -> None:
        """Count ``cost`` changes against the caller's token (429 past ``api_rate_per_minute``)."""
        auth.throttle(service.store, request.state.principal, cost, settings.api_rate_per_minute)

    def changer(request: Request, svc: Caller) -> Service:
        """A caller about to change something: one change counted against its token's allowance."""
        throttle(request)
        return svc

    Changer = Annotated[Service, Depends(changer)]

    def batch_cost(body: Any) -> int:
        """What a create counts against the allowance: each task of a batch (as each is audited)."""
        return min(max(len(body), 1), MAX_BATCH) if isinstance(body, list) else 1

    Body = Annotated[Any, Depends(read_body)]
    TaskId = Annotated[str, Path(description="The task's id (from `POST /api/tasks` or `GET /api/tasks`).")]
    Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")]
    Offset = Annotated[int, Query(ge=0, le=10_000_000, description="How many to skip.")]
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

    # -- errors -----------------------------------------------------------------------------------

    @app.exception_handler(TaskmanError)
    async def taskman_error(request: Request, exc: TaskmanError) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Bearer realm="taskman"'} if isinstance(exc, Unauthorized) else None
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
        body = exc.to_dict()
        if body.get("error") == "TaskmanError":
            body["error"] = "BadRequest"
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        location = [str(part) for part in error.get("loc", ())]
        field = ".".join(location[1:] if location[:1] in (["query"], ["path"], ["header"], ["body"]) else location)
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        return JSONResponse({"error": "InvalidSpec", "field": field, "message": f"{field}: {message}"},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        names = {404: "NotFound", 405: "MethodNotAllowed", 413: "BodyTooLarge"}
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        return JSONResponse({"error": names.get(exc.status_code, "HTTPError"), "message": message},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def redis_down(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "NoRedis", "message": f"cannot reach Redis: {exc}"}, status_code=503)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "InternalError", "message": "unexpected error; the API server's log has "
                                                                  "the details"}, status_code=500)

    # -- tasks ------------------------------------------------------------------------------------

    def list_page(request: Request, items: list[dict], limit: int, offset: int, total: int | None) -> JSONResponse:
        headers = {}
        if total is not None:
            headers["X-Total-Count"] = str(total)
        if len(items) == limit:
            headers["Link"] = f'<{request.url.include_query_params(offset=offset + limit)}>; rel="next"'
        return JSONResponse(items, headers=headers)

    @app.post("/api/tasks", tags=["tasks"], status_code=201, summary="Create one task or many (all or none)",
              responses={201: {"model": TaskOut | list[TaskOut]}, **BODY_ERRORS},
              openapi_extra=_body_doc(ONE_OR_MANY, "One task spec (the seed's JSON format), or an array of "
                                                   "specs: every one is validated first, then all are created."))
    def create_tasks(request: Request, svc: Caller, body: Body) -> JSONResponse:
        throttle(request, batch_cost(body))
        tasks = svc.create_many(body if isinstance(body, list) else [body])
        if isinstance(body, list):
            return JSONResponse([task.to_dict() for task in tasks], status_code=201)
        return JSONResponse(tasks[0].to_dict(), status_code=201, headers={"Location": f"/api/tasks/{tasks[0].id}"})

    @app.get("/api/tasks", tags=["tasks"], summary="List tasks, newest first",
             responses={200: {"model": list[TaskOut]}, **READ_ERRORS})
    def list_tasks(request: Request, svc: Caller, state: StateWord = None, kind: KindWord = None,
                   mode: ModeWord = None, last: LastWord = None, name: NameFilter = None, limit: Limit = 100,
                   offset: Offset = 0) -> JSONResponse:
        tasks = svc.list_tasks(state=state, kind=kind, mode=mode, last=last, name=name, limit=limit, offset=offset)
        filtered = any(value is not None for value in (state, kind, mode, last, name))
        return list_page(request, [task.to_dict() for task in tasks], limit, offset,
                         None if filtered else svc.store.count_tasks())

    @app.get("/api/tasks/{task_id}", tags=["tasks"], summary="One task with its recent runs",
             responses={200: {"model": TaskOut}, **_errors(401, 404, 422, 503)})
    def get_task(svc: Caller, task_id: TaskId,
                 runs: Annotated[int, Query(ge=0, le=MAX_PAGE, description="How many recent runs.")] = 20
                 ) -> JSONResponse:
        return JSONResponse(svc.get(task_id, runs=runs).to_dict())

    @app.patch("/api/tasks/{task_id}", tags=["tasks"], summary="Edit fields (effective from the next run)",
               responses={200: {"model": TaskOut}, **BODY_ERRORS},
               openapi_extra=_body_doc({"type": "object", "minProperties": 1, "additionalProperties": True},
                                       "Spec fields to change; null removes a field. Switching mode or kind "
                                       "drops the old one's fields."))
    def edit_task(svc: Changer, task_id: TaskId, body: Body) -> JSONResponse:
        if not isinstance(body, dict):
            raise InvalidSpec("body", "must be a JSON object of the spec fields to change")
        if not body:
            raise InvalidSpec("body", "nothing to change: give at least one spec field")
        return JSONResponse(svc.update(task_id, body).to_dict())

    @app.delete("/api/tasks/{task_id}", tags=["tasks"], summary="Stop the task and remove its definition",
                responses={200: {"model": DeletedOut}, **TASK_ERRORS})
    def delete_task(svc: Changer, task_id: TaskId) -> JSONResponse:
        svc.delete(task_id)
        return JSONResponse({"deleted": task_id})

    @app.post("/api/tasks/{task_id}/stop", tags=["tasks"],
              summary="Stop: queued runs never start, running ones are killed, the schedule pauses",
              responses={200: {"model": TaskOut}, **TASK_ERRORS})
    def stop_task(svc: Changer, task_id: TaskId) -> JSONResponse:
        return JSONResponse(svc.stop(task_id).to_dict())

    @app.post("/api/tasks/{task_id}/run", tags=["tasks"], status_code=202, summary="Queue a run now",
              responses={202: {"model": RunOut}, **TASK_ERRORS})
    def run_task(svc: Changer, task_id: TaskId) -> JSONResponse:
        run = svc.run_now(task_id)
        return JSONResponse(run.to_dict(), status_code=202, headers={"Location": f"/api/runs/{run.id}"})

    @app.post("/api/tasks/{task_id}/pause", tags=["tasks"], summary="Pause a delayed or cron task's schedule",
              responses={200: {"model": TaskOut}, **TASK_ERRORS})
    def pause_task(svc: Changer, task_id: TaskId) -> JSONResponse:
        return JSONResponse(svc.pause(task_id).to_dict())

    @app.post("/api/tasks/{task_id}/resume", tags=["tasks"], summary="Resume a paused task's schedule",
              responses={200: {"model": TaskOut}, **TASK_ERRORS})
    def resume_task(svc: Changer, task_id: TaskId) -> JSONResponse:
        return JSONResponse(svc.resume(task_id).to_dict())

    @app.get("/api/tasks/{task_id}/runs", tags=["runs"], summary="A task's run history, newest first",
             responses={200: {"model": list[RunOut]}, **_errors(401, 404, 422, 503)})
    def task_runs(request: Request, svc: Caller, task_id: TaskId, state: RunState | None = None,
                  limit: Limit = 50, offset: Offset = 0) -> JSONResponse:
        runs = svc.runs(task_id, limit=limit, offset=offset, state=state)
        return list_page(request, [run.to_dict() for run in runs], limit, offset, None)

    @app.get("/api/runs/{run_id}", tags=["runs"], summary="One run",
             responses={200: {"model": RunOut}, **_errors(401, 404, 422, 503)})
    def get_run(svc: Caller, run_id: Annotated[str, Path(description="The run's id.")]) -> JSONResponse:
        return JSONResponse(svc.get_run(run_id).to_dict())

    @app.post("/api/scheduled-tasks", tags=["tasks"], status_code=201,
              summary="Create scheduled (cron) tasks only; any other mode is refused",
              responses={201: {"model": TaskOut | list[TaskOut]}, **BODY_ERRORS},
              openapi_extra=_body_doc(ONE_OR_MANY, "A scheduled task spec (needs `cron_expression`; "
                                                   "`task_type` may be left out) or an array of them."))
    def create_scheduled(request: Request, svc: Caller, body: Body) -> JSONResponse:
        throttle(request, batch_cost(body))
        tasks = svc.create_many(body if isinstance(body, list) else [body], only=Mode.SCHEDULED)
        if isinstance(body, list):
            return JSONResponse([task.to_dict() for task in tasks], status_code=201)
        return JSONResponse(tasks[0].to_dict(), status_code=201, headers={"Location": f"/api/tasks/{tasks[0].id}"})

    @app.get("/api/scheduled-tasks", tags=["tasks"], summary="List scheduled (cron) tasks, newest first",
             responses={200: {"model": list[TaskOut]}, **READ_ERRORS})
    def list_scheduled(request: Request, svc: Caller, state: StateWord = None, kind: KindWord = None,
                       last: LastWord = None, name: NameFilter = None, limit: Limit = 100,
                       offset: Offset = 0) -> JSONResponse:
        tasks = svc.list_tasks(state=state, kind=kind, mode=Mode.SCHEDULED, last=last, name=name, limit=limit,
                               offset=offset)
        return list_page(request, [task.to_dict() for task in tasks], limit, offset, None)

    @app.get("/api/export", tags=["admin"], summary="Every definition, secrets included (admin only)",
             responses={200: {"content": {"application/json": {"schema": {"type": "array", "items": {
                 "$ref": "#/components/schemas/TaskSpec"}}}}}, **_errors(401, 403, 503)})
    def export(svc: Caller) -> JSONResponse:
        """The same array as `taskman export`: POST it to /api/tasks to recreate every task. Every other
        read masks secret headers, query parameters and body fields as `***`; this one does not."""
        return JSONResponse(svc.export())

    @app.get("/api/registered-tasks", tags=["tasks"], summary="Celery task names the workers registered",
             responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}, **READ_ERRORS})
    def registered(svc: Caller) -> JSONResponse:
        return JSONResponse(svc.registered_tasks())

    # -- logs -------------------------------------------------------------------------------------

    @app.get("/api/logs", tags=["logs"], summary="Follow the log stream (Server-Sent Events)",
             response_class=StreamingResponse,
             responses={200: {"description": "`text/event-stream`: one `log` event per line, its `data` the "
                                             "same JSON as `taskman logs --json`, its `id` a resume point.",
                              "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                        **_errors(401, 404, 422, 503)})
    async def follow_logs(
        svc: Caller,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        task_id: Annotated[str | None, Query(max_length=200, description="Only this task's lines.")] = None,
        lines: Annotated[int, Query(ge=0, le=MAX_PAGE, description="Past lines to send first.")] = 0,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", description="Resume after this id.")
                                 ] = None,
    ) -> StreamingResponse:
        if last_event_id is not None and not STREAM_ID.match(last_event_id):
            raise InvalidSpec("Last-Event-ID", "must be a log entry id such as 1718000000000-0")
        if task_id is not None:
            await run_in_threadpool(svc.get, task_id, runs=0)
        if last_event_id is not None:
            history, cursor = [], last_event_id
        else:
            history = await run_in_threadpool(events.recent_logs, svc.store, task_id, lines)
            tail = await run_in_threadpool(svc.store.stream_tail, "logs", 1)
            cursor = tail[-1][0] if tail else "0-0"
        slots.take()
        stop = threading.Event()

        secret = credentials.credentials if credentials else None

        async def stream():
            try:
                yield "retry: 2000\n: following the log stream\n\n"
                for entry_id, entry in history:
                    yield sse(entry_id, entry)
                sent = checked = time.monotonic()
                async for item in follow_in_thread(svc, task_id, cursor, stop):
                    now = time.monotonic()
                    if now - checked >= TOKEN_RECHECK_SECONDS:
                        checked = now
                        try:
                            await run_in_threadpool(auth.verify, svc.store, secret)
                        except Unauthorized as exc:
                            yield sse_error("Unauthorized", f"the stream ended: {exc.message}")
                            return
                    if item is not None:
                        sent = now
                        yield sse(*item)
                    elif now - sent >= KEEPALIVE_SECONDS:
                        sent = now
                        yield ": keep-alive\n\n"
            except redis.exceptions.RedisError as exc:
                yield sse_error("NoRedis", str(exc))
            finally:
                stop.set()
                slots.give_back()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- tokens and audit -------------------------------------------------------------------------

    @app.post("/api/tokens", tags=["admin"], status_code=201, summary="Create a token (the secret is shown once)",
              responses={201: {"model": NewTokenOut}, **_errors(401, 403, 409, 413, 422, 429, 503)},
              openapi_extra=_body_doc({"$ref": "#/components/schemas/TokenIn"}, "The new token's name and role."))
    def create_token(svc: Changer, body: Body) -> JSONResponse:
        auth.require(svc.role, "tokens")
        if not isinstance(body, dict):
            raise InvalidSpec("body", "must be a JSON object with 'name' and 'role'")
        unknown = sorted(set(body) - {"name", "role"})
        if unknown:
            raise InvalidSpec(unknown[0], "unknown field (a token has a name and a role)")
        if "name" not in body or "role" not in body:
            raise InvalidSpec("name" if "name" not in body else "role", "is required")
        secret, record = auth.create(svc.store, body["name"], body["role"], actor=svc.actor)
        return JSONResponse({"token": secret, **record}, status_code=201)

    @app.get("/api/tokens", tags=["admin"], summary="List tokens (never their secrets)",
             responses={200: {"model": list[TokenOut]}, **_errors(401, 403, 503)})
    def list_tokens(svc: Caller) -> JSONResponse:
        auth.require(svc.role, "tokens")
        return JSONResponse(auth.list_tokens(svc.store))

    @app.delete("/api/tokens/{name}", tags=["admin"], summary="Revoke a token (at once)",
                responses={200: {"model": TokenOut}, **_errors(401, 403, 404, 429, 503)})
    def revoke_token(svc: Changer, name: Annotated[str, Path(description="The token's name.")]) -> JSONResponse:
        auth.require(svc.role, "tokens")
        return JSONResponse(auth.revoke(svc.store, name, actor=svc.actor))

    @app.get("/api/audit", tags=["admin"], summary="The audit trail, newest first",
             responses={200: {"model": list[AuditOut]}, **_errors(401, 403, 422, 503)})
    def audit_trail(svc: Caller, limit: Limit = 100,
                    before: Annotated[str | None, Query(max_length=41, description="Entries older than this id.")
                                      ] = None) -> JSONResponse:
        auth.require(svc.role, "audit")
        return JSONResponse(audit.recent(svc.store, limit, before))

    # -- monitoring -------------------------------------------------------------------------------

    @app.get("/metrics", tags=["monitoring"], summary="Prometheus metrics (text exposition format)",
             response_class=Response,
             responses={200: {"content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}}, **READ_ERRORS})
    def prometheus(svc: Caller) -> Response:
        return Response(metrics.render(metrics.snapshot(svc.store, settings.heartbeat_ttl)),
                        media_type=PROMETHEUS_TEXT)

    @app.get("/api/metrics", tags=["monitoring"], summary="The same numbers as /metrics, as JSON",
             responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}, **READ_ERRORS})
    def metrics_json(svc: Caller) -> JSONResponse:
        return JSONResponse(metrics.snapshot(svc.store, settings.heartbeat_ttl).to_dict())

    @app.get("/api/health", tags=["monitoring"], summary="Liveness: Redis, workers, scheduler (no token needed)",
             responses={503: {"description": "Redis unreachable"}})
    def health() -> JSONResponse:
        started = time.perf_counter()
        try:
            snap = metrics.snapshot(service.store, settings.heartbeat_ttl)
            reports = service.isolation()
            lost = service.data_loss()
        except redis.exceptions.RedisError as exc:
            return JSONResponse({"status": "unavailable", "redis": f"unreachable: {exc}"}, status_code=503)
        jailed, isolation = service.isolation_summary(reports)
        return JSONResponse({"status": "ok", "redis": "ok", "workers": snap.workers, "scheduler": snap.scheduler,
                             "queued": snap.queued, "due": snap.due, "log_streams": slots.open,
                             "isolation": {"ok": jailed, "summary": isolation,
                                           "workers": {worker: {"missing": report.get("missing", []),
                                                                "accept_weak": report.get("accept_weak", False)}
                                                       for worker, report in reports.items()}},
                             "data_lost_at": lost["at"] if lost else None,
                             "redis_ms": round((time.perf_counter() - started) * 1000, 3)})

    # -- OpenAPI: the spec schema comes from core.models, so the docs cannot drift from validation -----

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes, tags=app.openapi_tags)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            spec_schema = TaskSpec.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
            components.update(spec_schema.pop("$defs", {}))
            components["TaskSpec"] = spec_schema
            token_schema = TokenIn.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(token_schema.pop("$defs", {}))
            components["TokenIn"] = token_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
    return app
