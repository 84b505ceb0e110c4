"""README's bootstrap: ``python3 boot.py COMMAND`` runs the command where it was typed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from tests.conftest import ROOT


def test_boot_runs_a_command_in_the_directory_it_was_typed_in(service, taskman_env, tmp_path):
    name = f"from a relative path {uuid.uuid4().hex[:6]}"
    (tmp_path / "my.json").write_text(json.dumps({"name": name, "function_code": "def main():\n    return 1\n",
                                                  "function_name": "main", "cron_expression": "0 0 1 1 *"}))
    result = subprocess.run([sys.executable, str(ROOT / "boot.py"), "taskman", "submit", "./my.json"], cwd=tmp_path,
                            env={**os.environ, **taskman_env}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [task.name for task in service.list_tasks(name=name)] == [name]
