"""core.store.Keys: the exact Redis key strings, and that the engine never imports the console."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.store import Keys, due_member_for_run, due_member_for_task

ROOT = Path(__file__).resolve().parents[2]


def test_key_strings_are_pinned():
    keys = Keys("taskman")
    assert keys.namespace == "taskman"
    assert keys.task("abc123") == "taskman:task:abc123"
    assert keys.task_runs("abc123") == "taskman:task:abc123:runs"
    assert keys.task_outcomes("abc123") == "taskman:task:abc123:outcomes"
    assert keys.run("r9") == "taskman:run:r9"
    assert keys.tasks == "taskman:tasks"
    assert keys.due == "taskman:due"
    assert keys.events == "taskman:events"
    assert keys.logs == "taskman:logs"
    assert keys.scheduler_lock == "taskman:scheduler:lock"
    assert keys.registered == "taskman:registered"
    assert keys.celery_prefix == "taskman:celery:"
    assert keys.celery_queue("code") == "taskman:celery:code"
    assert keys.celery_unacked == "taskman:celery:unacked"
    assert keys.celery_unacked_index == "taskman:celery:unacked_index"
    assert keys.tokens == "taskman:tokens"
    assert keys.token_hashes == "taskman:tokens:by-hash"
    assert keys.token_used == "taskman:tokens:used"
    assert keys.audit == "taskman:audit"
    assert keys.rate_limit("ci-bot") == "taskman:ratelimit:ci-bot"
    assert keys.metrics == "taskman:metrics"
    assert keys.workers == "taskman:workers"
    assert keys.worker_stats == "taskman:workers:stats"
    assert keys.worker_held == "taskman:workers:held"
    assert keys.worker_ended == "taskman:workers:ended"
    assert keys.running == "taskman:running"
    assert keys.epoch == "taskman:epoch"
    assert keys.data_lost == "taskman:data-lost"


def test_due_members():
    assert due_member_for_task("abc") == "t:abc"
    assert due_member_for_run("xyz") == "r:xyz"


def test_namespace_prefixes_every_key():
    keys = Keys("other")
    every = [keys.task("1"), keys.task_runs("1"), keys.run("1"), keys.tasks, keys.due, keys.events, keys.logs,
             keys.scheduler_lock, keys.registered, keys.celery_prefix, keys.celery_queue("http"), keys.celery_unacked,
             keys.tokens, keys.token_hashes, keys.token_used, keys.audit, keys.metrics, keys.workers,
             keys.worker_stats, keys.worker_held, keys.celery_unacked_index]
    assert all(key.startswith("other:") for key in every)
    assert len(set(every)) == len(every)
    assert Keys("a") == Keys("a") and hash(Keys("a")) == hash(Keys("a"))
    with pytest.raises(AttributeError):
        keys.namespace = "changed"  # frozen


ENGINE_IMPORT = ("import core.service, core.scheduler, core.runner, worker, beat, sys; "
                 "bad=[m for m in sys.modules if m.split('.')[0] in ('textual','rich','tui')]; "
                 "print(bad); sys.exit(1 if bad else 0)")
# httpx 0.28's __init__ does ``try: from ._main import main`` (its optional command line client), which pulls
# in rich whenever rich is installed (textual brings it). That is httpx's import, not taskman's; blocking
# that one optional module (httpx catches the ImportError) lets the check see only what taskman imports.
BLOCK_HTTPX_CLI = "import sys; sys.modules['httpx._main'] = None; "


def run_python(code: str, redis_url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TASKMAN_REDIS_URL": redis_url}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def test_engine_does_not_import_the_console(redis_server):
    result = run_python(BLOCK_HTTPX_CLI + ENGINE_IMPORT, redis_server.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "[]"


def test_engine_never_imports_textual_or_tui_even_with_httpx_cli(redis_server):
    code = ("import core.service, core.scheduler, core.runner, worker, beat, sys; "
            "mods={m.split('.')[0] for m in sys.modules}; "
            "bad=sorted(mods & {'textual','tui'}); "
            "rich_from_httpx_only = 'rich' not in mods or 'httpx._main' in sys.modules; "
            "print(bad, rich_from_httpx_only); sys.exit(1 if bad or not rich_from_httpx_only else 0)")
    result = run_python(code, redis_server.url)
    assert result.returncode == 0, result.stdout + result.stderr


CORE_MODULES = sorted(path.stem for path in (ROOT / "core").glob("*.py") if path.stem != "__init__")


@pytest.mark.parametrize("module", CORE_MODULES)
def test_every_core_module_stays_clear_of_the_console(module, redis_server):
    """Each module of core/ imported alone (as the jail's template and the workers do) pulls in no Textual,
    Rich or tui, and the jail's modules not even pydantic, Celery or Redis."""
    code = (BLOCK_HTTPX_CLI + f"import sys, core.{module}; "
            "mods={m.split('.')[0] for m, loaded in sys.modules.items() if loaded is not None}; "
            "print(sorted(mods & {'textual','rich','tui'})); "
            "print(sorted(mods & {'pydantic','celery','redis','kombu','httpx'}))")
    result = run_python(code, redis_server.url)
    assert result.returncode == 0, result.stderr
    console, heavy = result.stdout.splitlines()
    assert console == "[]", f"core.{module} imports {console}"
    if module in ("jail", "walls", "sandbox", "allowed_imports", "errors", "spec_fields"):
        assert heavy == "[]", f"core.{module} (loaded by the jail's template) imports {heavy}"
    if module in READ_PATH:
        assert "pydantic" not in heavy, f"core.{module} (every front end's read path) imports pydantic"


READ_PATH = ("config", "models", "store", "service", "filters", "events", "audit", "auth", "metrics", "text",
             "redact", "lifecycle", "dispatch", "embedded")
"""Modules ``taskman list`` and ``show`` load: pydantic (``core.spec``) stays out of them."""


def test_list_and_show_read_tasks_without_pydantic_and_show_what_was_written(redis_server):
    code = ("import json, sys\n"
            "from click.testing import CliRunner\n"
            "from tui.cli import main\n"
            "from core.config import Settings\n"
            "from core.service import Service\n"
            "import core.spec\n"  # the writer validates: then the reader must not need it
            "service = Service.from_settings(Settings(namespace='readpath'))\n"
            "task = service.create({'name': 'read me', 'api_url': 'http://127.0.0.1:9/x', "
            "'headers': {'Authorization': 'Bearer s3cret'}, 'cron_expression': '*/5 * * * *'})\n"
            "for name in [m for m in sys.modules if m.split('.')[0] == 'pydantic' or m == 'core.spec']:\n"
            "    del sys.modules[name]\n"
            "import builtins\n"
            "real_import = builtins.__import__\n"
            "def guarded(name, *args, **kwargs):\n"
            "    if name.split('.')[0] == 'pydantic' or name == 'core.spec':\n"
            "        raise ImportError(f'the read path imported {name}')\n"
            "    return real_import(name, *args, **kwargs)\n"
            "builtins.__import__ = guarded\n"
            "listed = CliRunner().invoke(main, ['list', '--json'], env={'TASKMAN_NAMESPACE': 'readpath'})\n"
            "shown = CliRunner().invoke(main, ['show', task.id, '--json'], env={'TASKMAN_NAMESPACE': 'readpath'})\n"
            "print(json.dumps([listed.exit_code, listed.output, shown.exit_code, shown.output, "
            "task.to_dict()['spec']]))\n")
    result = run_python(code, redis_server.url)
    assert result.returncode == 0, result.stderr
    list_code, listed, show_code, shown, written = json.loads(result.stdout)
    assert list_code == 0 and show_code == 0, listed + shown
    [row] = json.loads(listed)
    assert (row["name"], row["kind"], row["mode"], row["state"]) == ("read me", "api", "scheduled", "active")
    assert json.loads(shown)["spec"] == written and written["headers"] == {"Authorization": "Bearer ***"}


def test_the_core_module_list_is_the_one_the_readme_names():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    missing = [module for module in CORE_MODULES if f"`{module}`" not in layout]
    assert not missing, f"README's Layout does not name core modules {missing}"
