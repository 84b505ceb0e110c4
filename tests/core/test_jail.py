"""The jail's walls and protocol, driven directly (``tests/e2e/test_jail.py`` goes through real workers).

"Language wall down" tests run *unrestricted* Python inside the jail (the test-only switch) and prove
from there that the kernel's walls alone keep the code from the network, the host's files, its
secrets, other processes and more memory than it was given.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from core import walls
from core.jail import Jail, clean_environment
from core.sandbox import Limits


def plain(body: str) -> str:
    """Source of ``main()`` whose body is ``body`` (unrestricted Python under the test switch)."""
    return "import os, sys\n\ndef main():\n" + textwrap.indent(textwrap.dedent(body).strip(), "    ") + "\n"


@pytest.fixture(scope="module")
def open_jail():
    jail = Jail(jail_uid=walls.DEFAULT_JAIL_UID, accept_weak=False, grace=1.0, unrestricted=True)
    jail.start()
    yield jail
    jail.close()


@pytest.fixture(scope="module")
def jail():
    jail = Jail(jail_uid=walls.DEFAULT_JAIL_UID, accept_weak=False, grace=1.0)
    jail.start()
    yield jail
    jail.close()


def run(jail: Jail, source: str, timeout: float = 10, limits: Limits = Limits(), **kwargs):
    return jail.run(source, "main", [], kwargs, limits, timeout)


def test_every_wall_stands_on_this_machine(jail):
    report = jail.start()
    assert report.missing() == [], report.describe_missing()
    assert report.up["netns"], report.why


def test_the_template_environment_holds_no_taskman_or_redis_setting():
    assert clean_environment().keys() <= {"LC_ALL", "PATH"}


# -- the language wall is down: what unrestricted code still cannot do ------------------------------


def test_no_secrets_in_the_environment(open_jail, monkeypatch):
    outcome = run(open_jail, plain("return dict(os.environ)"))
    assert outcome.status == "done"
    assert not [name for name in outcome.result if name.startswith("TASKMAN") or "REDIS" in name]


@pytest.mark.parametrize("path", ["/proc/self/environ", "/proc/1/environ", "/etc/shadow", "/proc/self/fd",
                                  os.path.expanduser("~/.local/share/taskman"), "/proc/{ppid}/environ",
                                  "/proc/{ppid}/cmdline"])
def test_no_reading_host_files_or_other_processes(open_jail, path):
    outcome = run(open_jail, plain(f"""
        path = {path!r}.format(ppid=os.getppid())
        if os.path.isdir(path):
            return os.listdir(path)
        with open(path, 'rb') as handle:
            return handle.read(200).decode('latin-1')
    """))
    assert outcome.status == "error", outcome
    assert "PermissionError" in outcome.message or "FileNotFoundError" in outcome.message


def test_no_reading_the_redis_data_folder(open_jail, redis_server):
    folder = str(redis_server.directory)
    assert os.listdir(folder) is not None  # readable to the test itself
    outcome = run(open_jail, plain(f"return os.listdir({folder!r})"))
    assert outcome.status == "error" and "PermissionError" in outcome.message, outcome


def test_no_writing_any_file(open_jail, tmp_path):
    tmp_path.chmod(0o777)
    target = tmp_path / "written"
    for path in (str(target), "/tmp/taskman-jail-probe", "/dev/shm/taskman-jail-probe"):
        outcome = run(open_jail, plain(f"open({path!r}, 'w').write('x')\nreturn 'wrote'"))
        assert outcome.status == "error" and "PermissionError" in outcome.message, (path, outcome)
    assert not target.exists()


def test_no_network_not_even_loopback(open_jail, redis_server, http_server):
    port = http_server.server_address[1]
    for family, address in (("AF_INET", ("127.0.0.1", redis_server.port)), ("AF_INET", ("127.0.0.1", port)),
                            ("AF_UNIX", "\0abstract"), ("AF_INET6", ("::1", port))):
        outcome = run(open_jail, plain(f"""
            import socket
            sock = socket.socket(socket.{family})
            sock.connect({address!r})
            return 'connected'
        """))
        assert outcome.status == "error" and "Operation not permitted" in outcome.message, (family, outcome)


def test_no_exec_no_fork_no_ptrace(open_jail):
    for body in ("os.execv('/bin/sh', ['sh', '-c', 'id'])", "return os.fork()",
                 "import subprocess\nreturn subprocess.run(['id']).returncode"):
        outcome = run(open_jail, plain(body))
        assert outcome.status == "error" and "Operation not permitted" in outcome.message, (body, outcome)
    outcome = run(open_jail, plain("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return [libc.ptrace(16, os.getppid(), 0, 0), ctypes.get_errno()]
    """))
    assert outcome.status == "done" and outcome.result == [-1, 1], outcome  # EPERM


def test_no_signals_to_other_processes_but_to_itself(open_jail):
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for target in (victim.pid, 1, -1, 0):
            outcome = run(open_jail, plain(f"os.kill({target}, 9)\nreturn 'sent'"))
            assert outcome.status == "error" and "Operation not permitted" in outcome.message, (target, outcome)
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()
    assert run(open_jail, plain("os.kill(os.getpid(), 0)\nreturn 'self'")).result == "self"


def test_unprivileged_and_no_way_back(open_jail):
    outcome = run(open_jail, plain("return [os.getuid(), os.geteuid(), os.getgid(), os.getgroups()]"))
    uid = walls.DEFAULT_JAIL_UID if os.geteuid() == 0 else os.getuid()
    assert outcome.result == [uid, uid, outcome.result[2], []] and outcome.result[0] != 0
    outcome = run(open_jail, plain("os.setuid(0)\nreturn os.getuid()"))
    assert outcome.status == "error" and "Operation not permitted" in outcome.message


def test_memory_is_bounded(open_jail):
    outcome = run(open_jail, plain("return len(bytearray(3 * 1024 ** 3))"), limits=Limits(memory_limit_mb=64))
    assert outcome.status == "error" and "MemoryError" in outcome.message, outcome


def test_nothing_survives_from_one_run_to_the_next(open_jail):
    planted = run(open_jail, plain("import json\njson.planted = 'yes'\nreturn os.getpid()"))
    seen = run(open_jail, plain("import json\nreturn [getattr(json, 'planted', None), os.getpid()]"))
    assert seen.result[0] is None
    assert seen.result[1] != planted.result


# -- crashes, time, hostile reports ------------------------------------------------------------------


def test_a_segfault_fails_the_run_and_the_next_run_works(open_jail):
    outcome = run(open_jail, plain("import signal\nos.kill(os.getpid(), signal.SIGSEGV)"))
    assert outcome.status == "crashed" and outcome.signal_name == "SIGSEGV", outcome
    assert run(open_jail, plain("return 'after'")).result == "after"


def test_restricted_deep_c_recursion_does_not_crash(jail):
    """300,000 nested tuples hashed: C recursion that overflows an 8 MiB stack, not the run's 256 MiB one."""
    outcome = run(jail, "def main():\n    t = ()\n    for i in range(300000):\n        t = (t,)\n"
                        "    return hash(t) != 0\n")
    assert outcome.status == "done" and outcome.result is True, outcome


def test_the_template_enforces_the_deadline(jail):
    started = time.monotonic()
    outcome = run(jail, "def main():\n    return 1.5 in range(10 ** 12)\n", timeout=1)
    assert outcome.status == "timed_out"
    assert time.monotonic() - started < 1 + 1.0 + 1.0
    assert run(jail, "def main():\n    return 2\n").result == 2


def test_an_exception_while_waiting_kills_the_run(jail):
    """What Celery's soft time limit does: the exception reaches the worker while the run goes on."""
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("soft limit")))
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(TimeoutError):
            run(jail, "def main():\n    while True:\n        pass\n", timeout=30)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert run(jail, "def main():\n    return 3\n").result == 3


def test_a_run_cannot_forge_its_ending(open_jail):
    forged = plain("""
        os.write(3, b'{"type": "exit", "ending": "finished"}\\n')
        return 'forged'
    """)
    outcome = run(open_jail, forged)
    assert outcome.status == "broken"
    assert run(open_jail, plain("return 'in step'")).result == "in step"


def test_output_and_errors_with_lone_surrogates_still_end(jail):
    outcome = run(jail, "def main():\n    print('a\\udcff')\n    raise ValueError('x\\udcff')\n")
    assert outcome.status == "error"
    assert outcome.message.encode("utf-8") and outcome.output.encode("utf-8")
    assert "x" in outcome.message and "\udcff" not in outcome.message


def test_printed_lines_arrive_as_they_are_printed(jail):
    lines: list[str] = []
    outcome = jail.run("def main():\n    for i in range(3):\n        print('line', i)\n    return 'ok'\n", "main",
                       [], {}, Limits(), 10, on_output=lines.append)
    assert outcome.result == "ok"
    assert lines == ["line 0", "line 1", "line 2"]


def test_a_dead_template_is_replaced(jail):
    os.kill(jail.process.pid, signal.SIGKILL)
    jail.process.wait()
    assert run(jail, "def main():\n    return 4\n").result == 4


def test_walls_down_refuse_code_runs_unless_accepted():
    """A run whose required walls cannot all be raised is refused with the names of the missing ones."""
    report = walls.WallReport()
    report.raise_("fresh_process", True)
    report.raise_("landlock", False, "the kernel offers no Landlock")
    assert "landlock (the kernel offers no Landlock)" in report.describe_missing()
    assert "seccomp" in report.missing()


def test_the_seccomp_program_refuses_what_it_lists():
    for machine in ("x86_64", "aarch64"):
        program = walls.seccomp_program(machine, 1234)
        assert program is not None and len(program) < 4096
        assert all(0 <= jt <= 255 and 0 <= jf <= 255 for _, jt, jf, _ in program)
    assert walls.seccomp_program("sparc", 1) is None
