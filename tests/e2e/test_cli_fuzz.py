"""Any text a run can produce reaches the terminal through the CLI without a raw control byte or a crash.

Hypothesis feeds arbitrary Unicode (markup brackets, C0/C1 controls, lone surrogates, bidi marks, very
wide characters) as a task's description, a run's result, error, output and log lines, stored the way
the worker stores them, and reads them back with ``taskman show``, ``logs`` and ``list``, in-process
(click's runner), with the output taken as bytes.
"""

from __future__ import annotations

import time
import uuid

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import InvalidSpec
from core.models import Run, RunState
from core.runner import json_safe, log_entry, text_safe
from tests.e2e.test_hostile import assert_no_raw_control
from tui.cli import main

ANY_TEXT = st.text(st.characters(codec=None, categories=None, exclude_categories=()), max_size=120) | st.sampled_from(
    ["[/]", "[@click=app.screenshot()]x", "\x1b]52;c;cm0=\x07", "\x9b2J", "\u202eevil", "界" * 60, "\udcff",
     "a\r\nb\x00c\x7f"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=ANY_TEXT)
def test_any_run_text_reaches_the_terminal_escaped(taskman_env, stack, text):
    marker = uuid.uuid4().hex[:8]
    try:
        task = stack.create({"name": f"fuzz-{marker}", "description": text, "function_name": "f",
                             "function_code": "def f():\n    return 1\n", "cron_expression": "0 0 1 1 *"})
    except InvalidSpec:  # descriptions with control characters are refused: show the task without one
        task = stack.create({"name": f"fuzz-{marker}", "function_name": "f",
                             "function_code": "def f():\n    return 1\n", "cron_expression": "0 0 1 1 *"})
    now = time.time()
    run = Run(id=uuid.uuid4().hex[:16], task_id=task.id, state=RunState.FAILED, attempt=1, max_attempts=1,
              trigger="now", queued_at=now, started_at=now, finished_at=now, duration_ms=1.0,
              result=json_safe({"text": text, text_safe(text): [text]}), error=text_safe(text),
              output=text_safe(text), traceback=text_safe(text))
    pipe = stack.store.pipeline()
    stack.store.add_run(run, pipe)
    pipe.execute()
    stack.store.add_logs([log_entry(task.id, run.id, "print", text_safe(text))])
    runner = CliRunner()
    for args in (["show", task.id], ["logs", task.id, "-n", "5"], ["list", "--name", f"fuzz-{marker}"],
                 ["show", task.id, "--json"]):
        done = runner.invoke(main, args, env=taskman_env, catch_exceptions=False)
        assert done.exit_code == 0, done.output
        assert_no_raw_control(done.stdout_bytes, f"taskman {' '.join(args)}")
    stack.delete(task.id)
