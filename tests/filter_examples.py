"""README's filter examples, read from README itself, and the tasks that tell whether each works as written.

The console, command-line and REST tests each create ``specs(prefix)`` through their own front end, wait
for the one-shots to finish, and check that every example README shows picks exactly ``expected(word)``
of them. An example README gains that no table here knows fails the tests: it has to be added here.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
FAR_CRON = "0 0 1 1 *"
FAR_DELAY = 30 * 24 * 3600

PICKS = {
    "state:failed": {"failed"}, "last:failed": {"failed"}, "last:succeeded": {"ok"}, "state:succeeded": {"ok"},
    "state:paused": {"cron"}, "state:active": {"api"}, "state:done": {"failed", "ok"},
    "kind:api": {"api"}, "kind:code": {"cron", "failed"}, "kind:registered": {"ok"}, "kind:reg": {"ok"},
    "mode:cron": {"cron"}, "mode:scheduled": {"cron"}, "mode:now": {"failed", "ok"}, "mode:immediate": {"failed", "ok"},
    "mode:delay": {"api"}, "mode:delayed": {"api"},
}
"""Example word → the tasks of :func:`specs` (by suffix) it picks."""


def specs(prefix: str, api_base: str) -> dict[str, dict]:
    """Suffix → spec: a paused cron code task, a one-shot that fails, a one-shot registered task that
    succeeds, and an API task delayed for a month. ``pause`` the ``cron`` one after creating it."""
    code = {"function_name": "f"}
    return {
        "cron": {"name": f"{prefix}-cron", "cron_expression": FAR_CRON, "function_code": "def f():\n    return 1",
                 **code},
        "failed": {"name": f"{prefix}-failed", "task_type": "immediate", **code,
                   "function_code": "def f():\n    raise ValueError('as planned')"},
        "ok": {"name": f"{prefix}-ok", "task_type": "immediate", "task_name": "taskman.echo", "args": [1]},
        "api": {"name": f"{prefix}-api", "api_url": f"{api_base}/get", "delay_seconds": FAR_DELAY},
    }


def expected(prefix: str, word: str) -> set[str]:
    assert word in PICKS, f"README shows the filter example {word!r}, which tests/filter_examples.py does not know"
    return {f"{prefix}-{suffix}" for suffix in PICKS[word]}


def _row(start: str) -> str:
    return next(line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith(start))


def console_examples() -> list[str]:
    """The ``field:value`` words in README's console table, row ``/``."""
    found = re.findall(r"`([a-z]+:[a-z_]+)`", _row("| `/` |"))
    assert found, "README's console table lost its filter examples"
    return found


def cli_examples() -> list[tuple[str, str]]:
    """The ``--option value`` examples in README's command-line table, row ``taskman list``."""
    found = re.findall(r"`(--[a-z]+) ([a-z_]+)`", _row("| `taskman list"))
    assert found, "README's command-line table lost its list filter examples"
    return found


def api_examples() -> list[str]:
    """The ``field=value`` query examples in README's REST table, row ``GET /api/tasks``."""
    found = re.findall(r"`([a-z]+)=([a-z_]+)`", _row("| `GET /api/tasks` |"))
    assert found, "README's REST table lost its list filter examples"
    return [f"{field}:{value}" for field, value in found]
