"""API tokens: create (the secret is in the answer, once), list, revoke (admin).

No ``from __future__ import annotations`` here: FastAPI reads the parameter annotations at runtime.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Path

from api.deps import Body, Caller, Changer
from api.schemas import JSONResponse, NewTokenOut, TokenOut, body_doc, errors
from core.errors import InvalidSpec

router = APIRouter(tags=["admin"])


def token_fields(body: Any) -> tuple[Any, Any]:
    """The name and role a ``POST /api/tokens`` body asks for (``core.auth`` checks their values)."""
    if not isinstance(body, dict):
        raise InvalidSpec("body", "must be a JSON object with 'name' and 'role'")
    unknown = sorted(set(body) - {"name", "role"})
    if unknown:
        raise InvalidSpec(unknown[0], "unknown field (a token has a name and a role)")
    if "name" not in body or "role" not in body:
        raise InvalidSpec("name" if "name" not in body else "role", "is required")
    return body["name"], body["role"]


@router.post("/api/tokens", status_code=201, summary="Create a token (the secret is shown once)",
             responses={201: {"model": NewTokenOut}, **errors(401, 403, 409, 413, 422, 429, 503)},
             openapi_extra=body_doc({"$ref": "#/components/schemas/TokenIn"}, "The new token's name and role."))
def create_token(svc: Changer, body: Body) -> JSONResponse:
    svc.require("tokens")  # a caller without the role learns nothing about what its body lacks
    secret, record = svc.create_token(*token_fields(body))
    return JSONResponse({"token": secret, **record}, status_code=201)


@router.get("/api/tokens", summary="List tokens (never their secrets)",
            responses={200: {"model": list[TokenOut]}, **errors(401, 403, 503)})
def list_tokens(svc: Caller) -> JSONResponse:
    return JSONResponse(svc.tokens())


@router.delete("/api/tokens/{name}", summary="Revoke a token (at once)",
               responses={200: {"model": TokenOut}, **errors(401, 403, 404, 429, 503)})
def revoke_token(svc: Changer, name: Annotated[str, Path(description="The token's name.")]) -> JSONResponse:
    return JSONResponse(svc.revoke_token(name))
