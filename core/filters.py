"""The words that pick tasks out of the list, the same for every front end.

The console's ``/`` box, ``taskman list --state/--kind/--mode/--last/--name`` and ``GET /api/tasks?state=…``
all read their words here, so a word means one thing everywhere, and it means what the screens show:

- ``kind:`` takes ``code``, ``api``, ``registered`` and the KIND column's ``reg``;
- ``mode:`` takes the MODE column's ``now``, ``delay``, ``cron`` and the spec's ``immediate``, ``delayed``,
  ``scheduled``;
- ``last:`` takes a run state (``queued``, ``running``, ``succeeded``, ``failed``, ``timed_out``,
  ``stopped``, ``retrying``): the state of the task's latest run, what the LAST column shows;
- ``state:`` takes a task state (``active``, ``paused``, ``done``) or a run state, which then means the
  same as ``last:`` (a one-shot whose run failed is ``done``; ``state:failed`` asks for the failure);
- ``name:``, or any word without a field, is a piece of the name (case ignored).

Front ends that take whole values (the command line, the REST API) are refused a word outside these,
naming the field and the words it takes. The console filters as the user types, so there each value is
read as the start of a word (``state:fa`` already finds the failures) and a word that starts nothing
matches no task.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from core.errors import InvalidSpec
from core.models import Kind, Mode, RunState, Task, TaskState

_RUN_STATES = {state.value: state.value for state in RunState}
WORDS: dict[str, dict[str, str]] = {
    "kind": {**{kind.value: kind.value for kind in Kind}, "reg": Kind.REGISTERED.value},
    "mode": {**{mode.value: mode.value for mode in Mode},
             "now": Mode.IMMEDIATE.value, "delay": Mode.DELAYED.value, "cron": Mode.SCHEDULED.value},
    "state": {**{state.value: state.value for state in TaskState}, **_RUN_STATES},
    "last": dict(_RUN_STATES),
}
"""Each field's words → the value they stand for (a task state, a run state, a kind or a mode)."""


@dataclass(frozen=True)
class Condition:
    """One word of a filter: ``field`` holds one of ``values`` (for ``name``: contains ``values``' one text)."""

    field: str
    values: frozenset[str]

    def holds(self, task: Task) -> bool:
        if self.field == "name":
            return all(text in task.name.lower() for text in self.values)
        if self.field == "kind":
            return task.kind.value in self.values
        if self.field == "mode":
            return task.mode.value in self.values
        if self.field == "state" and task.state.value in self.values:
            return True
        return task.last_run_state in self.values  # state: (a run state) and last:


@dataclass(frozen=True)
class TaskFilter:
    """Every condition must hold; no condition matches every task."""

    conditions: tuple[Condition, ...] = ()

    def matches(self, task: Task) -> bool:
        return all(condition.holds(task) for condition in self.conditions)

    def __bool__(self) -> bool:
        return bool(self.conditions)


def words(field: str) -> list[str]:
    """The words ``field`` takes, as a refusal lists them."""
    return list(WORDS[field])


def _condition(field: str, value: str, *, partial: bool) -> Condition:
    value = value.strip().lower()
    if field == "name":
        return Condition("name", frozenset({value}))
    vocabulary = WORDS[field]
    if partial:
        return Condition(field, frozenset(meant for word, meant in vocabulary.items() if word.startswith(value)))
    if value not in vocabulary:
        what = " (a task state, or the state of its last run)" if field == "state" else ""
        raise InvalidSpec(field, f"{value!r} is not a {field}{what}; use one of {', '.join(vocabulary)}")
    return Condition(field, frozenset({vocabulary[value]}))


def parse(text: str, *, partial: bool = False) -> TaskFilter:
    """The filter typed after ``/``: ``field:value`` words and pieces of names, all of which must match."""
    conditions = []
    for word in text.lower().split():
        field, sep, value = word.partition(":")
        if sep and (field in WORDS or field == "name"):
            conditions.append(_condition(field, value, partial=partial))
        else:
            conditions.append(Condition("name", frozenset({word})))
    return TaskFilter(tuple(conditions))


def from_options(*, state: str | None = None, kind: str | None = None, mode: str | None = None,
                 last: str | None = None, name: str | None = None) -> TaskFilter:
    """The filter of the command line's options or the REST API's query (whole words; refused otherwise)."""
    given: Iterable[tuple[str, str | None]] = (("state", state), ("kind", kind), ("mode", mode), ("last", last),
                                               ("name", name))
    return TaskFilter(tuple(_condition(field, str(value), partial=False) for field, value in given
                            if value is not None and (field != "name" or value)))
