"""schemathesis against the API's own OpenAPI document: no generated input may get a 5xx.

A real ``taskman api`` process on 127.0.0.1, on a namespace of its own (no workers serve it, so the
tasks generated inputs manage to create are stored and queued but never run). Every operation gets
a bounded number of examples on top of schemathesis's coverage cases (the boundary and negative values of
every parameter and field, ~1,500 calls, which give every operation its 4xx and most their 2xx); the log
stream is left out (a 200 there never ends — its refusals are tested in test_api.py). The calls share one
HTTP connection, as a client that keeps it alive does: a new one per call cost half of each call's time.

The check that the fuzzing reached the whole API runs a fuzz of its own over every operation at once: the
per-operation cases may run in other test processes (pytest-xdist), so counting theirs from here could not
be relied on.
"""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from core import auth
from core.service import Service
from tests.e2e.apiserver import ApiServer, process_env

EXAMPLES = 10
ACROSS = 300
"""Examples of the fuzz over every operation at once (``test_the_fuzzing_reaches_every_operation...``)."""


@pytest.fixture(scope="module")
def fuzz_namespace() -> str:
    return f"fuzz{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def fuzz_server(taskman_env, fuzz_namespace, redis_server, tmp_path_factory):
    server = ApiServer(process_env(taskman_env, TASKMAN_NAMESPACE=fuzz_namespace),
                       tmp_path_factory.mktemp("fuzz") / "api.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fuzz_token(settings, fuzz_namespace) -> str:
    service = Service.from_settings(settings.replace(namespace=fuzz_namespace))
    secret, _ = auth.create(service.store, f"fuzzer-{uuid.uuid4().hex}", "admin")
    return secret


@pytest.fixture(scope="module")
def http_session():
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema").exclude(path="/api/logs")


def _call(case, fuzz_server, fuzz_token, http_session):
    return case.call(base_url=fuzz_server.url, session=http_session,
                     headers={"Authorization": f"Bearer {fuzz_token}"}, timeout=15)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_generated_input_gets_a_server_error(case, fuzz_server, fuzz_token, http_session):
    response = _call(case, fuzz_server, fuzz_token, http_session)
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                             response_schema_conformance])
    assert response.status_code < 500, f"{case.method} {case.formatted_path} → {response.status_code}: " \
                                       f"{response.text[:500]}"
    if response.status_code >= 400:
        body = response.json()
        assert body["error"] and body["message"], body


def test_the_fuzzing_reaches_every_operation_and_the_server_logs_no_traceback(api_schema, fuzz_server, fuzz_token,
                                                                                 http_session):
    seen: Counter = Counter()  # (operation, status class) → calls

    @given(case=api_schema.exclude(path="/api/logs").as_strategy())
    @settings(max_examples=ACROSS, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def across(case) -> None:
        response = _call(case, fuzz_server, fuzz_token, http_session)
        seen[(f"{case.method} {case.path}", response.status_code // 100)] += 1
        assert response.status_code < 500, f"{case.method} {case.formatted_path} → {response.status_code}"

    across()
    operations = {operation for operation, _ in seen}
    print(sorted(seen.items()))
    assert len(operations) >= 20, operations
    assert sum(seen.values()) >= 200
    assert {status for _, status in seen} >= {2, 4}
    assert "Traceback" not in fuzz_server.log()
