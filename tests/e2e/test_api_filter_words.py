"""The REST list takes the filter words the console shows (``core.filters``), README's examples first."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import wait_for
from tests.e2e.conftest import role_clients
from tests.filter_examples import api_examples, expected, specs


@pytest.fixture(scope="module")
def clients(api, stack):
    yield from role_clients(api, stack.store, "filters")


@pytest.fixture
def viewer(clients):
    return clients["viewer"]


def test_readme_list_examples_and_every_word_work(viewer, stack, http_server):
    prefix = f"api-words-{uuid.uuid4().hex[:8]}"
    made = {suffix: stack.create(spec) for suffix, spec in specs(prefix, http_server.base_url).items()}
    stack.pause(made["cron"].id)
    for suffix in ("failed", "ok"):
        wait_for(lambda suffix=suffix: (runs := stack.get(made[suffix].id).runs) and runs[0].state.final,
                 message=f"the {suffix} run to finish")

    def names(**query) -> set[str]:
        answer = viewer.get("/api/tasks", params={"name": prefix, **query})
        assert answer.status_code == 200, answer.text
        return {task["name"] for task in answer.json()}

    for word in api_examples():
        field, value = word.split(":")
        assert names(**{field: value}) == expected(prefix, word), word
    assert names(last="succeeded") == expected(prefix, "last:succeeded")
    assert names(mode="now", kind="reg") == {f"{prefix}-ok"}
    scheduled = viewer.get("/api/scheduled-tasks", params={"name": prefix, "state": "paused"})
    assert [task["name"] for task in scheduled.json()] == [f"{prefix}-cron"]
    refused = viewer.get("/api/tasks", params={"mode": "hourly"})
    assert refused.status_code == 422 and refused.json()["field"] == "mode", refused.text
    assert "cron" in refused.json()["message"]
