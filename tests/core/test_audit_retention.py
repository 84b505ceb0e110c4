"""The audit trail is kept by time, and API tokens draw changes from an allowance kept in Redis.

Real Redis, a namespace per test. Old entries are written with explicit stream ids in the past, the way
entries written months ago look.
"""

from __future__ import annotations

import time
import uuid

import pytest

from core import audit, auth
from core.errors import AuditFull, RateLimited
from core.store import Store, connect

DAY_MS = 86400 * 1000


@pytest.fixture()
def store(redis_server) -> Store:
    made = Store(connect(redis_server.url), f"aud{uuid.uuid4().hex[:8]}", audit_maxlen=50,
                 audit_retention=90 * 86400)
    yield made
    keys = made.redis.keys(made.keys.namespace + ":*")
    if keys:
        made.redis.delete(*keys)


def old_entry(store: Store, days_ago: float, seq: int = 0) -> str:
    ms = int(time.time() * 1000 - days_ago * DAY_MS)
    return store.redis.xadd(store.keys.audit, audit.entry("api:old", "create", f"t{seq}"), id=f"{ms}-{seq}")


def test_the_audit_stream_is_trimmed_by_time_never_by_length(store):
    expired = [old_entry(store, 200, seq) for seq in range(300)]
    kept_old = old_entry(store, 89)
    for index in range(600):  # far past audit_maxlen (50): the trail is never cut by length
        store.add_audit(audit.entry("api:flood", "create", f"f{index}"))
    ids = [entry_id for entry_id, _ in store.redis.xrange(store.keys.audit)]
    assert kept_old in ids, "an entry younger than the window survives any number of newer ones"
    assert sum(fields["actor"] == "api:flood" for _, fields in store.redis.xrange(store.keys.audit)) == 600
    lingering = set(expired) & set(ids)
    # Trimming is approximate (whole stream nodes, as XTRIM MINID ~ does): the expired entries that share
    # a node with younger ones linger until that node is trimmed; all others are gone.
    assert len(lingering) < 100 and expired[0] not in ids, len(lingering)


def test_token_scripts_trim_by_time_too(store):
    expired = [old_entry(store, 100, seq) for seq in range(300)]
    young = old_entry(store, 1)
    auth.create(store, "bot", "operator", actor="test")
    auth.revoke(store, "bot", actor="test")
    ids = [entry_id for entry_id, _ in store.redis.xrange(store.keys.audit)]
    assert young in ids and expired[0] not in ids and len(set(expired) & set(ids)) < 100
    assert [fields["action"] for _, fields in store.redis.xrange(store.keys.audit)][-2:] == ["token.create",
                                                                                           "token.revoke"]


def test_allowance_is_a_minute_of_changes_then_waits_at_the_rate(store):
    principal = auth.Principal("ci", auth.Role.OPERATOR)
    for _ in range(60):
        auth.throttle(store, principal, 1, per_minute=60)
    with pytest.raises(RateLimited) as info:
        auth.throttle(store, principal, 1, per_minute=60)
    assert info.value.status == 429 and 1 <= info.value.retry_after <= 2
    other = auth.Principal("other", auth.Role.OPERATOR)
    auth.throttle(store, other, 1, per_minute=60)  # allowances are per token
    time.sleep(1.1)
    auth.throttle(store, principal, 1, per_minute=60)  # one change a second comes back


def test_a_batch_counts_each_change_and_one_bigger_than_the_allowance_waits_for_a_full_one(store):
    principal = auth.Principal("batcher", auth.Role.OPERATOR)
    auth.throttle(store, principal, 40, per_minute=20)  # a full allowance lets one big batch through ...
    with pytest.raises(RateLimited) as info:
        auth.throttle(store, principal, 1, per_minute=20)
    assert info.value.retry_after >= 60, "... and its debt (20 changes) is waited out at the rate"


def test_a_full_audit_trail_refuses_api_changes_instead_of_erasing(store):
    for index in range(50):
        store.add_audit(audit.entry("api:x", "create", f"t{index}"))
    with pytest.raises(AuditFull, match="audit_maxlen"):
        auth.throttle(store, auth.Principal("ci", auth.Role.OPERATOR), 1, per_minute=600)
    assert store.redis.xlen(store.keys.audit) == 50
