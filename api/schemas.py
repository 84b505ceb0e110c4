"""What the OpenAPI document says the API answers: response models, error shapes and request bodies.

Responses are rendered by ``core``'s own ``to_dict`` methods, so these models only describe them (they
validate nothing on the way out); the task spec's schema comes from ``core.spec.TaskSpec`` itself
(``api.app``), so the docs cannot drift from validation.

No ``from __future__ import annotations`` here: pydantic reads the annotations at runtime.
"""

from typing import Any

from fastapi import responses
from pydantic import BaseModel, ConfigDict, Field

from core.auth import Role
from core.models import Kind, Mode, RunState, TaskState
from core.text import json_text


class JSONResponse(responses.JSONResponse):
    """JSON with DEL, C1 and bidi controls escaped (``\\u009b``): a task's data curl'ed into a terminal
    cannot drive it. The same JSON value; only its spelling changes."""

    def render(self, content: Any) -> bytes:
        return json_text(content, allow_nan=False, separators=(",", ":")).encode("utf-8")


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
    overrides: dict[str, Any] | None = Field(default=None, description=(
        "What this run was given instead of its task's args/kwargs or request body (secrets masked)."))


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
    role: Role = Field(examples=["operator"])


class TokenOut(BaseModel):
    name: str
    role: Role
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


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entry of a route that may answer these error statuses."""
    described = {401: "Missing, wrong or revoked token", 403: "The token's role does not allow this",
                 404: "No such task or run", 409: "Not possible in the task's current state",
                 413: "Request body too large", 422: "Refused input; `field` names what is wrong",
                 429: "The token made more changes than its rate allows; `Retry-After` says when to retry",
                 503: "Redis unreachable, too many log streams, or the audit trail full"}
    return {status: {"model": ErrorOut, "description": described[status]} for status in statuses}


READ_ERRORS = errors(401, 422, 503)
TASK_ERRORS = errors(401, 403, 404, 409, 422, 429, 503)
BODY_ERRORS = errors(401, 403, 404, 409, 413, 422, 429, 503)


def body_doc(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its JSON body itself (``api.deps.Body``)."""
    return {"requestBody": {"required": True, "description": description,
                            "content": {"application/json": {"schema": schema}}}}


SPEC_REF = {"$ref": "#/components/schemas/TaskSpec"}
ONE_OR_MANY = {"oneOf": [SPEC_REF, {"type": "array", "items": SPEC_REF, "minItems": 1}]}
RUN_WITH = {"type": "object", "additionalProperties": False,
            "properties": {"args": {"type": "array"}, "kwargs": {"type": "object"}, "data": {}, "json": {}}}
"""What ``POST /api/tasks/{id}/run`` may be given: this run's arguments or request body (``check_overrides``)."""
