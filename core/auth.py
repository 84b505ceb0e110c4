"""API tokens and roles: who may call the REST API, and what each role may do.

A token is a random secret shown once, when it is created; Redis keeps only its SHA-256 (a token is
256 random bits, so a plain hash is enough: there is nothing to brute-force), with its name, role,
creator and creation time. Verifying a request is one HGET by hash. Creating and revoking are Lua
scripts that write the audit entry in the same step.

Each token may make ``api_rate_per_minute`` changes a minute (``throttle``): the allowance lives in
Redis, so every API process counts against the same one, and it bounds how fast any token can grow
the audit trail, which is trimmed by time only.

Roles are ordered ``viewer < operator < admin``. The policy lives here, in one table, and
``core.service`` enforces it for every change, so no front end decides on its own:

- viewer:   read tasks, runs, logs and metrics;
- operator: also create, edit, run, resume and delete API and registered tasks, and stop or pause
            any task (stopping never runs code);
- admin:    also everything on code tasks (they run code on the workers), tokens, the audit trail and
            ``export`` (the one read that returns secrets unmasked).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from core import audit
from core.errors import AuditFull, Conflict, Forbidden, InvalidSpec, NotFound, RateLimited, Unauthorized
from core.models import Kind, iso
from core.store import Store

TOKEN_PREFIX = "tm_"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
LAST_USED_EVERY = 60.0


class Role(StrEnum):
    """A token's role; each includes everything the ones before it may do."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


# action → (role needed on API and registered tasks, role needed on code tasks)
POLICY: dict[str, tuple[Role, Role]] = {
    "read": (Role.VIEWER, Role.VIEWER),
    "create": (Role.OPERATOR, Role.ADMIN),
    "edit": (Role.OPERATOR, Role.ADMIN),
    "run": (Role.OPERATOR, Role.ADMIN),
    "resume": (Role.OPERATOR, Role.ADMIN),
    "delete": (Role.OPERATOR, Role.ADMIN),
    "stop": (Role.OPERATOR, Role.OPERATOR),
    "pause": (Role.OPERATOR, Role.OPERATOR),
    "tokens": (Role.ADMIN, Role.ADMIN),
    "audit": (Role.ADMIN, Role.ADMIN),
    "export": (Role.ADMIN, Role.ADMIN),
}


def required_role(action: str, kind: Kind | None = None) -> Role:
    """The least role that may do ``action`` (on a task of ``kind``, where that matters)."""
    for_tasks, for_code = POLICY[action]
    return for_code if kind is Kind.CODE else for_tasks


def require(role: Role | None, action: str, kind: Kind | None = None, what: str = "") -> None:
    """Raise ``Forbidden`` unless ``role`` may do ``action``; ``None`` is a trusted local caller."""
    if role is None:
        return
    needed = required_role(action, kind)
    if not role.allows(needed):
        subject = what or (f"{kind.value} tasks" if kind else action)
        article = "an" if role is Role.OPERATOR or role is Role.ADMIN else "a"
        doing = f"use {action}" if action in ("tokens", "audit", "export") else f"{action} {subject}"
        raise Forbidden(f"{article} {role.value} token may not {doing}; that needs the {needed.value} role")


def parse_role(value: Any) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise InvalidSpec("role", f"must be one of {', '.join(role.value for role in Role)}") from None


@dataclass(frozen=True)
class Principal:
    """Who a verified token belongs to."""

    name: str
    role: Role

    @property
    def actor(self) -> str:
        """How the audit trail names requests made with this token."""
        return f"api:{self.name}"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def create(store: Store, name: str, role: Role | str, *, actor: str = "system") -> tuple[str, dict[str, Any]]:
    """Make a token; returns its secret (shown once, never stored) and its public record."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidSpec("name", "1–64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit")
    role = parse_role(role)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = time.time()
    sha256 = digest(secret)
    record = {"name": name, "role": role.value, "created_at": now, "created_by": actor, "sha256": sha256}
    entry = audit.entry(actor, "token.create", name, {"role": role.value}, now)
    if not store.add_token(name, sha256, record, entry):
        raise Conflict(f"a token named {name!r} already exists; revoke it first or pick another name")
    return secret, public(record)


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A token's record as front ends show it: no secret, no hash, a short fingerprint."""
    return {"name": record["name"], "role": record["role"], "created_at": iso(record.get("created_at")),
            "created_by": record.get("created_by"), "last_used_at": iso(record.get("last_used_at")),
            "fingerprint": record.get("sha256", "")[:12]}


def list_tokens(store: Store) -> list[dict[str, Any]]:
    """Every token, oldest first, without secrets."""
    return [public(record) for record in sorted(store.token_records(), key=lambda r: r.get("created_at", 0))]


def revoke(store: Store, name: str, *, actor: str = "system") -> dict[str, Any]:
    """Delete a token at once (its next request gets 401); returns the revoked token's record."""
    record = store.remove_token(name, audit.entry(actor, "token.revoke", name))
    with _mark_lock:
        _last_marked.pop((store.keys.namespace, name), None)
    if record is None:
        raise NotFound(f"no token named {name!r}")
    return public(record)


_last_marked: dict[tuple[str, str], float] = {}
_mark_lock = threading.Lock()


def verify(store: Store, secret: str | None) -> Principal:
    """The holder of ``secret``; ``Unauthorized`` for a missing, wrong or revoked token."""
    if not secret:
        raise Unauthorized("this endpoint needs a token: send 'Authorization: Bearer <token>' "
                           "(create one with `taskman token create --role viewer --name NAME`)")
    found = store.token_by_hash(digest(secret))
    if found is None:
        raise Unauthorized("the token is not valid (wrong, mistyped or revoked)")
    principal = Principal(found["name"], Role(found["role"]))
    now = time.time()
    key = (store.keys.namespace, principal.name)
    with _mark_lock:
        due = now - _last_marked.get(key, 0.0) >= LAST_USED_EVERY
        if due:
            _last_marked[key] = now
    if due:
        store.mark_token_used(principal.name, now)
    return principal


def throttle(store: Store, principal: Principal, cost: int, per_minute: int) -> None:
    """Count ``cost`` changes (a batch create counts each task) against the token's allowance.

    Raises ``RateLimited`` (429, with the seconds to wait) past ``per_minute``, and ``AuditFull`` (503)
    when the audit stream already holds its most entries within the retention window: the trail is
    never trimmed by length, so a change that no longer fits is refused rather than erase a younger entry.
    """
    verdict, value = store.take_allowance(principal.name, per_minute, cost)
    if verdict == "rate":
        wait = max(1, -(-value // 1000))
        raise RateLimited(f"token {principal.name!r} may make {per_minute} changes a minute and has used them; "
                          f"retry in {wait} s", retry_after=wait)
    if verdict == "full":
        raise AuditFull(f"the audit trail holds {value} entries, its most (audit_maxlen) within the retention "
                        "window (audit_retention_days); changes through the API resume as entries age out. "
                        "An admin can raise audit_maxlen.")
