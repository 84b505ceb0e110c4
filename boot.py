#!/usr/bin/env python3
"""Bootstrap: make ./.venv with taskman installed (dev extras included), then run a command in it.

    python3 boot.py taskman up      # run the product
    python3 boot.py pytest          # run the tests

Needs only Python 3.11+. The environment is rebuilt when pyproject.toml changes. A command runs in
the directory it was typed in (``python3 ~/taskman/boot.py taskman submit ./my.json`` reads the
``my.json`` beside you); only ``pytest`` runs from the repository, whose suite it is.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".taskman-installed"


def _bin(name: str) -> Path:
    return VENV / ("Scripts" if os.name == "nt" else "bin") / name


def ensure_environment() -> None:
    """Create the venv and install the project into it unless it is already up to date."""
    if sys.version_info < (3, 11):  # noqa: UP036 -- boot.py runs under any python3, to say it is too old
        sys.exit(f"taskman needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and _bin("python").exists():
        return
    if not _bin("python").exists():
        print("boot: creating .venv …", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("boot: installing taskman and its dependencies into .venv …", file=sys.stderr)
    subprocess.run([str(_bin("python")), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(_bin("python")), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(wanted)


def main() -> None:
    ensure_environment()
    command = sys.argv[1:] or ["taskman", "up"]
    executable = _bin(command[0])
    if not executable.exists():
        executable = Path(shutil.which(command[0]) or command[0])
    if command[0] == "pytest":
        os.chdir(ROOT)  # the suite is the repository's: its paths and configuration are found from there
    try:
        os.execv(str(executable), [str(executable), *command[1:]])
    except OSError as exc:
        sys.exit(f"boot: cannot run {command[0]!r}: {exc.strerror}")


if __name__ == "__main__":
    main()
