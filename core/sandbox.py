"""Running a user's code task: RestrictedPython for the language, the host for the limits.

Why it is shaped this way:

* **RestrictedPython rewrites, we decide.** ``compile_restricted`` turns every attribute read,
  item access, iteration, unpacking, ``print`` and in-place operator into a call of a guard
  (``_getattr_``, ``_getitem_``, ...). This module supplies those guards and a small set of
  builtins; everything not handed over is simply absent. Names starting with ``_`` are refused
  both at compile time (by RestrictedPython) and at run time (by our ``getattr``/``setattr``).
  The getattr guard also judges what it hands back, whatever the name and whatever the object it
  was read from (a ``super`` proxy, a str look-alike, a host object): never a module, frame,
  traceback or code object, never ``str.format``/``format_map`` (bound, unbound, or forwarded to by
  ``collections.UserString``; their fields read attributes unguarded -- f-strings and ``%`` remain),
  and never ``AttributeError.obj`` (the object an unguarded walk had reached when it failed).
  One addition to RestrictedPython's policy: ``obj.attr += v`` and ``obj[key] += v``, which it
  refuses outright, compile to guarded read-then-write calls, because everyday code needs them.
  Writes go through ``_write_``, which lets through plain containers and objects of classes the
  task itself defined (``__metaclass__`` is ``type`` plus a per-run record of those classes).
* **Imports hand out proxies, never modules.** A module object leads everywhere (``json.decoder``,
  ``random._os`` ...), so an allowed import yields a read-only proxy holding only the module's
  public functions, classes and plain constants. A few stdlib helpers that read or write
  attributes by a caller-chosen name or evaluate annotations (``functools.wraps``,
  ``functools.singledispatch``, ``string.Formatter``, and ``operator.attrgetter``/``methodcaller``
  should a deployment allow ``operator``) are left out because they would undo the guards;
  ``string.Template`` stays (it looks up keys, never attributes). Lazy imports made by C code on
  the user's behalf (``datetime.strptime`` loads ``_strptime``) go through the same hook; they are
  told apart by the calling instruction and allowed for a fixed internal list only, and the caller
  gets an empty proxy back.
* **Limits belong to the host.** RestrictedPython does not bound CPU, memory or recursion. The
  worker's Celery time limit bounds CPU; here ``RLIMIT_AS`` (relative to the current size),
  ``sys.setrecursionlimit`` (relative to the current depth, and never more than the C stack of the
  calling thread holds: a frame count is not a byte count; that stack is ``Limits.stack_bytes`` if
  given, else RLIMIT_STACK in the main thread and ``threading.stack_size()`` in any other) and an
  output collector bound the rest for the duration of one call, and everything is restored
  afterwards so the worker goes on. Before the limits are lifted the run's garbage is collected,
  so no generator ``finally`` of the task's runs later, unbounded.
  These settings are process-wide: run one ``execute`` at a time per process (Celery prefork).
* **Fresh state every run.** The compiled code object is cached (cron tasks fire often), but each
  run gets new globals, a new ``random.Random``, its own ``decimal`` context and its own set of
  user classes (whose instances, alone among non-containers, may have attributes written).
* **Failures are data.** Whatever the user's code does -- raise, ``sys.exit``-like exceptions,
  run out of memory -- comes back as ``SandboxError`` with a reason, a message, a traceback that
  shows only the user's own lines, and the output so far. Celery's soft time limit is the one
  exception let through untouched, so the worker can record a timeout. Every text that leaves a
  run -- message, traceback, output, streamed lines, strings and keys of the result -- encodes as
  UTF-8: a lone surrogate (``"\\udcff"``) becomes U+FFFD instead of failing the JSON or the log later.
"""

from __future__ import annotations

import abc
import ast
import builtins
import dataclasses
import datetime as _datetime
import decimal as _decimal
import dis
import fractions as _fractions
import functools
import gc
import inspect
import json
import keyword
import logging
import math
import operator
import random
import re
import string
import sys
import threading
import types
from collections import Counter, OrderedDict, UserString, defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from RestrictedPython import RestrictingNodeTransformer, compile_restricted_exec, safe_builtins
from RestrictedPython.Guards import (
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safer_getattr,
    safer_getattr_raise,
)
from RestrictedPython.transformer import INSPECT_ATTRIBUTES, IOPERATOR_TO_STR, copy_locations

from core.allowed_imports import SANDBOX_IMPORTS
from core.errors import InvalidSpec
from core.spec_fields import TASK_LIMIT_FIELDS

try:  # pragma: no cover - depends on the platform
    import resource
except ImportError:  # pragma: no cover
    resource = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_IMPORTS",
    "Execution",
    "Limits",
    "SandboxError",
    "check_source",
    "compile_source",
    "execute",
]

DEFAULT_IMPORTS: tuple[str, ...] = SANDBOX_IMPORTS

TASK_FILENAME = "<task>"
"""Filename of the user's code in code objects and tracebacks."""
USER_MODULE = "task"
"""``__name__`` of the user's code, so their classes are ``task.Foo``."""

_IMPORT_NAME = dis.opmap["IMPORT_NAME"]
_TIME_LIMIT_NAMES = frozenset({"SoftTimeLimitExceeded", "TimeLimitExceeded"})
_MAX_RESULT_DEPTH = 100
MAX_MESSAGE_CHARS = 2000
"""An error message longer than this (``raise ValueError("x" * 10**8)``) is cut: it is stored and logged."""
MAX_TRACEBACK_CHARS = 16_000
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _valid_text(text: str) -> str:
    """``text`` as a plain ``str`` that encodes as UTF-8: each lone surrogate (``"\\udcff"``, which
    Python strings may hold but no UTF-8 stream, JSON document or log line can) becomes U+FFFD."""
    if type(text) is not str:
        text = str.__str__(text)
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", text)
    return text


@dataclass(frozen=True)
class Limits:
    """Bounds of one run; 0 for ``memory_limit_mb`` (or <= 0 for ``recursion_limit``) disables it.

    ``stack_bytes`` is not a bound but a fact: the size of the C stack of the thread that calls
    ``execute``, which caps ``recursion_limit`` (see ``stack_safe_recursion_limit``). ``None`` means
    "find out": ``RLIMIT_STACK`` in the main thread, ``threading.stack_size()`` in any other (right
    when it was set before the thread started and not changed since). A caller that made the thread
    knows better and should say so.
    """

    output_cap: int = 64 * 1024
    result_cap: int = 256 * 1024
    memory_limit_mb: int = 512
    recursion_limit: int = 1000
    allowed_imports: tuple[str, ...] = DEFAULT_IMPORTS
    stack_bytes: int | None = None

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> Limits:
        """Limits taken from a ``core.config.Settings`` (its defaults for caps, memory, recursion, imports)."""
        values = {
            "output_cap": settings.output_cap,
            "result_cap": settings.result_cap,
            "memory_limit_mb": settings.memory_limit_mb,
            "recursion_limit": settings.recursion_limit,
            "allowed_imports": tuple(settings.sandbox_imports),
        }
        values.update(overrides)
        return cls(**values)

    @classmethod
    def for_task(cls, settings: Any, spec: Any) -> Limits:
        """The limits of one run of ``spec``: its own values where it gives them, else the defaults,
        never above the configured ``max_*`` bounds (which may have been lowered since it was stored)."""
        overrides = {}
        for name in TASK_LIMIT_FIELDS:
            wanted = getattr(spec, name, None)
            if wanted is not None:
                overrides[name] = min(wanted, getattr(settings, f"max_{name}"))
        return cls.from_settings(settings, **overrides)


class SandboxError(Exception):
    """User code failed.

    ``reason`` is one of ``"error"``, ``"output_cap"``, ``"result_cap"``, ``"memory"``,
    ``"recursion"``, ``"exit"``; ``message`` is human text (``"ValueError: boom"``);
    ``traceback`` shows only the user's frames (file ``<task>``, their line numbers and source);
    ``output`` is what was printed before the failure.
    """

    REASONS = frozenset({"error", "output_cap", "result_cap", "memory", "recursion", "exit"})

    def __init__(self, reason: str, message: str, traceback: str = "", output: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.traceback = traceback
        self.output = output

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # keep all fields when pickled (Celery result backends)
        return (type(self), (self.reason, self.message, self.traceback, self.output))

    def to_dict(self) -> dict:
        """The fields as a JSON-safe dict."""
        return {"reason": self.reason, "message": self.message, "traceback": self.traceback, "output": self.output}


@dataclass
class Execution:
    """What a successful run produced: a JSON-safe result and the captured output."""

    result: object
    output: str


# --------------------------------------------------------------------------------------------
# Compiling and checking


class _Policy(RestrictingNodeTransformer):
    """RestrictedPython's policy, plus guarded ``obj.attr += v`` and ``obj[key] += v``.

    RestrictedPython refuses augmented assignment to attributes and items outright; everyday
    code (``counts[word] += 1``, ``self.total += x``) needs it. It becomes a call of
    ``_augattr_``/``_augitem_``, which read through ``_getattr_``/``_getitem_`` and write through
    ``_write_`` like any other access. (The right-hand side is evaluated before the old value is
    read -- the only difference from plain Python.)
    """

    def visit_AugAssign(self, node: ast.AugAssign) -> Any:
        target = node.target
        if not isinstance(target, (ast.Attribute, ast.Subscript)):
            return super().visit_AugAssign(node)
        op = ast.Constant(IOPERATOR_TO_STR[type(node.op)])
        if isinstance(target, ast.Attribute):
            attr = target.attr
            if attr.startswith("_") or attr.endswith("__roles__") or attr in INSPECT_ATTRIBUTES:
                self.error(node, f'"{attr}" is an invalid attribute name.')
                return node
            func, where = "_augattr_", ast.Constant(attr)
        else:
            key = target.slice
            if isinstance(key, ast.Slice):  # a[i:j] += ... : pass a real slice object
                key = ast.Call(
                    func=ast.Name("slice", ast.Load()),
                    args=[ast.Constant(None) if part is None else part for part in (key.lower, key.upper, key.step)],
                    keywords=[],
                )
            func, where = "_augitem_", self.visit(key)
        call = ast.Call(
            func=ast.Name(func, ast.Load()),
            args=[self.visit(target.value), where, op, self.visit(node.value)],
            keywords=[],
        )
        statement = ast.Expr(value=call)
        copy_locations(statement, node)
        ast.fix_missing_locations(statement)
        return statement


_TOO_DEEP = "is nested too deeply to compile (simplify the deepest expression or statement)"


@functools.lru_cache(maxsize=256)
def _top_level_defs(source: str) -> dict[str, str]:
    """Map of top-level ``def``/``async def`` names to ``"def"``/``"async"``; InvalidSpec on syntax errors."""
    try:
        tree = ast.parse(source, TASK_FILENAME)
    except SyntaxError as exc:
        raise InvalidSpec("function_code", f"line {exc.lineno}: {exc.msg}") from None
    except ValueError as exc:  # e.g. NUL bytes in the source
        raise InvalidSpec("function_code", str(exc)) from None
    except (RecursionError, MemoryError):  # the parser's own limits: "-" * 100_000 + "1" and the like
        raise InvalidSpec("function_code", _TOO_DEEP) from None
    defs: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            defs[node.name] = "def"
        elif isinstance(node, ast.AsyncFunctionDef):
            defs[node.name] = "async"
    return defs


@functools.lru_cache(maxsize=256)
def compile_source(source: str) -> types.CodeType:
    """Compile ``source`` under RestrictedPython (cached per source text); InvalidSpec on errors."""
    if not isinstance(source, str):
        raise InvalidSpec("function_code", "must be text")
    try:
        result = compile_restricted_exec(source, filename=TASK_FILENAME, policy=_Policy)
    except SyntaxError as exc:  # RestrictedPython reports most, but not all, problems as a list
        raise InvalidSpec("function_code", f"line {exc.lineno}: {exc.msg}") from None
    except ValueError as exc:
        raise InvalidSpec("function_code", str(exc)) from None
    except (RecursionError, MemoryError):  # RestrictedPython's transformer and compile() recurse per level
        raise InvalidSpec("function_code", _TOO_DEEP) from None
    if result.errors or result.code is None:
        raise InvalidSpec("function_code", "; ".join(result.errors) or "does not compile")
    return result.code


def check_source(source: str, function_name: str) -> None:
    """Refuse code that does not compile restricted, or a name that is not a top-level ``def`` in it."""
    if not isinstance(function_name, str) or not function_name.isidentifier() or keyword.iskeyword(function_name):
        raise InvalidSpec("function_name", f"{function_name!r} is not a valid Python identifier")
    if function_name.startswith("_"):
        raise InvalidSpec("function_name", f"{function_name!r}: names starting with '_' are not allowed in tasks")
    if not isinstance(source, str):
        raise InvalidSpec("function_code", "must be text")
    defs = _top_level_defs(source)
    if defs.get(function_name) == "async":
        raise InvalidSpec(
            "function_name", f"{function_name!r} is an async def; async functions are not supported, use a plain def"
        )
    compile_source(source)
    if defs.get(function_name) != "def":
        raise InvalidSpec("function_name", f"no top-level 'def {function_name}(...)' in the code")


# --------------------------------------------------------------------------------------------
# Output


class _OutputCapExceeded(BaseException):
    """Raised in the user's print once the output cap is hit (a BaseException: ``except Exception`` misses it)."""


class _OutputSink:
    """All printed text of one run: capped in UTF-8 bytes, streamed line by line to ``on_output``."""

    def __init__(self, cap: int, on_output: Callable[[str], None] | None) -> None:
        self.cap = max(0, cap)
        self.on_output = on_output
        self.parts: list[str] = []
        self.used = 0
        self.overflowed = False
        self._pending = ""

    def text(self) -> str:
        return "".join(self.parts)

    def write(self, text: str) -> None:
        if self.overflowed:
            raise _OutputCapExceeded()
        text = _valid_text(text)
        data = text.encode("utf-8")
        if self.used + len(data) <= self.cap:
            self.used += len(data)
            self.parts.append(text)
            self._stream(text)
            return
        room = self.cap - self.used
        kept = data[:room].decode("utf-8", "ignore")
        marker = f"… [output truncated at {self.cap} bytes]\n"
        if kept and not kept.endswith("\n"):
            kept += "\n"
        elif not kept and self.parts and not self.parts[-1].endswith("\n"):
            kept = "\n"
        self.parts.append(kept + marker)
        self.used = self.cap
        self.overflowed = True
        self._stream(kept + marker)
        raise _OutputCapExceeded()

    def _stream(self, text: str) -> None:
        if self.on_output is None:
            return
        self._pending += text
        if "\n" not in self._pending:
            return
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._emit(line)

    def flush(self) -> None:
        """Hand a trailing unterminated line to ``on_output`` (at the end of the run)."""
        if self._pending:
            line, self._pending = self._pending, ""
            self._emit(line)

    def _emit(self, line: str) -> None:
        if self.on_output is None:
            return
        try:
            self.on_output(line)
        except Exception:  # a broken log stream must not become the user's error
            log.exception("on_output callback failed; live output disabled for this run")
            self.on_output = None


class _Printer:
    """What RestrictedPython's ``_print_`` returns (one per function): forwards to the run's sink."""

    def __init__(self, sink: _OutputSink, getattr_: Callable | None) -> None:
        self._sink = sink
        self._getattr = getattr_
        self._txt: list[str] = []

    def write(self, text: str) -> None:
        self._sink.write(text)
        self._txt.append(text)

    def flush(self) -> None:
        pass

    def __call__(self) -> str:  # the ``printed`` name of RestrictedPython
        return "".join(self._txt)

    def _call_print(self, *objects: object, **kwargs: Any) -> None:
        if kwargs.get("file") is None:
            kwargs["file"] = self
        elif self._getattr is not None:
            self._getattr(kwargs["file"], "write")
        print(*objects, **kwargs)


# --------------------------------------------------------------------------------------------
# Imports


_EXCLUDED_NAMES: dict[str, frozenset[str]] = {
    # Read or write attributes by caller-chosen names, or evaluate (string) annotations unrestricted.
    "functools": frozenset({"update_wrapper", "wraps", "singledispatch", "singledispatchmethod"}),
    # str.format-style attribute traversal ("{0.__class__}").
    "string": frozenset({"Formatter"}),
    # Not a default import (and never should be), but if a deployment allows it anyway: these two
    # fetch attributes by a caller-chosen name in C, past every guard (RestrictedPython PR #330).
    "operator": frozenset({"attrgetter", "methodcaller"}),
}
_INTERNAL_IMPORTS = frozenset({"_strptime", "time"})
"""Modules C code may import lazily while a task's frame is on top (datetime.strptime, strftime ...)."""
_VALUE_TYPES = (bool, int, float, complex, str, bytes, type(None))
_IMMUTABLE_INSTANCE_TYPES = (_datetime.timezone, _datetime.date, _datetime.time, _datetime.timedelta,
                             _decimal.Decimal, _fractions.Fraction)


def _is_constant(value: object) -> bool:
    if isinstance(value, _VALUE_TYPES) or type(value) in _IMMUTABLE_INSTANCE_TYPES:
        return True
    if isinstance(value, (tuple, frozenset)):
        return all(_is_constant(item) for item in value)
    return False


def _exposable(value: object) -> bool:
    if isinstance(value, types.ModuleType) or _is_format_engine(value):
        return False
    return inspect.isroutine(value) or isinstance(value, type) or _is_constant(value)


@functools.cache
def _module_attrs(name: str) -> types.MappingProxyType:
    """The public functions, classes and constants of module ``name`` (imported for real, once)."""
    module = __import__(name, fromlist=["_"])  # the real import, for our own use
    public = getattr(module, "__all__", None)
    names = list(public) if public is not None else [n for n in dir(module) if not n.startswith("_")]
    excluded = _EXCLUDED_NAMES.get(name, frozenset())
    attrs = {}
    for attr in names:
        if attr.startswith("_") or attr in excluded:
            continue
        try:
            value = getattr(module, attr)
        except AttributeError:
            continue
        if _exposable(value):
            attrs[attr] = value
    return types.MappingProxyType(attrs)


class ModuleProxy:
    """A read-only stand-in for an allowed module: only the attributes it was given."""

    __slots__ = ("_name", "_attrs")
    _name: str
    _attrs: types.MappingProxyType[str, object]

    def __init__(self, name: str, attrs: dict[str, object]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_attrs", types.MappingProxyType(dict(attrs)))

    def __getattr__(self, attr: str) -> object:
        try:
            return self._attrs[attr]
        except KeyError:
            raise AttributeError(f"module {self._name!r} has no attribute {attr!r} available to tasks") from None

    def __setattr__(self, attr: str, value: object) -> None:
        raise AttributeError(f"module {self._name!r} is read-only in tasks")

    def __delattr__(self, attr: str) -> None:
        raise AttributeError(f"module {self._name!r} is read-only in tasks")

    def __repr__(self) -> str:
        return f"<module {self._name!r} (task sandbox)>"


class _Importer:
    """The ``__import__`` of one run: allow-listed names only, answered with proxies."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.allowed = frozenset(allowed)
        self.proxies: dict[str, ModuleProxy] = {}
        self.rng = random.Random()  # seeded from os.urandom; never shared between runs

    def __call__(self, name: str, globals: dict | None = None, locals: dict | None = None,
                 fromlist: tuple | list | None = (), level: int = 0) -> ModuleProxy:
        if not _called_by_import_statement():
            return self._internal(name, level)
        if level != 0:
            raise ImportError("relative imports are not allowed in tasks")
        if not isinstance(name, str) or name not in self.allowed:
            allowed = ", ".join(sorted(self.allowed))
            raise ImportError(f"import of {name!r} is not allowed in tasks (allowed: {allowed})")
        if fromlist:
            return self._proxy(name)
        return self._proxy(name.partition(".")[0])

    def _internal(self, name: str, level: int) -> ModuleProxy:
        # A C function called from the task imports lazily (PyImport_Import ignores the value and
        # reads sys.modules). Allow known helper modules only, and hand back nothing usable.
        top = name.partition(".")[0] if isinstance(name, str) else ""
        if level != 0 or top not in _INTERNAL_IMPORTS:
            raise ImportError(f"import of {name!r} is not allowed in tasks")
        try:
            builtins.__import__(name)
        except ImportError:  # its .path/.name would show the host's files to the task: a plain message only
            raise ImportError(f"import of {name!r} failed") from None
        return ModuleProxy(name, {})

    def _proxy(self, name: str) -> ModuleProxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            attrs: dict[str, object] = dict(_module_attrs(name)) if name in self.allowed else {}
            if name == "random":
                for attr in list(attrs):
                    if attr not in ("Random", "SystemRandom") and hasattr(random.Random, attr):
                        attrs[attr] = getattr(self.rng, attr)
            prefix = name + "."
            for sub in {a[len(prefix):].partition(".")[0] for a in self.allowed if a.startswith(prefix)}:
                attrs[sub] = self._proxy(prefix + sub)
            proxy = self.proxies[name] = ModuleProxy(name, attrs)
        return proxy


def _called_by_import_statement() -> bool:
    """True if ``__import__`` was reached from an ``import`` statement (not from C code) in the task."""
    try:
        frame = sys._getframe(2)
        code = frame.f_code
        return code.co_code[frame.f_lasti] == _IMPORT_NAME
    except (ValueError, IndexError, AttributeError):  # pragma: no cover - be strict when unsure
        return True


# --------------------------------------------------------------------------------------------
# Guards and builtins


def _check_name(name: object) -> str:
    # ``type(...) is str``, not isinstance: a str subclass can override ``startswith`` and so slip a
    # dunder name past the check (the lesson of RestrictedPython 7.2's safer_getattr fix).
    if type(name) is not str:
        raise TypeError("attribute name must be a plain str")
    if name.startswith("_"):
        raise AttributeError(f'"{name}" is an invalid attribute name because it starts with "_"')
    return name


_NO_DEFAULT = object()

_FORMAT_METHOD_NAMES = frozenset({"format", "format_map"})
_FORMAT_FUNCTIONS: tuple[object, ...] = (
    str.format, str.format_map,  # unbound: ``str.format(fmt, obj)``, ``map(str.format, ...)``
    UserString.format, UserString.format_map,  # Python methods that call ``self.data.format(...)``
    *(value for value in vars(string.Formatter).values() if callable(value)),
)
_FORMAT_FUNCTION_IDS = frozenset(map(id, _FORMAT_FUNCTIONS))  # the tuple keeps them alive: ids stay theirs


def _is_format_engine(value: object) -> bool:
    """Would calling ``value`` resolve a format string's fields (``"{0.attr}"``, ``"{0[key]}"``) in C or
    in the standard library -- that is, with plain ``getattr``/``[]``, past every guard?

    Judged by what the value *is*, not by the name or the object it was fetched from: ``str.format``
    bound to a string arrives through ``"".format``, a ``str`` subclass, a ``super`` proxy
    (``super(S, s).format``) or any object that stores it under another name; unbound through ``str``,
    ``super(S, S)`` or a subclass; ``collections.UserString`` forwards to it from Python code; and
    ``string.Formatter`` is the same walk written in Python.
    """
    if isinstance(value, types.MethodType):  # a bound Python method: judge its function
        value = value.__func__
    if isinstance(value, types.BuiltinMethodType):  # a C method bound to an object ("".format)
        return value.__name__ in _FORMAT_METHOD_NAMES and isinstance(value.__self__, str)
    if id(value) in _FORMAT_FUNCTION_IDS:
        return True
    return isinstance(value, string.Formatter) or (isinstance(value, type) and issubclass(value, string.Formatter))


_INTERNAL_TYPES = (types.FrameType, types.TracebackType, types.CodeType)
"""Interpreter internals that lead to every global of the host; no public attribute may hand one out."""
_HIDDEN_EXCEPTION_ATTRIBUTES: tuple[tuple[type, str], ...] = (
    # The object a failed lookup was made on: whatever an unguarded walk (C code, the standard
    # library) had reached when it failed -- not necessarily anything the task ever held.
    (AttributeError, "obj"),
)


def guarded_getattr(obj: object, name: str, default: object = _NO_DEFAULT) -> object:
    """``getattr`` for tasks: no ``_`` names, no ``str.format`` however reached, never a module, frame,
    traceback or code object, no ``AttributeError.obj``, no ABC registration."""
    _check_name(name)
    # A super proxy reads attributes of its __self__ (past some classes of its MRO): judge that.
    # (typeshed's ``super`` lacks the ``__self__`` every super object has)
    subject = obj.__self__ if isinstance(obj, super) and obj.__self__ is not None else obj  # type: ignore[attr-defined]
    if name == "register" and isinstance(subject, abc.ABCMeta):
        # ``fractions.Fraction.register(str)`` (or ``register`` on a task's subclass of ``UserList``,
        # through the ABC's subclass cache) would change isinstance() for the host and every later run.
        raise AttributeError("'register' of abstract base classes is not available in tasks: it would change "
                             "isinstance() for every later run")
    for kind, hidden in _HIDDEN_EXCEPTION_ATTRIBUTES:
        if name == hidden and isinstance(subject, kind):
            raise AttributeError(f"{kind.__name__}.{hidden} is not available in tasks: it may be an object the "
                                 "code never held")
    if default is _NO_DEFAULT:
        value = safer_getattr_raise(obj, name)
    else:
        value = safer_getattr(obj, name, default)
    if isinstance(value, types.ModuleType):
        raise AttributeError(f"{name!r} is a module; modules are only reachable through import in tasks")
    if isinstance(value, _INTERNAL_TYPES):
        raise AttributeError(f"{name!r} is a {type(value).__name__} object, which tasks may not hold")
    if _is_format_engine(value):
        raise NotImplementedError("str.format and format_map (however reached) are not safe in tasks: their "
                                  "fields read attributes unguarded; use f-strings or % instead")
    return value


def guarded_hasattr(obj: object, name: str) -> bool:
    """``hasattr`` for tasks: refuses ``_`` names like ``getattr`` does."""
    _check_name(name)
    try:
        guarded_getattr(obj, name)
    except (AttributeError, NotImplementedError):
        return False
    return True


def _getitem(obj: Any, key: Any) -> Any:
    return obj[key]


def _apply(func: Callable, *args: Any, **kwargs: Any) -> Any:
    return func(*args, **kwargs)


_INPLACE_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
    "%=": operator.imod, "**=": operator.ipow, "<<=": operator.ilshift, ">>=": operator.irshift,
    "|=": operator.ior, "^=": operator.ixor, "&=": operator.iand, "//=": operator.ifloordiv,
    "@=": operator.imatmul,
}


def _inplacevar(op: str, target: Any, value: Any) -> Any:
    try:
        func = _INPLACE_OPS[op]
    except KeyError:
        raise SyntaxError(f"augmented assignment {op!r} is not allowed") from None
    return func(target, value)


_ITEM_WRITABLE = frozenset({dict, list, Counter, OrderedDict, defaultdict, deque})


class _WriteGuard:
    """``_write_`` of one run: containers, the task's own classes and their instances, decimal contexts."""

    def __init__(self) -> None:
        self.user_classes: set[type] = set()

    def metaclass(self, name: str, bases: tuple, namespace: dict, **kwargs: Any) -> type:
        """``__metaclass__`` for ``class`` statements: plain ``type``, remembering the class."""
        cls = type(name, bases, namespace, **kwargs)
        self.user_classes.add(cls)
        return cls

    def __call__(self, obj: Any) -> Any:
        kind = type(obj)
        if kind in _ITEM_WRITABLE or kind in self.user_classes:
            return obj
        if isinstance(obj, type) and obj in self.user_classes:
            return obj
        if isinstance(obj, _decimal.Context):
            return obj
        raise TypeError(f"cannot change attributes or items of {kind.__name__!r} objects in a task")

    def augattr(self, obj: Any, name: str, op: str, value: Any) -> None:
        """``obj.name op= value`` (``_augattr_``)."""
        new = _inplacevar(op, guarded_getattr(obj, name), value)
        setattr(self(obj), _check_name(name), new)

    def augitem(self, obj: Any, key: Any, op: str, value: Any) -> None:
        """``obj[key] op= value`` (``_augitem_``)."""
        new = _inplacevar(op, obj[key], value)
        self(obj)[key] = new

    def setattr(self, obj: Any, name: str, value: Any) -> None:
        """``setattr`` for tasks."""
        setattr(self(obj), _check_name(name), value)

    def delattr(self, obj: Any, name: str) -> None:
        """``delattr`` for tasks."""
        delattr(self(obj), _check_name(name))


_EXTRA_BUILTINS = (
    "sorted", "tuple", "list", "dict", "set", "frozenset", "zip", "enumerate", "min", "max", "sum",
    "any", "all", "map", "filter", "reversed", "range", "len", "abs", "round", "isinstance",
    "issubclass", "str", "int", "float", "bool", "bytes", "repr", "hash", "divmod", "pow", "chr",
    "ord", "hex", "oct", "bin", "format", "iter", "next", "callable", "object", "staticmethod",
    "classmethod", "property", "super", "Exception", "ValueError", "TypeError", "KeyError",
    "IndexError", "ZeroDivisionError", "RuntimeError", "StopIteration", "ArithmeticError",
    "LookupError", "AttributeError", "NotImplementedError", "AssertionError", "OverflowError",
    "RecursionError", "NotImplemented",
)
_NEVER_BUILTINS = frozenset({
    "open", "eval", "exec", "compile", "globals", "locals", "vars", "dir", "type", "input",
    "breakpoint", "memoryview", "help", "exit", "quit", "setattr", "delattr", "getattr", "hasattr",
    "_getattr_", "__import__",
})


def _base_builtins() -> dict[str, Any]:
    table = {name: value for name, value in safe_builtins.items() if name not in _NEVER_BUILTINS}
    for name in _EXTRA_BUILTINS:
        table[name] = getattr(builtins, name)
    return table


_BASE_BUILTINS = _base_builtins()


def _make_globals(limits: Limits, sink: _OutputSink, writer: _WriteGuard | None = None) -> dict[str, Any]:
    """A fresh namespace for one run (``writer`` remembers the classes the run defines)."""
    writer = writer if writer is not None else _WriteGuard()
    table = dict(_BASE_BUILTINS)
    table.update(
        __import__=_Importer(limits.allowed_imports),
        getattr=guarded_getattr,
        hasattr=guarded_hasattr,
        setattr=writer.setattr,
        delattr=writer.delattr,
    )
    return {
        "__builtins__": table,
        "__name__": USER_MODULE,
        "__metaclass__": writer.metaclass,
        "_getattr_": guarded_getattr,
        "_getitem_": _getitem,
        "_getiter_": iter,
        "_write_": writer,
        "_augattr_": writer.augattr,
        "_augitem_": writer.augitem,
        "_inplacevar_": _inplacevar,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_apply_": _apply,
        "_print_": lambda getattr_=None: _Printer(sink, getattr_),
    }


# --------------------------------------------------------------------------------------------
# Limits


def _address_space_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[0])
        return pages * resource.getpagesize()
    except (OSError, ValueError, IndexError, AttributeError):
        return None


@contextmanager
def _memory_limit(megabytes: int) -> Iterator[None]:
    """Lower this process's RLIMIT_AS soft limit to its current size plus ``megabytes`` for a while."""
    if megabytes <= 0 or resource is None or not hasattr(resource, "RLIMIT_AS"):
        yield
        return
    current = _address_space_bytes()
    if current is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    wanted = current + megabytes * 1024 * 1024
    for bound in (soft, hard):
        if bound != resource.RLIM_INFINITY:
            wanted = min(wanted, bound)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))
    except (ValueError, OSError):
        log.warning("could not set RLIMIT_AS; running without a memory limit", exc_info=True)
        yield
        return
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _stack_depth() -> int:
    depth = 0
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        depth += 1
        frame = frame.f_back
    return depth


STACK_BYTES_PER_CALL = 4096
"""C stack one nested call of user code may take (through ``sorted(key=...)`` it is ~2.4 KiB)."""
HOST_STACK_MARGIN = 1024 * 1024
"""C stack kept for the host's own frames below the run (a quarter of a smaller stack)."""
_GLIBC_THREAD_STACK_WITHOUT_RLIMIT = 2 * 1024 * 1024
"""What glibc gives a new thread by default when RLIMIT_STACK is unlimited (x86-64)."""


def _rlimit_stack() -> int | None:
    if resource is None or not hasattr(resource, "RLIMIT_STACK"):
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_STACK)
    return None if soft == resource.RLIM_INFINITY else soft


def thread_stack_bytes() -> int | None:
    """Size of the running thread's C stack as far as can be told without asking C; None if unbounded
    or unknown.

    The main thread grows up to ``RLIMIT_STACK``. Any other thread got a fixed stack when it started:
    ``threading.stack_size()`` if one was set (and not changed since), else the C library's default,
    which for glibc is ``RLIMIT_STACK`` as it was at process start, or 2 MiB if that was unlimited.
    """
    if threading.current_thread() is threading.main_thread():
        return _rlimit_stack()
    size = threading.stack_size()  # reading it also sets it to 0 (the default): put it back
    if size:
        threading.stack_size(size)
        return size
    limit = _rlimit_stack()
    return limit if limit is not None else _GLIBC_THREAD_STACK_WITHOUT_RLIMIT


def stack_safe_recursion_limit(wanted: int, stack_bytes: int | None = None) -> int:
    """``wanted``, lowered so that many nested calls fit in this thread's C stack.

    ``stack_bytes`` is the size of that stack; ``None`` (or <= 0) finds it out (``thread_stack_bytes``):
    RLIMIT_STACK is right for the main thread only -- a thread made with ``threading.stack_size(64 MiB)``
    holds far more than an 8 MiB RLIMIT_STACK says, and one with a small stack far less.
    Python counts frames, not bytes: a recursion through C functions with large frames overflows an
    8 MiB stack at ~3,500 levels and kills the process with SIGSEGV, which no ``except`` can catch.
    """
    if wanted <= 0:
        return wanted
    stack = stack_bytes if stack_bytes is not None and stack_bytes > 0 else thread_stack_bytes()
    if stack is None:
        return wanted
    room = stack - min(HOST_STACK_MARGIN, stack // 4)  # what the host's own frames already use, with a margin
    return max(1, min(wanted, room // STACK_BYTES_PER_CALL))


def _collection_counts() -> tuple[int, int]:
    stats = gc.get_stats()
    return stats[1]["collections"], stats[2]["collections"]


def _collect_garbage(full: bool, user_classes: set[type]) -> None:
    """Collect the run's garbage now, while its limits still hold.

    A generator left suspended in a reference cycle runs its ``finally`` block whenever the
    collector gets to it -- otherwise later, between runs, outside every limit (an endless loop
    there would hang the pool process for good). Only the young generations are scanned unless a
    collection of an older one ran during the run (it may have promoted the run's objects), which
    keeps this cheap for short runs. A time limit raised inside such a finalizer is re-raised.
    """
    caught: list[BaseException] = []
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if unraisable.exc_value is not None and _is_time_limit(unraisable.exc_value, user_classes):
            caught.append(unraisable.exc_value)

    sys.unraisablehook = hook
    try:
        gc.collect(2 if full else 1)
    finally:
        sys.unraisablehook = previous
    if caught:
        raise caught[0]


@contextmanager
def _recursion_limit(extra: int) -> Iterator[None]:
    """Allow ``extra`` more frames than the current depth, for a while."""
    if extra <= 0:
        yield
        return
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(_stack_depth() + extra)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


# --------------------------------------------------------------------------------------------
# Results and errors


class _ResultTooLarge(Exception):
    pass


def _json_safe(value: object, cap: int) -> object:
    """``value`` as plain JSON data (see ``Execution``); ``_ResultTooLarge`` once it surely exceeds ``cap``."""
    budget = [cap]  # a lower bound of the encoded size is charged as we go

    def charge(amount: int) -> None:
        budget[0] -= amount
        if budget[0] < 0:
            raise _ResultTooLarge(f"the result is larger than the result cap of {cap} bytes")

    def text(obj: object) -> str:
        try:
            return repr(obj)
        except ValueError:  # ints beyond sys.get_int_max_str_digits()
            return f"<int of {obj.bit_length()} bits>" if isinstance(obj, int) else "<unrepresentable>"

    def convert(obj: object, depth: int, path: set[int]) -> object:
        charge(1)
        if obj is None or obj is True or obj is False:
            return obj
        if isinstance(obj, int):
            number = int(obj)
            if number.bit_length() > 12_000:  # would not survive str()/json (digit limit)
                return text(number)
            return number
        if isinstance(obj, float):
            real = float(obj)
            return real if math.isfinite(real) else repr(real)
        if isinstance(obj, str):
            string = _valid_text(obj)
            charge(len(string) + 1)
            return string
        if depth >= _MAX_RESULT_DEPTH:
            raise _ResultTooLarge(f"the result is nested more than {_MAX_RESULT_DEPTH} levels deep")
        if isinstance(obj, (list, tuple, set, frozenset, dict)):
            if id(obj) in path:
                return "{...}" if isinstance(obj, dict) else "[...]"
            path.add(id(obj))
            try:
                if isinstance(obj, dict):
                    out = {}
                    for key, item in list(obj.items()):
                        key_text = _valid_text(key if isinstance(key, str) else str(key))
                        charge(len(key_text) + 3)
                        out[key_text] = convert(item, depth + 1, path)
                    return out
                items: list = list(obj)
                if isinstance(obj, (set, frozenset)):
                    try:
                        items = sorted(items)
                    except Exception:
                        pass
                return [convert(item, depth + 1, path) for item in items]
            finally:
                path.discard(id(obj))
        string = _valid_text(text(obj))
        charge(len(string) + 1)
        return string

    return convert(value, 0, set())


def _qualified_name(kind: type) -> str:
    module = getattr(kind, "__module__", None)
    if module in (None, "builtins", USER_MODULE):
        return kind.__qualname__
    return f"{module}.{kind.__qualname__}"


def _clip(text: str, cap: int, what: str) -> str:
    """``text`` cut to about ``cap`` characters (its start and its end) with a marker saying so."""
    if len(text) <= cap:
        return text
    head, tail = text[: cap // 4], text[-(cap - cap // 4):]
    return f"{head}\n… [{len(text) - len(head) - len(tail)} characters of the {what} left out] …\n{tail}"


def _describe(exc: BaseException) -> str:
    try:
        detail = str(exc)
    except Exception:
        detail = "<unprintable>"
    name = _qualified_name(type(exc))
    return _clip(_valid_text(f"{name}: {detail}" if detail else name), MAX_MESSAGE_CHARS, "message")


def _frame_lines(where: tuple[int, str], lines: list[str]) -> list[str]:
    lineno, name = where
    out = [f'  File "{TASK_FILENAME}", line {lineno}, in {name}']
    if 0 < lineno <= len(lines) and lines[lineno - 1].strip():
        out.append(f"    {lines[lineno - 1].strip()}")
    return out


def _format_traceback(exc: BaseException, source: str, last_line: str | None = None) -> str:
    """A traceback of ``exc`` (and what it was chained to) showing only frames of the user's code."""
    lines = source.splitlines()
    chain: list[BaseException] = [exc]
    links: list[str] = []  # links[i] joins chain[i + 1] (older) to chain[i] (newer)
    while True:
        newest = chain[-1]
        if newest.__cause__ is not None:
            older, link = newest.__cause__, "The above exception was the direct cause of the following exception:"
        elif newest.__context__ is not None and not newest.__suppress_context__:
            older, link = newest.__context__, "During handling of the above exception, another exception occurred:"
        else:
            break
        if any(older is seen for seen in chain):
            break
        chain.append(older)
        links.append(link)
    blocks: list[str] = []
    for index in range(len(chain) - 1, -1, -1):
        item = chain[index]
        frames: list[str] = []
        previous, repeats = None, 0
        tb = item.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            if code.co_filename == TASK_FILENAME:
                where = (tb.tb_lineno, code.co_name)
                repeats = repeats + 1 if where == previous else 0
                previous = where
                if repeats < 3:
                    frames.extend(_frame_lines(where, lines))
                elif repeats == 3:
                    frames.append("  [the line above repeated 1 more time]")
                else:
                    frames[-1] = f"  [the line above repeated {repeats - 2} more times]"
            tb = tb.tb_next
        block = ["Traceback (most recent call last):", *frames] if frames else []
        block.append(last_line if (index == 0 and last_line is not None) else _describe(item))
        blocks.append("\n".join(block))
        if index:
            blocks.append(f"\n{links[index - 1]}\n")
    return _clip(_valid_text("\n".join(blocks) + "\n"), MAX_TRACEBACK_CHARS, "traceback")


def _is_time_limit(exc: BaseException, user_classes: set[type] | frozenset[type] = frozenset()) -> bool:
    """Is ``exc`` the host's time limit? Never for an exception class the task defined itself: a task
    must not fake a timeout (or, with a BaseException subclass, get past the runner to the pool)."""
    mro = type(exc).__mro__
    if any(kind in user_classes or kind.__module__ == USER_MODULE for kind in mro):
        return False
    soft = sys.modules.get("billiard.exceptions")  # not imported here: a jailed run has no Celery (nor needs it)
    if soft is not None and isinstance(exc, soft.SoftTimeLimitExceeded):
        return True
    return any(kind.__name__ in _TIME_LIMIT_NAMES for kind in mro)


def _failure(exc: BaseException, source: str, sink: _OutputSink, limits: Limits) -> SandboxError:
    """The ``SandboxError`` for an exception that ended a run."""
    output = sink.text()
    if sink.overflowed or isinstance(exc, _OutputCapExceeded):
        message = f"the code printed more than the output cap of {limits.output_cap} bytes"
        trace = _format_traceback(exc, source, f"OutputCapExceeded: {message}") if exc.__traceback__ else ""
        if "File " not in trace:
            trace = ""
        return SandboxError("output_cap", message, trace, output)
    trace = _format_traceback(exc, source)
    if isinstance(exc, MemoryError):
        limit = f" (limit {limits.memory_limit_mb} MiB)" if limits.memory_limit_mb > 0 else ""
        return SandboxError("memory", f"MemoryError: the code ran out of memory{limit}", trace, output)
    if isinstance(exc, RecursionError):
        message = f"RecursionError: maximum recursion depth exceeded (limit {limits.recursion_limit} calls)"
        return SandboxError("recursion", message, trace, output)
    if isinstance(exc, (SystemExit, KeyboardInterrupt, GeneratorExit)):
        return SandboxError("exit", f"the code tried to stop the program ({_describe(exc)})", trace, output)
    return SandboxError("error", _describe(exc), trace, output)


# --------------------------------------------------------------------------------------------
# Running


def execute(
    source: str,
    function_name: str,
    args: list | None = None,
    kwargs: dict | None = None,
    limits: Limits = Limits(),
    on_output: Callable[[str], None] | None = None,
) -> Execution:
    """Run ``function_name(*args, **kwargs)`` from ``source`` in a fresh restricted namespace.

    ``on_output`` gets each complete printed line (without newline) as it is printed, and a last
    unterminated line when the run ends. Raises ``InvalidSpec`` for code that does not check,
    ``SandboxError`` for any failure of the user's code; Celery's soft time limit passes through.
    May run in any thread (one run per process at a time); in one started with a stack size of its
    own, ``limits.recursion_limit`` is capped by that stack (``Limits.stack_bytes``).
    """
    check_source(source, function_name)
    code = compile_source(source)
    call_args = list(args or ())
    call_kwargs = dict(kwargs or {})
    safe_depth = stack_safe_recursion_limit(limits.recursion_limit, limits.stack_bytes)
    if safe_depth != limits.recursion_limit:
        log.warning("recursion limit %d lowered to %d to fit the C stack", limits.recursion_limit, safe_depth)
        limits = dataclasses.replace(limits, recursion_limit=safe_depth)
    sink = _OutputSink(limits.output_cap, on_output)
    writer = _WriteGuard()
    namespace = _make_globals(limits, sink, writer)
    failure: SandboxError | None = None
    result: object = None
    collections_before = _collection_counts()
    try:
        with _decimal.localcontext(), _memory_limit(limits.memory_limit_mb):
            try:
                with _recursion_limit(limits.recursion_limit):
                    exec(code, namespace)
                    function = namespace.get(function_name)
                    if not callable(function):
                        raise TypeError(f"{function_name!r} is not a function after the code ran")
                    value = function(*call_args, **call_kwargs)
                if sink.overflowed:
                    raise _OutputCapExceeded()
                result = _json_safe(value, limits.result_cap)
                encoded = json.dumps(result, ensure_ascii=False, allow_nan=False).encode("utf-8")
                if len(encoded) > limits.result_cap:
                    raise _ResultTooLarge(f"the result is {len(encoded)} bytes as JSON, more than the result cap"
                                          f" of {limits.result_cap} bytes")
            except _ResultTooLarge as exc:
                failure = SandboxError("result_cap", str(exc), "", sink.text())
            except BaseException as exc:
                if _is_time_limit(exc, writer.user_classes):
                    raise
                failure = _failure(exc, source, sink, limits)
            finally:
                namespace.clear()  # finalise the task's objects while the limits still hold
                value = None
                _collect_garbage(_collection_counts() != collections_before, writer.user_classes)
    finally:
        sink.flush()
    if failure is not None:
        raise failure
    return Execution(result=result, output=sink.text())
