"""The audit trail, newest first, paged by entry id (admin).

No ``from __future__ import annotations`` here: FastAPI reads the parameter annotations at runtime.
"""

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import Caller, Limit
from api.schemas import AuditOut, JSONResponse, errors

router = APIRouter(tags=["admin"])


@router.get("/api/audit", summary="The audit trail, newest first",
            responses={200: {"model": list[AuditOut]}, **errors(401, 403, 422, 503)})
def audit_trail(svc: Caller, limit: Limit = 100,
                before: Annotated[str | None, Query(max_length=41, description="Entries older than this id.")
                                  ] = None) -> JSONResponse:
    return JSONResponse(svc.audit_entries(limit, before))
