"""The filter words (``core.filters``): every word a screen shows picks the tasks that show it."""

from __future__ import annotations

import pytest

from core import filters
from core.errors import InvalidSpec
from core.models import Kind, Mode, RunState, Task, TaskState
from core.spec import TaskSpec
from tui.widgets.task_table import KIND_LABELS, MODE_LABELS


def task(name: str, *, mode: Mode = Mode.SCHEDULED, kind: Kind = Kind.CODE, state: TaskState = TaskState.ACTIVE,
         last: str | None = None) -> Task:
    spec = TaskSpec.model_construct(name=name, kind=kind, task_type=mode)
    return Task.from_spec(spec, id=name, state=state, created_at=0.0, updated_at=0.0, last_run_state=last)


ONE_SHOT_FAILED = task("import-users", mode=Mode.IMMEDIATE, state=TaskState.DONE, last="failed")
CRON_RUNNING = task("daily_report", last="running")
DELAYED_API = task("ping-billing", mode=Mode.DELAYED, kind=Kind.API, state=TaskState.PAUSED)
REGISTERED_OK = task("nightly-export", kind=Kind.REGISTERED, last="succeeded")
TASKS = [ONE_SHOT_FAILED, CRON_RUNNING, DELAYED_API, REGISTERED_OK]


def picked(query: filters.TaskFilter) -> list[str]:
    return [t.name for t in TASKS if query.matches(t)]


@pytest.mark.parametrize("text, names", [
    ("", ["import-users", "daily_report", "ping-billing", "nightly-export"]),
    ("state:failed", ["import-users"]),
    ("last:failed", ["import-users"]),
    ("state:done", ["import-users"]),
    ("state:running", ["daily_report"]),
    ("last:succeeded", ["nightly-export"]),
    ("state:active", ["daily_report", "nightly-export"]),
    ("mode:cron", ["daily_report", "nightly-export"]),
    ("mode:scheduled", ["daily_report", "nightly-export"]),
    ("mode:now", ["import-users"]),
    ("mode:delay", ["ping-billing"]),
    ("kind:reg", ["nightly-export"]),
    ("kind:api state:paused", ["ping-billing"]),
    ("REPORT", ["daily_report"]),
    ("name:port", ["import-users", "daily_report", "nightly-export"]),
    ("port mode:cron last:running", ["daily_report"]),
])
def test_words_pick_what_the_screen_shows(text, names):
    assert picked(filters.parse(text)) == names
    assert picked(filters.parse(text, partial=True)) == names


def test_every_column_label_and_state_is_a_word():
    for label, value in KIND_LABELS.items():
        assert picked(filters.parse(f"kind:{value}")) == [t.name for t in TASKS if t.kind.value == label]
    for label, value in MODE_LABELS.items():
        assert picked(filters.parse(f"mode:{value}")) == [t.name for t in TASKS if t.mode.value == label]
    for state in RunState:
        same = picked(filters.parse(f"last:{state.value}"))
        assert picked(filters.parse(f"state:{state.value}")) == same == [t.name for t in TASKS
                                                                         if t.last_run_state == state.value]
    assert {state.value for state in TaskState} < set(filters.words("state"))


def test_the_console_reads_words_as_typed_so_far():
    assert picked(filters.parse("state:fa", partial=True)) == ["import-users"]
    assert picked(filters.parse("mode:c", partial=True)) == ["daily_report", "nightly-export"]
    assert picked(filters.parse("state:", partial=True)) == [t.name for t in TASKS]
    assert picked(filters.parse("state:nonsense", partial=True)) == []


def test_whole_words_only_elsewhere_and_a_refusal_names_the_field_and_the_words():
    with pytest.raises(InvalidSpec) as refused:
        filters.from_options(state="fa")
    assert refused.value.field == "state" and "failed" in refused.value.reason and "active" in refused.value.reason
    with pytest.raises(InvalidSpec) as refused:
        filters.parse("mode:hourly")
    assert refused.value.field == "mode" and "cron" in refused.value.reason
    assert picked(filters.from_options(state="failed", kind="code")) == ["import-users"]
    assert picked(filters.from_options(mode=Mode.SCHEDULED, last="running")) == ["daily_report"]
    assert not filters.from_options(name="")
