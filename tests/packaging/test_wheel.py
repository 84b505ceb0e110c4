"""The wheel users get: built from what the Dockerfile copies, installed into a fresh venv, run.

``pip install .`` (the Dockerfile's own command) once shipped ``core`` and ``tui`` without their
subpackages, so an installed taskman had no console. This builds the wheel offline from exactly
the files the Dockerfile copies, installs it with ``--no-deps`` into a new venv that borrows this
venv's dependencies (but not the editable install of the source tree), and from a directory
outside the repo runs ``taskman --help`` and starts the console headless against the session's
private Redis.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import uuid
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_ROOTS = ("core", "tui", "api")  # pyproject: [tool.setuptools.packages.find] include
MODULES = ("worker.py", "beat.py")  # pyproject: py-modules

# Run by the installed interpreter: import every module of the installed packages (the REST API's too),
# check each screen's stylesheet is there, and drive the console for a moment (main screen, form, help).
CONSOLE_CHECK = r"""
import asyncio, importlib, json, pkgutil, sys
from pathlib import Path

import api, core, tui
imported = []
for package in (api, core, tui):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
        imported.append(info.name)
import beat, worker

from textual.screen import Screen
missing_css = []
for name in imported:
    module = sys.modules[name]
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, Screen) and value.__module__ == name:
            for css in [value.CSS_PATH] if isinstance(value.CSS_PATH, str) else value.CSS_PATH or []:
                if not (Path(module.__file__).parent / css).is_file():
                    missing_css.append(f"{name}.{value.__name__}: {css}")

from core.config import Settings
from core.service import Service
from tui.app import TaskmanApp
from tui.screens.help import HelpScreen
from tui.screens.main import MainScreen
from tui.screens.new_task import NewTaskScreen


async def until(pilot, predicate, what):
    for _ in range(400):
        if predicate():
            return
        await pilot.pause(0.05)
    raise SystemExit(f"timed out waiting for {what}")


async def drive():
    app = TaskmanApp(Service.from_settings(Settings()))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, MainScreen), "the main screen")
        facts = app.screen.query_one("#facts")
        await until(pilot, lambda: "workers" in str(facts.render()), "the status line")
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, NewTaskScreen), "the new-task form")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, MainScreen), "the form to close")
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help screen")


asyncio.run(drive())
print(json.dumps({"api": api.__file__, "core": core.__file__, "tui": tui.__file__, "worker": worker.__file__,
                  "editable": sorted(name for name in sys.modules if name.startswith("__editable__")),
                  "imported": imported, "missing_css": missing_css}))
"""


def docker_context(dest: Path) -> list[str]:
    """Copy what the Dockerfile's COPY lines copy (before ``pip install .``) into ``dest``."""
    copied = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not line.strip().upper().startswith("COPY "):
            continue
        words = shlex.split(line)
        args = [word for word in words[1:] if not word.startswith("--")]
        sources, target = args[:-1], args[-1]
        for source in sources:
            origin = ROOT / source
            place = dest / target / Path(source).name if target.endswith("/") else dest / target
            place.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_dir():
                shutil.copytree(origin, place, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(origin, place)
            copied.append(source.rstrip("/"))
    return copied


def source_files() -> set[str]:
    """Every module and stylesheet of the packages in the source tree, as wheel paths."""
    found = set(MODULES)
    for name in PACKAGE_ROOTS:
        if not (ROOT / name / "__init__.py").is_file():
            continue
        for path in (ROOT / name).rglob("*"):
            if path.suffix in (".py", ".tcss") and "__pycache__" not in path.parts:
                found.add(path.relative_to(ROOT).as_posix())
    return found


def clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("TASKMAN_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONNOUSERSITE="1", PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def run(command: list, cwd: Path, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{command} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def test_the_wheel_installs_and_the_console_starts(tmp_path, redis_server):
    env = clean_env()
    context = tmp_path / "context"
    copied = docker_context(context)

    # build offline from the Docker build context, with this venv's setuptools
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--no-cache-dir", "-w", tmp_path / "dist", context], tmp_path, env, timeout=120)
    [wheel] = (tmp_path / "dist").glob("taskman-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    shipped = {name for name in names if ".dist-info/" not in name}
    assert not {name.split("/")[0] for name in shipped} & {"tests", "bench"}
    missing = source_files() - shipped
    assert not missing, (f"not in the wheel built from the Dockerfile's files {copied}: {sorted(missing)} "
                         "(pyproject's package finding or the Dockerfile's COPY lines lost them)")
    assert "taskman = tui.cli:main" in entry_points

    # a fresh venv, the wheel without dependencies, and the dependencies from this venv through a
    # .pth line: a directory a .pth adds is not scanned for .pth files itself, so the editable
    # install's hook (a .pth in this venv) stays off and the source tree cannot stand in
    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    python = target / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--no-cache-dir",
         wheel], tmp_path, env, timeout=120)
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    tmp_path, env).stdout.strip())
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "taskman-test-deps.pth").write_text("".join(f"{path}\n" for path in ours))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    console_env = clean_env(TASKMAN_REDIS_URL=redis_server.url, TASKMAN_NAMESPACE=f"wheel{uuid.uuid4().hex[:6]}",
                            TASKMAN_CONFIG=str(elsewhere / "no-such-config.toml"),
                            TASKMAN_DATA_DIR=str(tmp_path / "data"))
    helped = run([target / "bin" / "taskman", "--help"], elsewhere, console_env)
    assert "Usage" in helped.stdout and "tui" in helped.stdout

    script = elsewhere / "console_check.py"
    script.write_text(CONSOLE_CHECK)
    report = json.loads(run([python, script], elsewhere, console_env, timeout=90).stdout.strip().splitlines()[-1])
    assert report["editable"] == [], "the source tree's editable install is active in the wheel's venv"
    for name in ("api", "core", "tui", "worker"):
        assert Path(report[name]).is_relative_to(site), f"{name} imported from {report[name]}, not the wheel"
    assert {"tui.app", "tui.cli", "tui.screens.main", "tui.screens.detail", "tui.widgets.task_table", "api.app",
            "api.routers.tasks", "api.routers.logs"} <= set(report["imported"])
    assert report["missing_css"] == []
