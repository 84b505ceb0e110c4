"""README's original examples work as written: submitted as they stand, against `taskman echo` on its port."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import pytest

from core.models import RunState
from tests.conftest import ROOT, _process_env, wait_for

ECHO_PORT = 8765


def original_examples() -> list[dict]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"The original examples, ready to submit.*?```json\n(.*?)```", readme, re.S)
    assert block, "README lost its block of the original examples"
    return json.loads(block.group(1))


@pytest.fixture
def echo_service(taskman_env):
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", ECHO_PORT)) != 0, f"something else listens on {ECHO_PORT}"
    child = subprocess.Popen([sys.executable, "-m", "tui.cli", "echo"], cwd=ROOT, env=_process_env(taskman_env),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert child.stdout is not None and "echo service on" in child.stdout.readline()
        yield child
    finally:
        child.terminate()
        child.wait(10)


def test_the_original_examples_run_as_written(stack, echo_service):
    examples = original_examples()
    assert {spec["task_type"] for spec in examples} == {"immediate", "delayed", "scheduled"}
    assert all(spec["api_url"].startswith(f"http://127.0.0.1:{ECHO_PORT}/") for spec in examples if "api_url" in spec)
    tasks = stack.create_many(examples)
    runs = {}
    for task in tasks:  # the delayed and cron ones are due later: run each once now as well
        runs[task.name] = task.runs[0] if task.runs else stack.run_now(task.id)
    finished = {name: wait_for(lambda run=run: (r := stack.get_run(run.id)).state.final and r, timeout=60,
                               message=f"the run of {name}") for name, run in runs.items()}
    assert {name: run.state for name, run in finished.items()} == {name: RunState.SUCCEEDED for name in runs}
    assert finished["立即计算任务"].result == "Hello World!"
    assert finished["延时计算任务"].result == 7
    assert finished["定时计算任务"].result == "日报生成完成"
    assert finished["立即API请求"].result["status_code"] == 200
    posted = finished["延时API请求"].result
    assert posted["status_code"] == 200 and posted["body"]["method"] == "POST"
    assert "延时请求" in json.dumps(posted["body"], ensure_ascii=False)
    assert finished["定时API请求"].result["status_code"] == 200
