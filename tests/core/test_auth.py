"""core.auth: tokens stored only as hashes, verified, revoked, audited; the role policy, enforced by the service.

Real Redis (the session's private server), each test module on a namespace of its own and no
workers: the service's role checks happen before anything is stored or sent.
"""

from __future__ import annotations

import hashlib
import uuid

import pytest

from core import audit, auth
from core.auth import Role
from core.errors import Conflict, Forbidden, InvalidSpec, NotFound, Unauthorized
from core.models import Kind
from core.service import Service

FAR = 30 * 24 * 3600


@pytest.fixture()
def service(settings, redis_server) -> Service:
    """A service on a namespace of its own (nothing here is meant to run)."""
    return Service.from_settings(settings.replace(namespace=f"auth{uuid.uuid4().hex[:8]}"))


def every_stored_value(service: Service) -> str:
    """Every key and value in the service's namespace, as one text (to look for leaked secrets)."""
    parts = []
    client = service.store.redis
    for key in client.scan_iter(f"{service.store.keys.namespace}:*"):
        kind = client.type(key)
        parts.append(key)
        if kind == "hash":
            parts.extend(f"{k}={v}" for k, v in client.hgetall(key).items())
        elif kind == "stream":
            parts.extend(str(fields) for _, fields in client.xrange(key))
        elif kind == "string":
            parts.append(client.get(key))
        elif kind == "zset":
            parts.extend(client.zrange(key, 0, -1))
    return "\n".join(parts)


def code_spec(**extra) -> dict:
    return {"name": "code", "function_code": "def f():\n    return 1", "function_name": "f", "delay_seconds": FAR,
            **extra}


def api_spec(**extra) -> dict:
    return {"name": "api", "api_url": "http://127.0.0.1:9/x", "delay_seconds": FAR, **extra}


# -- tokens ----------------------------------------------------------------------------------------


def test_a_token_is_shown_once_and_stored_only_as_its_hash(service):
    secret, record = auth.create(service.store, "ci-bot", "operator", actor="cli:alice")
    assert secret.startswith("tm_") and len(secret) >= 40
    assert record == {"name": "ci-bot", "role": "operator", "created_at": record["created_at"],
                      "created_by": "cli:alice", "last_used_at": None,
                      "fingerprint": hashlib.sha256(secret.encode()).hexdigest()[:12]}
    stored = every_stored_value(service)
    assert secret not in stored and secret[3:20] not in stored
    assert hashlib.sha256(secret.encode()).hexdigest() in stored
    listed = auth.list_tokens(service.store)
    assert [entry["name"] for entry in listed] == ["ci-bot"]
    assert "token" not in listed[0] and "sha256" not in listed[0]


def test_verify_knows_the_holder_and_refuses_anything_else(service):
    secret, _ = auth.create(service.store, "viewer-1", Role.VIEWER)
    principal = auth.verify(service.store, secret)
    assert principal == auth.Principal("viewer-1", Role.VIEWER)
    assert principal.actor == "api:viewer-1"
    for wrong in (None, "", secret + "x", secret[:-1], "tm_" + "A" * 43, secret.upper()):
        with pytest.raises(Unauthorized):
            auth.verify(service.store, wrong)
    assert auth.list_tokens(service.store)[0]["last_used_at"] is not None


def test_revoke_takes_effect_at_once_and_frees_the_name(service):
    secret, _ = auth.create(service.store, "temp", "admin")
    assert auth.revoke(service.store, "temp", actor="cli:bob")["role"] == "admin"
    with pytest.raises(Unauthorized):
        auth.verify(service.store, secret)
    assert auth.list_tokens(service.store) == []
    assert secret not in every_stored_value(service)
    with pytest.raises(NotFound):
        auth.revoke(service.store, "temp")
    again, _ = auth.create(service.store, "temp", "viewer")
    assert auth.verify(service.store, again).role is Role.VIEWER
    assert auth.list_tokens(service.store)[0]["last_used_at"] is not None


def test_refusals_name_the_field_and_store_nothing(service):
    auth.create(service.store, "taken", "viewer")
    with pytest.raises(Conflict):
        auth.create(service.store, "taken", "admin")
    for name in ("", " spaced", "a b", "x" * 65, "-dash-first", "naïve", None, 12):
        with pytest.raises(InvalidSpec) as refused:
            auth.create(service.store, name, "viewer")
        assert refused.value.field == "name"
    with pytest.raises(InvalidSpec) as refused:
        auth.create(service.store, "ok", "root")
    assert refused.value.field == "role"
    assert [entry["name"] for entry in auth.list_tokens(service.store)] == ["taken"]


def test_token_changes_are_audited_with_their_actor(service):
    auth.create(service.store, "audited", "operator", actor="api:boss")
    auth.revoke(service.store, "audited", actor="cli:carol")
    entries = audit.recent(service.store, 10)
    assert [(e["actor"], e["action"], e["target"], e["detail"]) for e in entries] == [
        ("cli:carol", "token.revoke", "audited", {}),
        ("api:boss", "token.create", "audited", {"role": "operator"}),
    ]


# -- the policy ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("action", "kind", "least"), [
    ("read", Kind.CODE, Role.VIEWER), ("read", Kind.API, Role.VIEWER),
    ("create", Kind.API, Role.OPERATOR), ("create", Kind.REGISTERED, Role.OPERATOR), ("create", Kind.CODE, Role.ADMIN),
    ("edit", Kind.API, Role.OPERATOR), ("edit", Kind.CODE, Role.ADMIN),
    ("run", Kind.REGISTERED, Role.OPERATOR), ("run", Kind.CODE, Role.ADMIN),
    ("resume", Kind.API, Role.OPERATOR), ("resume", Kind.CODE, Role.ADMIN),
    ("delete", Kind.API, Role.OPERATOR), ("delete", Kind.CODE, Role.ADMIN),
    ("stop", Kind.CODE, Role.OPERATOR), ("stop", Kind.API, Role.OPERATOR),
    ("pause", Kind.CODE, Role.OPERATOR),
    ("tokens", None, Role.ADMIN), ("audit", None, Role.ADMIN),
])
def test_policy_least_role(action, kind, least):
    assert auth.required_role(action, kind) is least
    for role in Role:
        if role.allows(least):
            auth.require(role, action, kind)
        else:
            with pytest.raises(Forbidden) as refused:
                auth.require(role, action, kind)
            assert least.value in refused.value.message and role.value in refused.value.message
    auth.require(None, action, kind)


def test_roles_are_ordered():
    assert [role.value for role in sorted(Role, key=lambda r: r.rank)] == ["viewer", "operator", "admin"]
    assert Role.ADMIN.allows(Role.OPERATOR) and not Role.VIEWER.allows(Role.OPERATOR)


# -- the service enforces it -----------------------------------------------------------------------


def test_an_operator_may_not_create_code_tasks_and_nothing_is_stored(service):
    operator = service.acting_as("api:op", Role.OPERATOR)
    before = (service.store.count_tasks(), len(audit.recent(service.store, 100)))
    with pytest.raises(Forbidden):
        operator.create(code_spec())
    with pytest.raises(Forbidden) as refused:
        operator.create_many([api_spec(), code_spec()])
    assert "[1]" in refused.value.message
    assert (service.store.count_tasks(), len(audit.recent(service.store, 100))) == before
    created = operator.create(api_spec())
    assert created.kind is Kind.API


def test_an_operator_stops_anything_but_runs_edits_resumes_and_deletes_only_api_and_registered(service):
    code = service.create(code_spec(cron_expression="0 0 1 1 *", delay_seconds=None, task_type="scheduled"))
    api = service.create(api_spec())
    operator = service.acting_as("api:op", Role.OPERATOR)
    for action in (lambda: operator.run_now(code.id), lambda: operator.update(code.id, {"name": "renamed"}),
                   lambda: operator.delete(code.id)):
        with pytest.raises(Forbidden):
            action()
    assert operator.pause(code.id).state.value == "paused"
    with pytest.raises(Forbidden):
        operator.resume(code.id)
    assert operator.stop(code.id).state.value == "paused"
    with pytest.raises(Forbidden):
        operator.update(api.id, {"function_code": "def g():\n    return 2", "function_name": "g"})
    assert service.get(api.id).kind is Kind.API
    assert operator.update(api.id, {"name": "api renamed"}).name == "api renamed"
    operator.delete(api.id)
    admin = service.acting_as("api:root", Role.ADMIN)
    assert admin.update(code.id, {"name": "by admin"}).name == "by admin"
    admin.delete(code.id)


def test_a_viewer_changes_nothing(service):
    task = service.create(api_spec())
    viewer = service.acting_as("api:v", Role.VIEWER)
    for action in (lambda: viewer.create(api_spec()), lambda: viewer.stop(task.id), lambda: viewer.pause(task.id),
                   lambda: viewer.run_now(task.id), lambda: viewer.update(task.id, {"name": "x"}),
                   lambda: viewer.delete(task.id)):
        with pytest.raises(Forbidden):
            action()
    assert viewer.get(task.id).state.value == "active"
    assert [t.id for t in viewer.list_tasks(limit=10)] == [task.id]
