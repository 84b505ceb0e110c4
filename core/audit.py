"""The audit trail: who changed what, when, from which front end.

Every change a person makes (create, edit, run, stop, pause, resume, delete, token create/revoke)
appends one entry to a capped Redis stream, in the same pipeline (or Lua script) as the change
itself, so a change is never stored without its entry. The actor names the front end and the
person: ``cli:alice``, ``console:alice``, ``api:<token name>``; ``system`` is the default of a
``Service`` nobody named. Reading is newest first, paged by entry id.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from core import events
from core.errors import InvalidSpec
from core.models import iso
from core.store import Store

ENTRY_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")
MAX_PAGE = 1000
ACTIONS = ("create", "edit", "run", "stop", "pause", "resume", "delete", "token.create", "token.revoke")


def entry(actor: str, action: str, target: str, detail: dict[str, Any] | None = None,
          when: float | None = None) -> dict[str, str]:
    """One audit entry as the flat string mapping the stream stores."""
    return {"ts": repr(time.time() if when is None else when), "actor": actor, "action": action,
            "target": target, "detail": json.dumps(detail or {}, ensure_ascii=False, sort_keys=True)}


def decode(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """A stored entry as front ends show it (``taskman audit --json`` and ``GET /api/audit``)."""
    try:
        detail = json.loads(fields.get("detail") or "{}")
    except ValueError:
        detail = {"raw": fields.get("detail")}
    ts = float(fields.get("ts") or 0)
    return {"id": entry_id, "ts": iso(ts), "actor": fields.get("actor", ""), "action": fields.get("action", ""),
            "target": fields.get("target", ""), "detail": detail}


def recent(store: Store, limit: int = 50, before: str | None = None) -> list[dict[str, Any]]:
    """Up to ``limit`` entries, newest first; ``before`` (an entry id) pages further back."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidSpec("limit", f"must be between 1 and {MAX_PAGE}")
    if before is not None and not ENTRY_ID.match(before):
        raise InvalidSpec("before", "must be an audit entry id such as 1718000000000-0")
    return [decode(entry_id, fields) for entry_id, fields in store.audit_entries(limit, before)]


def read_since(store: Store, cursor: str, wait_ms: int | None = events.BLOCK_MS) -> events.Batch:
    """The entries after ``cursor`` (as :func:`decode` shows them), oldest first (``taskman audit -f``)."""
    return events.read(store, "audit", cursor, wait_ms, decode)
