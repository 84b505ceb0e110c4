"""``GET /api/logs``: the log stream as Server-Sent Events, one ``log`` event per line.

A thread per stream reads the log stream a batch at a time (``Service.logs_since``, a blocking XREAD)
and hands each batch to the event loop; when the client goes away the response is cancelled and the
thread stops within a second. A stream outlives the request that opened it, so its token is checked
again every ``TOKEN_RECHECK_SECONDS``: once revoked, the stream sends an ``error`` event and ends.
``StreamSlots`` bounds how many such threads one API process holds.

No ``from __future__ import annotations`` here: FastAPI reads the parameter annotations at runtime.
"""

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import MAX_PAGE, Caller, Credentials, secret_of
from api.schemas import errors
from core.errors import InvalidSpec, NoRedis, TaskmanError, Unauthorized
from core.service import Service
from core.text import json_text

log = logging.getLogger("taskman.api")

router = APIRouter(tags=["logs"])

KEEPALIVE_SECONDS = 15.0
TOKEN_RECHECK_SECONDS = 2.0
TICK_SECONDS = 1.0
STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
Entries = list[tuple[str, dict[str, Any]]]


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


async def follow_in_thread(service: Service, task_id: str | None, cursor: str,
                           stop: threading.Event) -> AsyncIterator[Entries | None]:
    """Batches of log entries after ``cursor`` as they arrive (None every ``TICK_SECONDS`` without one); a
    thread does the blocking reads until ``stop``."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(maxsize=4)
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
        position = cursor
        try:
            while not stop.is_set():
                batch = service.logs_since(position, task_id)
                position = batch.cursor
                if batch.entries and not hand_over(batch.entries):
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


@router.get("/api/logs", summary="Follow the log stream (Server-Sent Events)", response_class=StreamingResponse,
            responses={200: {"description": "`text/event-stream`: one `log` event per line, its `data` the "
                                            "same JSON as `taskman logs --json`, its `id` a resume point.",
                             "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                       **errors(401, 404, 422, 503)})
async def follow_logs(
    request: Request,
    svc: Caller,
    credentials: Credentials,
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
        history = await run_in_threadpool(svc.recent_logs, task_id, lines)
        cursor = await run_in_threadpool(svc.logs_cursor)
    slots: StreamSlots = request.app.state.slots
    slots.take()
    stop = threading.Event()
    secret = secret_of(credentials)

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 2000\n: following the log stream\n\n"
            for entry_id, entry in history:
                yield sse(entry_id, entry)
            sent = checked = time.monotonic()
            async for batch in follow_in_thread(svc, task_id, cursor, stop):
                now = time.monotonic()
                if now - checked >= TOKEN_RECHECK_SECONDS:
                    checked = now
                    try:
                        await run_in_threadpool(svc.verify_token, secret)
                    except Unauthorized as exc:
                        yield sse_error("Unauthorized", f"the stream ended: {exc.message}")
                        return
                if batch is not None:
                    sent = now
                    for entry_id, entry in batch:
                        yield sse(entry_id, entry)
                elif now - sent >= KEEPALIVE_SECONDS:
                    sent = now
                    yield ": keep-alive\n\n"
        except NoRedis as exc:
            yield sse_error("NoRedis", exc.cause or exc.message)
        finally:
            stop.set()
            slots.give_back()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
