"""The second wall: every code run in a fresh, jailed process forked from a clean template.

Three processes take part in a code run:

* the **worker** (a Celery pool process) holds the Redis connection and the settings. It never
  runs user code: :class:`Jail` sends the run to its template and reads back what happened;
* the **template** is a Python started with an empty environment and no inherited descriptors but
  its two pipes. It imports the sandbox, moves into an empty network namespace and waits. It never
  sees a Redis URL, a password or a token, so nothing forked from it can;
* the **run** is forked from the template for one run. Before any user code it raises every wall
  of ``core.walls`` (uid, no_new_privs, rlimits, Landlock, seccomp), then executes the code with
  ``core.sandbox`` in a thread with a large stack, writes its output lines and its outcome to the
  template as JSON lines, and exits. Nothing survives from one run to the next.

The template is the authority on how a run ended: it relays only well-formed messages of a run,
enforces the deadline, kills the run when the worker asks (a time limit) or goes away, and reports
the exit status itself -- so a run that crashes (SIGSEGV from C-level recursion) ends as a clear
failure and a hostile run cannot forge its own ending.

Only JSON crosses every pipe.
"""

from __future__ import annotations

import gc
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from core.walls import Confinement, WallReport

RUN_STACK_BYTES = 256 * 1024 * 1024
"""Stack of the thread that runs user code: deep recursion fails with RecursionError, not SIGSEGV."""
RUN_FD = 3
"""The run's one descriptor besides stdin/stdout/stderr (all three /dev/null): its report pipe."""
_TEMPLATE_START_SECONDS = 30.0
_KILL_WAIT_SECONDS = 5.0
_RUN_MESSAGES = frozenset({"output", "done", "error"})
_WARM_UP = ("import {modules}\n\ndef main():\n    print('warm')\n"
            "    return {{'warm': [1, 2.0, 'x', sorted({{3: 1}}), [n * 2 for n in range(3)]]}}\n")
"""Run once by the template itself, so every forked run finds the sandbox's caches (compiled code,
module proxies) filled instead of building them at its own expense."""
_PRELOADED = ("_strptime", "time", "encodings.idna", "unicodedata", "zoneinfo", "socket")
"""Modules the sandbox or C code may load lazily; loaded in the template, since a run may not read them. And
``socket``: code past the language wall has ``ctypes`` (the walls use it) and so every system call anyway;
with ``socket`` at hand the jail's tests meet the network wall itself, not a module that is missing."""


class JailError(Exception):
    """The jail itself failed (its template could not start or broke its protocol)."""


@dataclass
class Outcome:
    """How a jailed run ended.

    ``status`` is ``done`` (``result``), ``error`` (the sandbox's ``reason``/``message``/``traceback``),
    ``crashed`` (killed by ``signal_name``), ``timed_out``, ``refused`` (walls down) or ``broken``
    (the run broke the protocol). ``output`` is what it printed.
    """

    status: str
    result: Any = None
    reason: str = ""
    message: str = ""
    traceback: str = ""
    output: str = ""
    signal_name: str = ""


# -- the run (inside the forked process) ------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _send(fd: int, message: dict) -> None:
    text = json.dumps(message, ensure_ascii=False, default=repr)
    _write_all(fd, text.encode("utf-8", "replace") + b"\n")


def _execute_plain(source: str, function_name: str, args: list, kwargs: dict,
                   on_output: Callable[[str], None]) -> Any:
    """Unrestricted Python (the test switch that proves the jail holds when the language wall is down)."""
    import builtins
    import io

    buffer = io.StringIO()

    def printer(*objects: object, **options: Any) -> None:
        options.pop("file", None)
        print(*objects, file=buffer, **options)
        for line in buffer.getvalue().splitlines():
            on_output(line)
        buffer.seek(0)
        buffer.truncate()

    namespace: dict[str, Any] = {"__builtins__": {**vars(builtins), "print": printer}, "__name__": "task"}
    exec(compile(source, "<task>", "exec"), namespace)
    return namespace[function_name](*args, **kwargs)


def _warm_up(sandbox: Any) -> None:
    """Run trusted code (ours) through the sandbox: in the template it fills the sandbox's caches; in a
    waiting run process it pages in, ahead of the run, what every run touches."""
    limits = sandbox.Limits()
    for modules in (", ".join(limits.allowed_imports), "json"):
        try:
            sandbox.execute(_WARM_UP.format(modules=modules), "main", [], {}, limits)
            return
        except Exception:  # an allow-list without one of the modules: try with fewer
            continue


def _read_request(fd: int) -> dict:
    data = b""
    while chunk := os.read(fd, 1 << 16):
        data += chunk
    return json.loads(data)


def _run_child(request_fd: int, report_fd: int, report: WallReport, config: dict) -> None:
    """Raise the walls, wait for a request, run it, report. Runs in the forked process; never returns."""
    code = 0
    try:
        import fcntl

        report_fd, request_fd = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (report_fd, request_fd))
        ruleset = config.get("ruleset")
        if ruleset is not None:  # it may sit where the report pipe goes: move it out of the way first
            ruleset = fcntl.fcntl(ruleset, fcntl.F_DUPFD, 10)
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        os.dup2(report_fd, RUN_FD)
        os.dup2(request_fd, RUN_FD + 1)
        if ruleset is not None:
            os.dup2(ruleset, RUN_FD + 2)
        from core import sandbox, walls

        walls.close_descriptors_from(RUN_FD + 3 if ruleset is not None else RUN_FD + 2)
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGCHLD):
            signal.signal(number, signal.SIG_DFL)
        base_size = walls.address_space_bytes()  # here: once confined, /proc/self is not this process's to read
        walls.confine(report, Confinement(memory_bytes=None, cpu_seconds=None, jail_uid=config["jail_uid"],
                                          readable=tuple(config["readable"]),
                                          ruleset=RUN_FD + 2 if ruleset is not None else None,
                                          seccomp=config.get("seccomp")))
        if ruleset is not None:
            os.close(RUN_FD + 2)
        outcome: dict[str, Any] = {}

        def on_output(line: str) -> None:
            _send(RUN_FD, {"type": "output", "line": line})

        def body() -> None:
            # While the process waits for its run, it does the work every run does first: the thread
            # with its big stack exists, and one trusted run has paged in (copied from the template) what
            # a run touches. A run then pays for its own code only (3 ms less per run, measured).
            _warm_up(sandbox)
            request = _read_request(RUN_FD + 1)  # walls are up before the run's code is even known
            limits = sandbox.Limits(**{**request["limits"],
                                       "allowed_imports": tuple(request["limits"]["allowed_imports"]),
                                       "stack_bytes": RUN_STACK_BYTES})
            memory = (base_size + limits.memory_limit_mb * 1024 * 1024 + RUN_STACK_BYTES
                      if limits.memory_limit_mb > 0 else None)
            walls.limit_run(report, memory_bytes=memory, cpu_seconds=max(1, int(request["timeout"]) + 2))
            if report.missing() and not request["accept_weak"]:
                outcome.update(type="error", reason="refused", output="", traceback="",
                               message="code runs are refused: isolation walls are down on this worker: "
                                       f"{report.describe_missing()} (set TASKMAN_JAIL_ACCEPT_WEAK=1 to accept "
                                       "weaker isolation)")
                return
            try:
                if request.get("unrestricted"):
                    result = _execute_plain(request["source"], request["function_name"], request["args"],
                                            request["kwargs"], on_output)
                    outcome.update(type="done", result=sandbox._json_safe(result, limits.result_cap), output="")
                else:
                    execution = sandbox.execute(request["source"], request["function_name"], request["args"],
                                                request["kwargs"], limits, on_output=on_output)
                    outcome.update(type="done", result=execution.result, output=execution.output)
            except sandbox.SandboxError as exc:
                outcome.update(type="error", **exc.to_dict())
            except BaseException as exc:  # InvalidSpec, or anything the unrestricted switch lets through
                message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                reason = "invalid" if type(exc).__name__ == "InvalidSpec" else "error"
                outcome.update(type="error", reason=reason, message=str(message)[:2000], traceback="", output="")

        threading.stack_size(RUN_STACK_BYTES)
        runner = threading.Thread(target=body, name="run")
        runner.start()
        runner.join()
        _send(RUN_FD, outcome or {"type": "error", "reason": "error", "message": "the run ended without an outcome",
                                  "traceback": "", "output": ""})
    except BaseException as exc:
        code = 70
        try:
            _send(RUN_FD, {"type": "error", "reason": "jail",
                           "message": f"the jail failed: {type(exc).__name__}: {exc}", "traceback": "", "output": ""})
        except BaseException:
            pass
    finally:
        os._exit(code)


# -- the template --------------------------------------------------------------------------------------


@dataclass
class _Waiting:
    """A run process forked ahead of time: walls up, waiting for its request."""

    pid: int
    request_fd: int
    report_fd: int
    modules: frozenset[str]

    def discard(self) -> None:
        os.close(self.request_fd)
        os.close(self.report_fd)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


class _Template:
    """The clean process that keeps one walled run process waiting, hands it a run and relays what it says."""

    def __init__(self, config: dict) -> None:
        self.stdin = 0
        self.stdout = 1
        self.commands = b""
        self.config = config
        self.waiting: _Waiting | None = None
        self.report = WallReport()
        self.report.raise_("fresh_process", True)
        self.report.raise_("clean_env", not any(name.startswith("TASKMAN_") or "REDIS" in name for name in os.environ),
                           "the template's environment holds taskman or Redis settings")

    def start(self) -> None:
        from core import walls

        walls.die_with_parent()
        walls.enter_empty_network(self.report)
        import core.sandbox  # noqa: F401  -- loaded once here, shared by every forked run

        for name in _PRELOADED:
            try:
                __import__(name)
            except ImportError:
                pass
        self.config["readable"] = walls.readable_roots()
        self.config["ruleset"], _ = walls.build_ruleset(self.config["readable"])
        self.config["seccomp"] = walls.seccomp_filter()
        _warm_up(core.sandbox)
        gc.freeze()  # forked runs then never write to (and so copy) the template's objects when they collect
        probe = self._probe()
        _send(self.stdout, {"type": "ready", "pid": os.getpid(), "walls": probe.to_dict()})
        self.waiting = self._fork_run()

    def _fork_run(self) -> _Waiting:
        request_read, request_write = os.pipe()
        report_read, report_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(request_write)
            os.close(report_read)
            _run_child(request_read, report_write, WallReport(up=dict(self.report.up), why=dict(self.report.why)),
                       self.config)
        os.close(request_read)
        os.close(report_write)
        return _Waiting(pid, request_write, report_read, frozenset(sys.modules))

    def _probe(self) -> WallReport:
        """Raise every wall in a throwaway child, to tell the worker what its runs will get."""
        from core import walls

        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(read)
                report = WallReport(up=dict(self.report.up), why=dict(self.report.why))
                walls.confine(report, Confinement(memory_bytes=None, cpu_seconds=None, jail_uid=self.config["jail_uid"],
                                                  readable=tuple(self.config["readable"])))
                _send(write, report.to_dict())
            except BaseException:
                code = 70
            finally:
                os._exit(code)
        os.close(write)
        data = b""
        while chunk := os.read(read, 65536):
            data += chunk
        os.close(read)
        os.waitpid(pid, 0)
        try:
            return WallReport.from_dict(json.loads(data))
        except ValueError:
            failed = WallReport(up=dict(self.report.up), why=dict(self.report.why))
            failed.why["probe"] = "the probe process failed"
            return failed

    def serve(self) -> None:
        while True:
            line = self._command()
            if line is None:
                return
            try:
                request = json.loads(line)
            except ValueError:
                continue
            if request.get("type") == "run":
                if self._run(request) == "gone":
                    return

    def _command(self) -> bytes | None:
        """The next line from the worker; None at EOF (the worker went away)."""
        while b"\n" not in self.commands:
            chunk = os.read(self.stdin, 65536)
            if not chunk:
                return None
            self.commands += chunk
        line, self.commands = self.commands.split(b"\n", 1)
        return line

    def _run(self, request: dict) -> str:
        wanted = request["limits"]["allowed_imports"]
        for name in wanted:
            try:
                __import__(name)
            except Exception:
                pass
        run = self.waiting
        self.waiting = None
        if run is None or not set(wanted) <= run.modules or os.waitpid(run.pid, os.WNOHANG) != (0, 0):
            if run is not None:
                run.discard()
            run = self._fork_run()
        max_line = 8 * (request["limits"]["output_cap"] + request["limits"]["result_cap"]) + (1 << 20)
        deadline = time.monotonic() + float(request["timeout"]) + max(0.5, float(request.get("grace", 3.0)) / 2)
        try:
            _write_all(run.request_fd, json.dumps(request).encode())
        except OSError:
            pass  # the process died; its exit status says how
        os.close(run.request_fd)
        ending = self._relay(run.pid, run.report_fd, deadline, max_line)
        os.close(run.report_fd)
        if ending == "finished":  # answer and fork the next process first; reap this one after
            _send(self.stdout, {"type": "exit", "ending": ending})
            self.waiting = self._fork_run()
            os.waitpid(run.pid, 0)
            return ending
        _, status = os.waitpid(run.pid, 0)
        if ending == "gone":
            return "gone"
        exit_message: dict[str, Any] = {"type": "exit", "ending": ending}
        if os.WIFSIGNALED(status):
            exit_message["signal"] = signal.Signals(os.WTERMSIG(status)).name
        else:
            exit_message["code"] = os.WEXITSTATUS(status)
        _send(self.stdout, exit_message)
        self.waiting = self._fork_run()
        return ending

    def _relay(self, pid: int, read: int, deadline: float, max_line: int) -> str:
        """Forward the run's messages until it closes its pipe; "gone" if the worker went away."""
        selector = selectors.DefaultSelector()
        selector.register(read, selectors.EVENT_READ, "run")
        selector.register(self.stdin, selectors.EVENT_READ, "worker")
        pending = b""
        ending = "exited"
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    os.kill(pid, signal.SIGKILL)
                    return "deadline"
                for key, _ in selector.select(remaining):
                    if key.data == "worker":
                        chunk = os.read(self.stdin, 65536)
                        if not chunk:
                            os.kill(pid, signal.SIGKILL)
                            return "gone"
                        self.commands += chunk
                        if b'"kill"' in self.commands:
                            self.commands = b""
                            os.kill(pid, signal.SIGKILL)
                            return "killed"
                        continue
                    chunk = os.read(read, 1 << 16)
                    if not chunk:
                        return ending
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    if len(pending) > max_line:
                        os.kill(pid, signal.SIGKILL)
                        return "broken"
                    for line in lines:
                        try:
                            message = json.loads(line)
                        except ValueError:
                            message = None
                        if not isinstance(message, dict) or message.get("type") not in _RUN_MESSAGES:
                            os.kill(pid, signal.SIGKILL)
                            return "broken"
                        _write_all(self.stdout, line + b"\n")
                        if message["type"] != "output":  # its outcome: no need to watch it exit
                            os.kill(pid, signal.SIGKILL)
                            return "finished"
        finally:
            selector.close()


def template_main() -> None:
    """Entry point of the template process (started by :class:`Jail`; its argument is its JSON config)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = json.loads(sys.argv[1])
    sys.path[:0] = config.pop("sys_path")
    template = _Template(config)
    template.start()
    template.serve()


# -- the worker's side ---------------------------------------------------------------------------------


def clean_environment() -> dict[str, str]:
    """The template's whole environment: no TASKMAN_*, no Redis URL, no tokens, no HOME."""
    return {"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"}


class Jail:
    """One worker process's way into the jail: a template started on first use, one run at a time."""

    def __init__(self, *, jail_uid: int, accept_weak: bool, grace: float, unrestricted: bool = False) -> None:
        self.jail_uid = jail_uid
        self.accept_weak = accept_weak
        self.grace = grace
        self.unrestricted = unrestricted
        self.process: subprocess.Popen | None = None
        self.walls: WallReport | None = None
        self._buffer = b""

    # -- the template's life --

    def spawn(self) -> None:
        """Start the template process without waiting for it (it reports ready on its own)."""
        if self.process is not None and self.process.poll() is None:
            return
        self.close()
        bootstrap = ("import sys, json; sys.path[:0] = json.loads(sys.argv[1])['sys_path']; "
                     "from core.jail import template_main; template_main()")
        config = {"sys_path": [path for path in sys.path if path], "jail_uid": self.jail_uid}
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-c", bootstrap, json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=clean_environment(), cwd="/",
            close_fds=True, start_new_session=True,
        )
        self._buffer = b""

    def start(self) -> WallReport:
        """Start the template if it is not running, and wait until it is ready; the walls its runs get."""
        if self.process is not None and self.process.poll() is None and self.walls is not None:
            return self.walls
        self.spawn()
        ready = self._message(time.monotonic() + _TEMPLATE_START_SECONDS)
        if ready is None or ready.get("type") != "ready":
            self.close()
            raise JailError("the jail's template process did not start")
        self.walls = WallReport.from_dict(ready.get("walls", {}))
        return self.walls

    def close(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            for pipe in (self.process.stdin, self.process.stdout):
                if pipe is not None:
                    pipe.close()
        self.process = None
        self.walls = None

    # -- one run --

    def run(self, source: str, function_name: str, args: list, kwargs: dict, limits: Any, timeout: float,
            on_output: Callable[[str], None] = lambda line: None) -> Outcome:
        """Run the code in a new jailed process; whatever the code does, return how it ended.

        An exception raised here while waiting (Celery's soft time limit) kills the run first.
        """
        self.start()
        request = {"type": "run", "source": source, "function_name": function_name, "args": args, "kwargs": kwargs,
                   "limits": {**asdict(limits), "allowed_imports": list(limits.allowed_imports)},
                   "timeout": timeout, "grace": self.grace, "accept_weak": self.accept_weak,
                   "unrestricted": self.unrestricted}
        try:
            self._write(request)
        except OSError:
            self.close()
            self.start()
            self._write(request)
        printed: list[str] = []
        ended: dict[str, Any] | None = None
        try:
            while True:
                message = self._message(None)
                if message is None:
                    self.close()
                    return Outcome("crashed", output="\n".join(printed), signal_name="the jail's template died")
                kind = message.get("type")
                if kind == "output":
                    line = str(message.get("line", ""))
                    printed.append(line)
                    on_output(line)
                elif kind in ("done", "error"):
                    ended = message
                elif kind == "exit":
                    return self._outcome(message, ended, printed)
        except BaseException:
            self._kill_run()
            raise

    def _outcome(self, exit_message: dict, ended: dict | None, printed: list[str]) -> Outcome:
        output = "\n".join(printed)
        ending = exit_message.get("ending")
        if ending == "deadline":
            return Outcome("timed_out", output=output)
        if ending == "broken":
            return Outcome("broken", output=output, message="the run's process broke the jail's protocol")
        if ended is not None and ended.get("type") == "done" and ending == "finished":
            return Outcome("done", result=ended.get("result"), output=str(ended.get("output", output)))
        if ended is not None and ended.get("type") == "error" and ending == "finished":
            status = "refused" if ended.get("reason") in ("refused", "jail") else "error"
            return Outcome(status, reason=str(ended.get("reason", "error")), message=str(ended.get("message", "")),
                           traceback=str(ended.get("traceback", "")), output=str(ended.get("output") or output))
        name = exit_message.get("signal") or f"exit status {exit_message.get('code')}"
        if name == "SIGXCPU":
            return Outcome("timed_out", output=output, signal_name=name)
        return Outcome("crashed", output=output, signal_name=name)

    def _kill_run(self) -> None:
        """Ask the template to kill the current run and wait for its exit report; restart it if it will not."""
        try:
            self._write({"type": "kill"})
            deadline = time.monotonic() + _KILL_WAIT_SECONDS
            while True:
                message = self._message(deadline)
                if message is None or message.get("type") == "exit":
                    break
        except BaseException:
            self.close()
            return
        if message is None:
            self.close()

    # -- the pipes --

    def _write(self, message: dict) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps(message, ensure_ascii=False).encode("utf-8", "replace") + b"\n")
        self.process.stdin.flush()

    def _message(self, deadline: float | None) -> dict | None:
        """The template's next message; None at EOF or past ``deadline``."""
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            if deadline is not None:
                import select

                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                    return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            return {"type": "garbled"}
        return message if isinstance(message, dict) else {"type": "garbled"}
