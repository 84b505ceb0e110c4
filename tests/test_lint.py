"""The linters stay clean: ruff and mypy, configured in pyproject.toml, report nothing.

They run here (as subprocesses of the venv's Python) so README's one test command -- and .ci/run,
which runs exactly it -- enforces them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["core", "tui", "api", "worker.py", "beat.py"]


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_ruff_reports_nothing() -> None:
    done = _run("ruff", "check", "--no-cache", "--output-format", "concise", *SOURCES, "tests", "bench",
                timeout=60)
    if done.returncode != 0:
        pytest.fail(f"ruff check found problems (exit {done.returncode}):\n{done.stdout}{done.stderr}",
                    pytrace=False)


def test_mypy_reports_nothing() -> None:
    # The cache (under .mypy_cache, see pyproject.toml) keeps later runs to a few seconds.
    done = _run("mypy", *SOURCES, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"mypy found problems (exit {done.returncode}):\n{done.stdout}{done.stderr}", pytrace=False)
