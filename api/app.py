"""The REST API's application: FastAPI over ``core.service``, with bearer tokens, roles and the audit trail.

It adds no logic of its own. Each request's token makes the service act for its holder
(``Service.with_token``, the ``Caller`` dependency of ``api.deps``), so the role policy and the audit
entry are the service's business, as they are for the command line and the console. Bodies are the
same JSON the command line reads and responses are exactly what its ``--json`` prints
(``Task.to_dict`` and ``Run.to_dict``). The routes live in ``api.routers``, one module per resource.

Errors are one JSON shape, ``{"error", "field"?, "message"}``, with the status the error carries
(``core.errors``: 401, 403, 404, 409, 422; 413 for a body over ``api_max_body``; 429 with ``Retry-After``
when a token makes more than ``api_rate_per_minute`` changes; 503 when Redis is away). Bad input never
becomes a 500: bodies are read and parsed by ``api.deps`` (size-capped, strict JSON), and FastAPI's own
validation errors are mapped to 422 naming the field.

No ``from __future__ import annotations`` here: FastAPI reads the parameter annotations at runtime.
"""

import gc
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.routers import audit, health, logs, metrics, runs, tasks, tokens
from api.schemas import JSONResponse, TokenIn
from core.config import Settings
from core.errors import RateLimited, TaskmanError, Unauthorized
from core.service import Service
from core.spec import TaskSpec

log = logging.getLogger("taskman.api")

VERSION = "1"
HEALTH_THREADS = 2
"""Threads of its own for ``/api/health``: a load balancer's probe never waits behind the requests it judges."""

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


def from_environment() -> FastAPI:
    """The application as each process of ``taskman api --workers N`` builds it: settings read from the
    environment and the TOML file, as the command read them, and a service (and Redis pool) of its own."""
    settings = Settings()
    return create_app(Service.from_settings(settings), settings)


def create_app(service: Service, settings: Settings) -> FastAPI:
    """The FastAPI application serving ``service`` (one Redis namespace) with ``settings``' limits."""
    app = FastAPI(title="taskman", version=VERSION, description=DESCRIPTION, default_response_class=JSONResponse,
                  lifespan=serving, openapi_tags=[{"name": "tasks"}, {"name": "runs"}, {"name": "logs"},
                                                  {"name": "admin"}, {"name": "monitoring"}])
    app.state.service = service
    app.state.settings = settings
    app.state.slots = logs.StreamSlots(settings.api_max_streams)
    app.state.health_threads = anyio.CapacityLimiter(HEALTH_THREADS)
    for router in (tasks.router, runs.router, logs.router, tokens.router, audit.router, metrics.router,
                   health.router):
        app.include_router(router)
    app.add_exception_handler(TaskmanError, taskman_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected)
    app.openapi = lambda: openapi(app)  # type: ignore[method-assign]  # FastAPI's documented way to extend it
    return app


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[None]:
    """How a serving process runs requests: ``api_threads`` threads for route bodies (FastAPI runs a sync
    route or dependency in the event loop's default thread pool, 40 threads), and the garbage collector
    set for a server whose objects live as long as a request.

    Fewer threads than requests in flight: with 40, every thread holding a request competes for Python's
    one lock and the slowest answers wait longest (16 clients: p99 86 ms with 40, 49 ms with 4, the same
    requests/s). The collector's first generation is collected every 50,000 allocations rather than 700 and
    the objects made at start are frozen out of it: its pauses landed in the slowest answers (p99 86 to
    63 ms alone)."""
    anyio.to_thread.current_default_thread_limiter().total_tokens = app.state.settings.api_threads
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    yield


# -- errors ---------------------------------------------------------------------------------------


async def taskman_error(request: Request, exc: TaskmanError) -> JSONResponse:
    """taskman's own errors (``core.errors``) with the status each carries; Redis away is ``NoRedis``, 503."""
    headers = {"WWW-Authenticate": 'Bearer realm="taskman"'} if isinstance(exc, Unauthorized) else None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    body = exc.to_dict()
    if body.get("error") == "TaskmanError":
        body["error"] = "BadRequest"
    return JSONResponse(body, status_code=exc.status, headers=headers)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's refusal of a parameter, as taskman's ``InvalidSpec`` naming the field (422)."""
    error = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    location = [str(part) for part in error.get("loc", ())]
    field = ".".join(location[1:] if location[:1] in (["query"], ["path"], ["header"], ["body"]) else location)
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return JSONResponse({"error": "InvalidSpec", "field": field, "message": f"{field}: {message}"},
                        status_code=422)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own answers (no such endpoint, method not allowed) in the API's error shape."""
    names = {404: "NotFound", 405: "MethodNotAllowed", 413: "BodyTooLarge"}
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
    return JSONResponse({"error": names.get(exc.status_code, "HTTPError"), "message": message},
                        status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback, answered 500 without details."""
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": "InternalError", "message": "unexpected error; the API server's log has "
                                                              "the details"}, status_code=500)


# -- OpenAPI: the spec schema comes from core.models, so the docs cannot drift from validation -------


def openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the task spec's and the token body's schemas added."""
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
