"""Front ends call only ``core.service.Service``: a check of the source of every module under ``tui/`` and ``api/``.

They may not import ``redis`` (``Service`` turns redis-py's errors into ``core.errors.NoRedis``), the store, the
audit trail's or the streams' modules, nor call the functions of ``core.auth`` and ``core.metrics`` that take a
``Store``; they may not reach a service's ``.store``, pick a service method by its name (``getattr``), or start
a Textual worker with ``exit_on_error=False`` (its errors would never reach ``TaskmanApp.report_error``). The
check reads the source (``ast``), so a forbidden import is found even where it would only run late (inside a
function, as the command line imports), and it proves it can fail on a module that does each of these.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from core import auth, metrics

ROOT = Path(__file__).resolve().parent.parent
FRONT_ENDS = ("tui", "api")
FORBIDDEN_MODULES = ("redis", "core.store", "core.audit", "core.events")


def store_taking(module) -> set[str]:
    """The public functions of ``module`` that take a ``Store``: what only ``core.service`` may call."""
    found = set()
    for name, function in inspect.getmembers(module, inspect.isfunction):
        if function.__module__ == module.__name__ and not name.startswith("_"):
            annotations = [str(parameter.annotation) for parameter in inspect.signature(function).parameters.values()]
            if any(annotation.split(".")[-1] == "Store" for annotation in annotations):
                found.add(name)
    return found


STORE_TAKING = {"core.auth": store_taking(auth), "core.metrics": store_taking(metrics)}


def forbidden(name: str) -> bool:
    return any(name == module or name.startswith(module + ".") for module in FORBIDDEN_MODULES)


def violations(source: str) -> list[str]:
    """What in ``source`` goes past the service, each as ``line: what``."""
    tree = ast.parse(source)
    found: list[str] = []
    aliases: dict[str, str] = {}  # a local name → core.auth / core.metrics, for their attribute calls
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if forbidden(alias.name):
                    found.append(f"{node.lineno}: import {alias.name}")
                if alias.name in STORE_TAKING:
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if forbidden(node.module) or forbidden(full):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
                elif full in STORE_TAKING:
                    aliases[alias.asname or alias.name] = full
                elif alias.name in STORE_TAKING.get(node.module, ()):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name} (it takes a Store)")
        elif isinstance(node, ast.Attribute) and node.attr == "store":
            found.append(f"{node.lineno}: reaches .store")
        elif isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id == "getattr" and node.args and \
                    "service" in ast.unparse(node.args[0]).lower():
                found.append(f"{node.lineno}: picks a service method by name ({ast.unparse(node)})")
            for keyword in node.keywords:
                if keyword.arg == "exit_on_error" and isinstance(keyword.value, ast.Constant) and \
                        keyword.value.value is False:
                    found.append(f"{node.lineno}: a worker with exit_on_error=False")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            module = aliases[node.value.id]
            if node.attr in STORE_TAKING[module]:
                found.append(f"{node.lineno}: {module}.{node.attr} (it takes a Store)")
    return found


FRONT_END_MODULES = sorted(path.relative_to(ROOT).as_posix() for package in FRONT_ENDS
                           for path in (ROOT / package).rglob("*.py") if "__pycache__" not in path.parts)


def test_the_store_taking_functions_are_known():
    assert {"create", "list_tokens", "revoke", "verify", "throttle"} <= STORE_TAKING["core.auth"]
    assert {"snapshot", "record_lags"} <= STORE_TAKING["core.metrics"]
    assert "require" not in STORE_TAKING["core.auth"] and "render" not in STORE_TAKING["core.metrics"]


def test_both_front_ends_are_checked():
    assert "api/app.py" in FRONT_END_MODULES and "tui/screens/main.py" in FRONT_END_MODULES
    assert any(path.startswith("api/routers/") for path in FRONT_END_MODULES)


@pytest.mark.parametrize("path", FRONT_END_MODULES)
def test_front_ends_call_only_the_service(path):
    found = violations((ROOT / path).read_text(encoding="utf-8"))
    assert not found, f"{path} goes past core.service.Service:\n" + "\n".join(found)


def test_the_check_finds_each_way_past_the_service():
    source = '''
import redis
import core.events as ev
from core import audit, auth
from core.store import Store
from core.metrics import snapshot, render
from core.auth import Role, verify
from redis.exceptions import ConnectionError


def f(service, app):
    from core import metrics as m
    service.store.redis.ping()
    auth.create(None, "n", "viewer")
    m.snapshot(None)
    auth.require(None, "read")
    getattr(service, "run_now")("id")
    getattr(app.service, name)()
    app.run_worker(f, exit_on_error=False)
'''
    found = "\n".join(violations(source))
    for expected in ("2: import redis", "3: import core.events", "4: from core import audit",
                     "5: from core.store import Store", "6: from core.metrics import snapshot",
                     "7: from core.auth import verify", "8: from redis.exceptions import ConnectionError",
                     "13: reaches .store", "14: core.auth.create", "15: core.metrics.snapshot",
                     "17: picks a service method by name", "18: picks a service method by name",
                     "19: a worker with exit_on_error=False"):
        assert expected in found, f"{expected!r} not found in:\n{found}"
    assert "render" not in found and "Role" not in found and "require" not in found
