"""What routes declare instead of doing it themselves: who calls (a token → the service acting for its
holder), a change counted against the token's rate, the JSON body read within its cap, and the query
parameters every list shares.

The application keeps its ``Service`` and ``Settings`` on ``app.state`` (``api.app.create_app``); the
dependencies here read them from the request, so the routers are plain module-level ``APIRouter``s.
The role policy is not here: the acting service enforces it in every method (``core.service``).

No ``from __future__ import annotations`` here: FastAPI reads the parameter annotations at runtime.
"""

import json
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.schemas import JSONResponse
from core.config import Settings
from core.errors import InvalidSpec, TaskmanError
from core.service import MAX_BATCH, Service

MAX_PAGE = 1000

bearer = HTTPBearer(auto_error=False, description="A taskman API token (`taskman token create`).")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def service_of(request: Request) -> Service:
    """The application's service, acting for nobody yet (``/api/health`` uses it as it is)."""
    return request.app.state.service


async def settings_of(request: Request) -> Settings:
    """The application's settings (limits: body size, rate, log streams)."""
    return request.app.state.settings


AppService = Annotated[Service, Depends(service_of)]
AppSettings = Annotated[Settings, Depends(settings_of)]


def secret_of(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials else None


def caller(request: Request, credentials: Credentials) -> Service:
    """The service acting for the request's token holder (401 for a missing, wrong or revoked token).
    It reads the application's service itself rather than through ``AppService``: one dependency less
    to solve on every request."""
    return request.app.state.service.with_token(secret_of(credentials))


Caller = Annotated[Service, Depends(caller)]


def changer(svc: Caller) -> Service:
    """A caller about to change something: one change counted against its token's allowance (429 past it)."""
    svc.throttle()
    return svc


Changer = Annotated[Service, Depends(changer)]


def batch_cost(body: Any) -> int:
    """What a create counts against the allowance: each task of a batch (as each is audited)."""
    return min(max(len(body), 1), MAX_BATCH) if isinstance(body, list) else 1


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


async def _raw_body(request: Request, settings: Settings) -> bytes:
    """The body's bytes: at most ``api_max_body`` (413 beyond)."""
    limit = settings.api_max_body
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the request body is {int(declared)} bytes; at most {limit} are accepted")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the request body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body(request: Request, settings: AppSettings) -> Any:
    """The body as JSON, whatever its ``Content-Type``: at most ``api_max_body`` bytes (413 beyond)."""
    return parse_json(await _raw_body(request, settings))


async def read_optional_body(request: Request, settings: AppSettings) -> Any:
    """:func:`read_body` for a route whose body may be left out: an empty body reads as None."""
    raw = await _raw_body(request, settings)
    return parse_json(raw) if raw.strip() else None


Body = Annotated[Any, Depends(read_body)]
OptionalBody = Annotated[Any, Depends(read_optional_body)]
TaskId = Annotated[str, Path(description="The task's id (from `POST /api/tasks` or `GET /api/tasks`).")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="How many to skip.")]


def list_page(request: Request, items: list[dict], limit: int, offset: int, total: int | None) -> JSONResponse:
    """A page of a list: ``Link: <…>; rel="next"`` when it is full (there may be more), ``X-Total-Count``
    when the total is known."""
    headers = {}
    if total is not None:
        headers["X-Total-Count"] = str(total)
    if len(items) == limit:
        headers["Link"] = f'<{request.url.include_query_params(offset=offset + limit)}>; rel="next"'
    return JSONResponse(items, headers=headers)
