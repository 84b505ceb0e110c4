"""Every published RestrictedPython escape technique, tried against taskman's sandbox.

Each test is named after the advisory (GHSA id) or the release note that taught the technique, tries
the technique the way the advisory describes it -- and its obvious variants through the builtins and
module proxies taskman adds -- and shows it blocked: refused when the spec is checked (``InvalidSpec``
naming ``function_code``) or failing as a user error at run time, with the host untouched.

Advisories covered (https://github.com/zopefoundation/RestrictedPython/security/advisories):

* GHSA-wqc8-x2pr-7jqh (CVE-2023-37271): generator ``gi_frame`` -> ``f_back`` -> ``f_builtins``;
  RestrictedPython 8.5 added the async generator attributes (``ag_frame`` ...) to the same list.
* GHSA-xjw2-6jm9-rf67 (CVE-2023-41039): ``str.format`` / ``format_map`` / ``string.Formatter`` attribute
  traversal (``"{0.__class__}"``).
* GHSA-5rfv-66g4-jr8h (CVE-2024-47532): information leaks through ``AttributeError.obj`` and the
  ``string`` module.
* GHSA-gmj9-h825-chq2 (CVE-2025-22153): ``try/except*`` type confusion (CPython 3.11/3.12, our runtime).
* GHSA-ffg3-p8fm-mjx2 (CVE-2026-55830): positional-only parameters shadowing the guard hooks.
* GHSA-hp3v-5vw7-fx9w (CVE-2026-76825): ``string.Formatter`` field resolution, and the follow-up
  (PR #330) that ``operator.attrgetter``/``methodcaller`` reopen it when an import policy allows them.
* RestrictedPython 7.2 (PR #282): a ``str`` subclass as attribute name slipping past ``startswith``.
* RestrictedPython 9.0 (issue #335): builtins that iterate in C (``sorted``, ``tuple``, ``zip`` ...)
  bypass ``_getiter_``.
* RestrictedPython 8.4: type annotations are not supported; 5.1: the walrus operator.

Not applicable on this interpreter (Python 3.11): 8.5's lazy imports and comprehension unpacking
(Python 3.15 syntax, a SyntaxError here), 8.1's t-strings (3.14).
"""

from __future__ import annotations

import collections
import json
import signal
import string
import subprocess
import sys
import textwrap
import types

import pytest

from core import sandbox
from core.errors import InvalidSpec
from core.sandbox import Limits, SandboxError, check_source, execute

GUARD_NAMES = ("_getattr_", "_getitem_", "_getiter_", "_write_", "_print_", "_inplacevar_", "_unpack_sequence_",
               "_iter_unpack_sequence_", "_apply_", "_augattr_", "_augitem_", "__metaclass__", "__builtins__",
               "__import__", "__name__")
"""Every name the sandbox puts into a run's globals; none of them may be rebound by user code."""


def refused(source: str, function_name: str = "main") -> str:
    """``source`` must be refused when the spec is checked; returns the message."""
    with pytest.raises(InvalidSpec) as caught:
        check_source(textwrap.dedent(source), function_name)
    assert caught.value.field == "function_code"
    return caught.value.message


def run(source: str, *args, limits: Limits = Limits(), function_name: str = "main"):
    return execute(textwrap.dedent(source), function_name, list(args), None, limits)


def fails(source: str, *args, limits: Limits = Limits()) -> SandboxError:
    """``source`` must compile and fail at run time as the user's error; returns the SandboxError."""
    with pytest.raises(SandboxError) as caught:
        run(source, *args, limits=limits)
    return caught.value


# --------------------------------------------------------------------------------------------
# GHSA-wqc8-x2pr-7jqh (CVE-2023-37271): generators and their frames


def test_ghsa_wqc8_generator_gi_frame_f_back_poc_is_refused():
    """The advisory's first proof of concept: walk from a generator's frame to the caller's builtins."""
    message = refused(
        """
        g = None
        leak = None

        def test():
            global g, leak
            leak = g.gi_frame.f_back.f_back
            yield leak

        g = test()
        g.send(None)
        os = leak.f_builtins.get('__import__')('os')

        def main():
            return os.listdir('/')
        """
    )
    assert "gi_frame" in message


def test_ghsa_wqc8_self_referencing_generator_expression_poc_is_refused():
    """The second proof of concept: a generator expression reaching its own frame through its name."""
    message = refused(
        """
        q = (q.gi_frame.f_back.f_back.f_back for _ in (1,))

        def main():
            return [x for x in q][0].f_builtins['__import__']('os').listdir('/')
        """
    )
    assert "gi_frame" in message


@pytest.mark.parametrize("attribute", ["gi_frame", "gi_code", "gi_yieldfrom", "f_back", "f_globals", "f_builtins",
                                       "f_locals", "f_code", "tb_frame", "tb_next", "co_code", "cr_frame",
                                       "cr_code", "ag_frame", "ag_code", "ag_await"])
def test_ghsa_wqc8_frame_attributes_are_refused_by_name_and_at_run_time(attribute):
    """Written out, the attribute is refused at check time; by a name computed at run time through
    ``getattr``/``hasattr`` (which RestrictedPython cannot see) the run fails instead."""
    assert attribute in refused(f"def main():\n    g = (x for x in [1])\n    return g.{attribute}")
    name = "".join(f"chr({ord(c)}) + " for c in attribute) + "''"
    error = fails(f"def main():\n    g = (x for x in [1])\n    return getattr(g, {name})")
    assert error.reason == "error" and error.message.startswith("AttributeError") and "restricted" in error.message
    assert run(f"def main():\n    g = (x for x in [1])\n    return hasattr(g, {name})").result is False


def test_ghsa_wqc8_tracebacks_and_frames_are_unreachable_from_exceptions():
    """An exception's traceback leads to frames too: ``__traceback__`` is an underscore name, and no
    ``sys``/``inspect``/``traceback`` module can be imported to get one another way."""
    assert "__traceback__" in refused("def main():\n    try:\n        1 / 0\n    except Exception as e:\n"
                                      "        return e.__traceback__")
    error = fails("def main():\n    try:\n        1 / 0\n    except Exception as e:\n"
                  "        return getattr(e, '_' + '_traceback__')")
    assert error.message.startswith("AttributeError")
    for module in ("sys", "inspect", "traceback", "gc"):
        assert fails(f"def main():\n    import {module}").message.startswith("ImportError")
    assert run("def main():\n    try:\n        1 / 0\n    except Exception as e:\n"
               "        return [type_name(e), e.args]\ndef type_name(e):\n    return str(e)").result == [
        "division by zero", ["division by zero"]]


@pytest.mark.parametrize("source", [
    "async def helper():\n    return 1\ndef main():\n    return helper().cr_frame",
    "def main():\n    async def agen():\n        yield 1\n    return agen().ag_frame",
    "def main():\n    async def co():\n        await co()\n    return co",
    "def main():\n    async def co():\n        async for x in y:\n            pass\n    return co",
    "def main():\n    async def co():\n        async with y:\n            pass\n    return co",
])
def test_ghsa_wqc8_coroutines_and_async_generators_cannot_be_made(source):
    """RestrictedPython 8.5 added ``ag_frame``/``ag_code``/``ag_await`` to the forbidden names; here no
    coroutine or async generator can exist at all: every ``async`` construct is refused."""
    assert "not allowed" in refused(source)


# --------------------------------------------------------------------------------------------
# GHSA-xjw2-6jm9-rf67 (CVE-2023-41039): format strings


FORMAT_ROUTES = [
    # str.format / format_map on a str, unbound, through getattr, on a task's str subclass, in map()
    '"{0.__class__.__mro__}".format(1)',
    '"{x.__class__}".format(x=1)',
    '"{0.__class__}".format_map({0: 1})',
    'str.format("{0.__class__}", 1)',
    'str.format_map("{x.__class__}", {"x": 1})',
    'getattr("{0.__class__}", "format")(1)',
    'getattr(str, "format_map")("{x}", {"x": 1})',
    'Text("{0.__class__}").format(1)',
    'Text.format(Text("{0.__class__}"), 1)',
    'list(map(str.format, ["{0.__class__}"], [1]))',
    'functools.partial(str.format, "{0.__class__}")(1)',
    'functools.reduce(getattr, ["format"], "{0.__class__}")(1)',
    # a super proxy: the attribute guard sees a `super` object, the value is str.format bound to a str
    'super(Text, Text("{0.__class__}")).format(1)',
    'super(Text, Text("{x.__class__}")).format_map({"x": 1})',
    'getattr(super(Text, Text("{0.__class__}")), "format")(1)',
    'super(Text, Text).format("{0.__class__}", 1)',
    'Text("{0.__class__}").walk(1)',
    # collections.UserString: a str look-alike (not a str) whose format/format_map call self.data's
    'collections.UserString("{0.__class__}").format(1)',
    'collections.UserString("{x.__class__}").format_map({"x": 1})',
    'collections.UserString.format(collections.UserString("{0.__class__}"), 1)',
    'Look("{0.__class__}").format(1)',
    'Look("{0.__class__}").walk(1)',
    'getattr(collections.UserString("{0}"), "format_map")({0: 1})',
    # whatever object stores a bound format method under whatever name
    'holder.fmt(1)',
    'getattr(holder, "fmt")(1)',
    'holder.unbound("{0.__class__}", 1)',
    'holder.formatter_class',
]
FORMAT_SETUP = """
import collections, functools
class Text(str):
    def walk(self, obj):
        return super().format(obj)
class Look(collections.UserString):
    def walk(self, obj):
        return super().format(obj)
def main(holder):
    return {expression}
"""


@pytest.mark.parametrize("expression", FORMAT_ROUTES)
def test_ghsa_xjw2_str_format_and_format_map_are_unavailable_however_reached(expression):
    """Every route to ``str.format``/``format_map`` -- and to what forwards to them or reimplements them
    (``UserString``, ``string.Formatter``) -- is refused by what the value *is*, not by the name or the
    object it came from: a ``super`` proxy, a str look-alike, a host object holding the bound method."""
    holder = types.SimpleNamespace(fmt="{0.__class__}".format, unbound=str.format, formatter_class=string.Formatter)
    error = fails(FORMAT_SETUP.format(expression=expression), holder)
    assert error.message.startswith("NotImplementedError") and "not safe" in error.message, error.message


@pytest.mark.parametrize("expression", ['"".format.__self__', 'Text("x").__class__', '"{0}".format.__call__'])
def test_ghsa_xjw2_the_bound_methods_own_attributes_are_underscore_names(expression):
    assert refused(FORMAT_SETUP.format(expression=expression))


@pytest.mark.parametrize("template", [
    "collections.UserString('{0.__init__.__globals__[_sys].modules[os].environ[TASKMAN_PROBE]}').format("
    "collections.UserString)",
    "collections.UserString('{x.__init__.__globals__[_sys].modules[os].environ[TASKMAN_PROBE]}').format_map("
    "{'x': collections.UserString})",
    "super(Text, Text('{0.__init__.__globals__[_sys].modules[os].environ[TASKMAN_PROBE]}')).format("
    "collections.UserString)",
])
def test_ghsa_xjw2_review_proofs_of_concept_read_no_host_environment(template, monkeypatch):
    """The security review's proofs of concept: before the fix each returned the worker's environment
    variable (a format field walks ``__init__.__globals__`` of a standard library function to ``os``)."""
    monkeypatch.setenv("TASKMAN_PROBE", "secret-value")
    error = fails(FORMAT_SETUP.format(expression=template), None)
    assert error.message.startswith("NotImplementedError")
    assert "secret-value" not in error.message + error.traceback + error.output


def test_ghsa_xjw2_user_string_and_str_subclasses_still_work_without_format():
    assert run(
        """
        import collections
        class Text(str):
            def shout(self):
                return super().upper() + "!"
        class Look(collections.UserString):
            def format(self, *args):
                return "own " + self.data
        def main():
            return [Text("hi").shout(), collections.UserString("ab").upper().data, Look("x").format(1),
                    "%s-%d" % ("a", 1), f"{1 + 1:>3}"]
        """
    ).result == ["HI!", "AB", "own x", "a-1", "  2"]


def test_ghsa_xjw2_string_template_looks_up_keys_never_attributes():
    """``string.Template`` stays: ``substitute`` only ever does ``mapping[name]`` -- with a pattern or
    idpattern of the task's own that lets dots and underscores into names, the whole dotted text is one
    key, never an attribute walk. ``Template.pattern`` is a compiled, immutable ``re.Pattern``, and the
    shared class cannot be changed."""
    result = run(
        """
        import string
        class Dotted(string.Template):
            idpattern = r'[_a-z][_a-z0-9.]*'
        class Angled(string.Template):
            pattern = r'<(?P<named>[^>]*)>|<(?P<braced>[^>]*)>|(?P<escaped><<)|(?P<invalid><)'
        def main():
            out = [Dotted('$x.y').substitute({'x.y': 1}), Angled('<a.__class__>').substitute({'a.__class__': 2})]
            for template in (Dotted('$x.__class__'), Angled('<x.__class__.__mro__>')):
                try:
                    template.substitute(x=1)
                except KeyError as exc:
                    out.append(exc.args)
            out.append(Dotted('$x.__class__').safe_substitute(x=1))
            out.append(string.Template.pattern.pattern == Dotted.pattern.pattern)
            return out
        """
    ).result
    assert result == ["1", "2", ["x.__class__"], ["x.__class__.__mro__"], "$x.__class__", False]
    for statement in ("string.Template.pattern = None", "string.Template.delimiter = '#'"):
        error = fails(f"import string\ndef main():\n    {statement}")
        assert error.message.startswith("TypeError")
    assert string.Template("$a").substitute(a=1) == "1"


def test_ghsa_xjw2_format_builtin_and_fstrings_take_only_format_specs():
    """``format(value, spec)`` and f-strings remain: a format spec has no field names, so no traversal."""
    error = fails('def main():\n    return format(1, "{0.__class__}")')
    assert error.message.startswith("ValueError")
    assert "__class__" in refused('def main():\n    x = 1\n    return f"{x.__class__}"')
    assert run('def main(n):\n    return [f"{n!r:>{n}}", format(3.14159, ".2f"), "%(a)s" % {"a": n}]', 4).result == [
        "   4", "3.14", "4"]


def test_ghsa_xjw2_string_formatter_is_not_handed_out():
    assert fails("import string\ndef main():\n    return string.Formatter").message.startswith("AttributeError")
    assert fails("from string import Formatter\ndef main():\n    return Formatter").message.startswith(
        ("AttributeError", "ImportError"))
    assert run("import string\ndef main():\n    return string.Template('$who!').substitute(who='x')").result == "x!"


# --------------------------------------------------------------------------------------------
# GHSA-5rfv-66g4-jr8h (CVE-2024-47532): AttributeError.obj and the string module


@pytest.mark.parametrize("spelling", ["exc.obj", "getattr(exc, 'obj')", "getattr(exc, 'obj', None)",
                                      "super(Mine, Mine('x')).obj"])
@pytest.mark.parametrize("target, name", [("json", "'decoder'"), ("string", "'Formatter'"), ("gen", "'gi_frame'"),
                                          ("collections.UserString('x')", "'nope'"), ("Mine()", "'nope'")])
def test_ghsa_5rfv_attribute_error_obj_is_never_handed_out(spelling, target, name):
    """``AttributeError.obj`` is the object a failed lookup was made on -- when the lookup was C code's
    or the standard library's, whatever an unguarded walk had reached. It is refused on every
    ``AttributeError`` (the task's own subclasses included), however it is asked for; ``name`` stays."""
    error = fails(
        f"""
        import collections, json, string
        class Mine(AttributeError):
            pass
        def main():
            gen = (x for x in [1])
            try:
                getattr({target}, {name})
            except AttributeError as exc:
                assert exc.name in (None, {name})
                assert not hasattr(exc, 'obj')
                if {target!r} == "Mine()":
                    exc = Mine('mine')
                return {spelling}
        """
    )
    assert error.message.startswith("AttributeError: AttributeError.obj is not available"), error.message


def test_ghsa_5rfv_the_string_module_is_a_proxy_without_internals():
    assert "_re" in refused("import string\ndef main():\n    return string._re")
    for attribute in ("Formatter", "_sentinel_dict", "_ChainMap"):
        error = fails(f"import string\ndef main():\n    return getattr(string, {attribute!r})")
        assert error.message.startswith("AttributeError")
    assert run("import string\ndef main():\n    return string.capwords('a b')").result == "A B"


def test_interpreter_internals_are_refused_by_what_they_are_whatever_they_are_called():
    """Frames, tracebacks and code objects lead to every global of the host. Their usual names
    (``gi_frame``, ``tb_frame``, ``f_back`` ...) are refused by name; any other object that holds one
    under a public name -- a host object handed to the task -- is refused by the value's type."""
    def host_function():
        return 1

    try:
        raise ZeroDivisionError("a host traceback")
    except ZeroDivisionError as exc:
        trace = exc.__traceback__
    holder = types.SimpleNamespace(frame=sys._getframe(), code=host_function.__code__, trace=trace,
                                   module=json, fine=[1])
    for name in ("frame", "code", "trace", "module"):
        for spelling in (f"holder.{name}", f"getattr(holder, {name!r})", f"getattr(holder, {name!r}, None)"):
            error = fails(f"def main(holder):\n    return {spelling}", holder)
            assert error.message.startswith("AttributeError"), (spelling, error.message)
        assert run(f"def main(holder):\n    return hasattr(holder, {name!r})", holder).result is False
    assert run("def main(holder):\n    return holder.fine", holder).result == [1]


@pytest.mark.parametrize("name", ["__traceback__", "__context__", "__cause__", "__self__", "__globals__",
                                  "__func__", "__closure__", "__code__", "__dict__", "__reduce_ex__"])
def test_exception_and_method_internals_are_refused_by_name_in_every_spelling(name):
    source = ("def main():\n    try:\n        {}['k']\n    except KeyError as exc:\n        "
              "raise ValueError('x') from exc\n")
    chained = f"def main():\n    try:\n        int('x')\n    except ValueError as exc:\n        return exc.{name}"
    assert refused(chained) and refused(f"def main():\n    return ''.upper.{name}")
    computed = "'_' + '_' + " + repr(name[2:])
    for target in ("exc", "''.upper", "main", "len"):
        error = fails(f"def main():\n    try:\n        int('x')\n    except ValueError as exc:\n"
                      f"        return getattr({target}, {computed})")
        assert error.message.startswith("AttributeError"), (target, error.message)
    assert fails(source).message == "ValueError: x"


def test_exception_payloads_carry_only_what_the_code_supplied():
    """``KeyError.args`` from a host dict (or ``string.Template``) is the key the task asked for,
    ``StopIteration.value`` the task's own generator's value, ``NameError.name`` a plain string; an
    ``ImportError`` carries neither ``name`` nor ``path`` of anything on the host."""
    result = run(
        """
        import string, collections
        def gen():
            return 7
            yield
        def main():
            out = []
            for attempt in (lambda: {'a': 1}['b'], lambda: string.Template('$who').substitute({}),
                            lambda: collections.ChainMap({})['c']):
                try:
                    attempt()
                except KeyError as exc:
                    out.append(exc.args)
            try:
                next(gen())
            except StopIteration as exc:
                out.append(exc.value)
            try:
                undefined_name
            except NameError as exc:
                out.append(exc.name)
            try:
                import os
            except ImportError as exc:
                out.append([exc.name, exc.path])
            try:
                from json import decoder
            except ImportError as exc:
                out.append([exc.name, exc.path])
            return out
        """
    ).result
    assert result == [["b"], ["who"], ["c"], 7, "undefined_name", [None, None], [None, None]]


def test_a_deployment_allowing_operator_still_gets_no_attribute_fetcher():
    """``operator`` is no default import and the settings warn against it; if a deployment allows it
    anyway, ``attrgetter``/``methodcaller`` (which fetch attributes in C, past the guards) are absent."""
    limits = Limits(allowed_imports=(*sandbox.DEFAULT_IMPORTS, "operator"))
    for name in ("attrgetter", "methodcaller"):
        error = fails(f"import operator\ndef main():\n    return operator.{name}('format')", limits=limits)
        assert error.message.startswith("AttributeError"), error.message
    assert run("import operator\ndef main():\n    return operator.itemgetter(1)([5, 6])", limits=limits).result == 6


# --------------------------------------------------------------------------------------------
# GHSA-gmj9-h825-chq2 (CVE-2025-22153): try/except* type confusion


def test_ghsa_gmj9_try_except_star_is_refused():
    """The CPython bug behind the advisory is present in 3.11, the runtime here; only the refusal of
    the syntax stands between it and the task."""
    message = refused(
        """
        def main():
            try:
                raise ValueError(1)
            except* ValueError as group:
                return group
        """
    )
    assert "TryStar" in message and "not allowed" in message


@pytest.mark.parametrize("name", ["ExceptionGroup", "BaseExceptionGroup"])
def test_ghsa_gmj9_exception_groups_are_not_builtins(name):
    assert fails(f"def main():\n    return {name}").message == f"NameError: name '{name}' is not defined"


# --------------------------------------------------------------------------------------------
# GHSA-ffg3-p8fm-mjx2 (CVE-2026-55830): rebinding a guard hook


BINDINGS = {
    "positional-only parameter": "def main():\n    def f({name}, /):\n        return 1\n    return f(2)",
    "positional-only lambda": "def main():\n    f = lambda {name}, /: 1\n    return f(2)",
    "parameter": "def main():\n    def f({name}):\n        return 1\n    return f(2)",
    "keyword-only parameter": "def main():\n    def f(*, {name}=1):\n        return 1\n    return f()",
    "star parameter": "def main():\n    def f(*{name}):\n        return 1\n    return f()",
    "double-star parameter": "def main():\n    def f(**{name}):\n        return 1\n    return f()",
    "function's own parameter": "def main({name}=1):\n    return 1",
    "assignment": "def main():\n    {name} = 1\n    return 1",
    "module-level assignment": "{name} = 1\ndef main():\n    return 1",
    "walrus": "def main():\n    if ({name} := 1):\n        return 1",
    "for target": "def main():\n    for {name} in [1]:\n        pass",
    "comprehension target": "def main():\n    return [1 for {name} in [1]]",
    "with target": "def main(cm):\n    with cm as {name}:\n        pass",
    "except target": "def main():\n    try:\n        pass\n    except Exception as {name}:\n        pass",
    "import alias": "import math as {name}\ndef main():\n    return 1",
    "from-import alias": "from math import pi as {name}\ndef main():\n    return 1",
    "class name": "class {name}:\n    pass\ndef main():\n    return 1",
    "function name": "def {name}():\n    return 1\ndef main():\n    return 1",
    "global declaration": "def main():\n    global {name}\n    {name} = 1",
    "deletion": "def main():\n    del {name}",
}


@pytest.mark.parametrize("binding", sorted(BINDINGS))
def test_ghsa_ffg3_no_binding_form_can_shadow_a_guard_hook(binding):
    """The advisory used a positional-only parameter; every other way to bind a name is tried too,
    for every hook the run's globals hold."""
    for name in GUARD_NAMES:
        source = BINDINGS[binding].format(name=name)
        with pytest.raises(InvalidSpec) as caught:
            check_source(source, "main")
        assert caught.value.field == "function_code", source
        assert name in caught.value.message, (source, caught.value.message)


def test_ghsa_ffg3_the_advisory_exploit_cannot_poison_a_shared_module():
    """The exploit: shadow ``_write_`` in a nested function and overwrite ``json.dumps`` for every later
    user of the module. Refused at check time; and with the hooks intact, the write fails at run time
    and neither the host's ``json`` nor the next run sees a change."""
    assert "_write_" in refused(
        """
        import json
        def main():
            def poison(_write_, /):
                json.dumps = lambda *a, **k: "pwned"
            poison(lambda obj: obj)
            return json.dumps([1])
        """
    )
    error = fails("import json\ndef main():\n    json.dumps = lambda *a, **k: 'pwned'\n    return 1")
    assert error.message.startswith("TypeError")
    error = fails("import json\ndef main():\n    json.JSONEncoder.encode = lambda *a: 'pwned'\n    return 1")
    assert error.message.startswith("TypeError")
    assert json.dumps([1]) == "[1]"
    assert run("import json\ndef main():\n    return json.dumps([1])").result == "[1]"


# --------------------------------------------------------------------------------------------
# GHSA-hp3v-5vw7-fx9w (CVE-2026-76825): string.Formatter field resolution, and helpers that reopen it

ATTRIBUTE_BY_NAME = {
    "operator.attrgetter", "operator.methodcaller", "string.Formatter", "functools.wraps",
    "functools.update_wrapper", "functools.singledispatch", "functools.singledispatchmethod",
}


def test_ghsa_hp3v_formatter_field_resolution_is_unreachable():
    for source in ("import string\ndef main():\n    return string.Formatter().get_field('a.b', [], {})",
                   "import string\ndef main():\n    return string.Formatter().vformat('{0.real}', [1], {})"):
        assert fails(source).message.startswith("AttributeError")


@pytest.mark.parametrize("module", ["operator", "inspect", "pydoc", "typing", "types", "builtins", "importlib",
                                    "string.templatelib", "collections.abc"])
def test_ghsa_hp3v_modules_that_fetch_attributes_by_name_cannot_be_imported(module):
    """The follow-up to the advisory (RestrictedPython PR #330): ``operator.attrgetter``/``methodcaller``
    reopen the escape wherever an import policy lets ``operator`` in. Ours does not, nor any module
    whose whole point is reflection."""
    source = f"import {module}\ndef main():\n    return 1"
    try:
        check_source(source, "main")
    except InvalidSpec as exc:  # some names RestrictedPython reserves outright ("builtins")
        assert module in exc.message
        return
    assert fails(source).message.startswith("ImportError")


def test_ghsa_hp3v_no_allowed_module_hands_out_an_attribute_by_name_helper_or_shared_mutable_state():
    """Walk what every default module proxy exposes, and one level into each exposed class: no
    module object, no helper that reads attributes by a caller-chosen name, no mutable container
    (one run could leave something there for the next), and no format engine but the two methods of
    ``UserString``, which the getattr guard refuses when they are fetched."""
    mutable = (list, dict, set, bytearray, collections.deque)
    format_engines: set[str] = set()
    for module in sandbox.DEFAULT_IMPORTS:
        for name, value in sandbox._module_attrs(module).items():
            where = f"{module}.{name}"
            assert not isinstance(value, (types.ModuleType, *mutable)), where
            assert not sandbox._is_format_engine(value), where
            qualified = f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}"
            assert where not in ATTRIBUTE_BY_NAME and qualified not in ATTRIBUTE_BY_NAME, where
            if isinstance(value, type):
                for attribute in dir(value):
                    if attribute.startswith("_"):
                        continue
                    try:
                        member = getattr(value, attribute)
                    except AttributeError:
                        continue
                    assert not isinstance(member, (types.ModuleType, *mutable)), f"{where}.{attribute}"
                    if sandbox._is_format_engine(member):
                        format_engines.add(f"{where}.{attribute}")
    # reachable as class attributes, refused by guarded_getattr when fetched (what the tests above show)
    assert format_engines == {"collections.UserString.format", "collections.UserString.format_map"}


# --------------------------------------------------------------------------------------------
# RestrictedPython 7.2 (PR #282): a str subclass as attribute name


@pytest.mark.parametrize("call", ["getattr(A, name)", "hasattr(A, name)", "setattr(A, name, shout)",
                                  "delattr(A, name)", "setattr(A(), name, 1)"])
def test_rp72_a_str_subclass_cannot_smuggle_a_dunder_name(call):
    """A ``str`` subclass whose ``startswith`` always says no would pass an ``isinstance``-based check;
    through ``setattr`` it gave a task's class a ``__repr__`` (or a ``__del__`` that runs outside every
    limit). Names must be plain ``str``."""
    error = fails(
        f"""
        class Sneaky(str):
            def startswith(self, prefix):
                return False

        class A:
            pass

        def shout(self):
            return "pwned"

        def main():
            name = Sneaky("__repr__")
            {call}
            return repr(A())
        """
    )
    assert error.message.startswith("TypeError"), error.message


# --------------------------------------------------------------------------------------------
# RestrictedPython 9.0 (issue #335): builtins that iterate in C bypass _getiter_


@pytest.mark.parametrize("builtin", ["list", "tuple", "sorted", "set", "frozenset", "dict", "zip", "enumerate",
                                     "reversed", "map", "filter", "sum", "min", "max", "any", "all", "bytes", "iter"])
def test_rp90_c_level_iteration_reaches_nothing_the_guards_hide(builtin):
    """RestrictedPython 9.0 removed ``sorted``, ``tuple``, ``zip`` ... from its safe builtins because
    they iterate without calling ``_getiter_``. Taskman provides them on purpose: its ``_getiter_`` is
    plain ``iter`` and protects nothing, the guards are on names and proxies. What is worth hiding --
    a module behind its proxy -- cannot be enumerated by any of them."""
    assert sandbox._make_globals(Limits(), sandbox._OutputSink(0, None))["_getiter_"] is iter
    call = {"map": "map(str, json)", "filter": "filter(None, json)", "zip": "zip(json)",
            "enumerate": "enumerate(json)"}.get(builtin, f"{builtin}(json)")
    error = fails(f"import json\ndef main():\n    return list({call})")
    assert error.message.startswith("TypeError")


# --------------------------------------------------------------------------------------------
# RestrictedPython 8.4: annotations; 5.1: the walrus operator


def test_rp84_annotations_are_never_evaluated():
    """Function annotations are dropped by the compile step: code placed there never runs, guarded or not."""
    execution = run(
        """
        def main(x: print("annotation ran") = 1) -> getattr(1, "__class__"):
            return x
        """
    )
    assert execution.result == 1 and execution.output == ""
    assert "AnnAssign" in refused("def main():\n    y: int = 1\n    return y")
    assert fails("from __future__ import annotations\ndef main():\n    return 1").message.startswith("ImportError")


def test_rp51_walrus_targets_are_checked_and_ordinary_walrus_works():
    assert "_x" in refused("def main():\n    return (_x := 1)")
    assert run("def main():\n    return [y for x in range(4) if (y := x * x) > 2]").result == [4, 9]


# --------------------------------------------------------------------------------------------
# Taskman's own additions to the list


@pytest.mark.parametrize("base", ["Exception", "BaseException"])
@pytest.mark.parametrize("name", ["SoftTimeLimitExceeded", "TimeLimitExceeded"])
def test_a_task_cannot_fake_the_hosts_time_limit(name, base):
    """The host's time limit passes through the sandbox untouched (so the worker records a timeout).
    A task's own class of that name must not: it would fake a timeout, and as a ``BaseException`` it
    would get past the runner into the pool process."""
    error = fails(f"class {name}({base}):\n    pass\ndef main():\n    raise {name}('fake')")
    assert error.reason == "error" and error.message == f"{name}: fake"


def test_a_generator_finalizer_left_in_a_cycle_runs_before_the_run_ends():
    """A suspended generator in a reference cycle runs its ``finally`` when the collector finds it --
    left to chance, that is between runs, outside every limit. It runs before ``execute`` returns."""
    seen: list[str] = []
    run(
        """
        def main(report):
            def gen(report=report):
                try:
                    yield 1
                finally:
                    report("finalized")
            g = gen()
            next(g)
            cycle = [g]
            cycle.append(cycle)
            return "done"
        """,
        seen.append,
    )
    assert seen == ["finalized"]


def test_an_endless_loop_in_a_leftover_finalizer_is_stopped_by_the_run_time_limit():
    from billiard.exceptions import SoftTimeLimitExceeded

    def on_alarm(signum, frame):
        raise SoftTimeLimitExceeded()

    source = """
    def main():
        def gen():
            try:
                yield 1
            finally:
                n = 0
                while n < 30_000_000:  # seconds of work (an endless loop would hang a broken build)
                    n = n + 1
        g = gen()
        next(g)
        cycle = [g]
        cycle.append(cycle)
        return "returned"
    """
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        with pytest.raises(SoftTimeLimitExceeded):
            run(source)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("expression", ['"-" * 100_000 + "1"', '"1+" * 50_000 + "1"', '"a." * 30_000 + "b"',
                                        '"not " * 50_000 + "x"', '"x if y else " * 20_000 + "z"',
                                        '"[" * 5_000 + "]" * 5_000'])
def test_pathologically_nested_code_is_refused_not_a_crash(expression):
    """The parser and the restricting transformer recurse per nesting level: such code must be a
    refusal naming ``function_code``, never a RecursionError or MemoryError escaping validation."""
    source = "def main():\n    return " + eval(expression)
    with pytest.raises(InvalidSpec) as caught:
        check_source(source, "main")
    assert caught.value.field == "function_code"
    assert "nested too deeply" in caught.value.message or "nested parentheses" in caught.value.message


def test_a_huge_error_message_is_cut_before_it_is_stored():
    error = fails("def main():\n    raise ValueError('x' * 1_000_000)")
    assert len(error.message) < sandbox.MAX_MESSAGE_CHARS + 100
    assert error.message.startswith("ValueError: xxx") and "characters of the message left out" in error.message
    assert len(error.traceback) < sandbox.MAX_TRACEBACK_CHARS + 100


def test_recursion_through_c_frames_cannot_overflow_the_c_stack():
    """Python counts frames, the C stack holds bytes: recursing through ``sorted(key=...)`` overflows an
    8 MiB stack at ~3,500 levels (SIGSEGV, the worker process dies). However high the recursion limit
    asked for, the sandbox lowers it to what the stack holds. In a subprocess, so a crash cannot take
    the test session with it."""
    code = textwrap.dedent(
        """
        import resource
        from core.sandbox import Limits, SandboxError, execute, stack_safe_recursion_limit
        resource.setrlimit(resource.RLIMIT_STACK, (8 * 1024 * 1024, resource.getrlimit(resource.RLIMIT_STACK)[1]))
        source = ("def down(n):\\n    return 0 if n <= 0 else sorted([n - 1], key=down)[0] + 1\\n"
                  "def main(n):\\n    return down(n)")
        try:
            execute(source, "main", [100_000], None, Limits(recursion_limit=100_000, memory_limit_mb=0))
        except SandboxError as exc:
            print(exc.reason, stack_safe_recursion_limit(100_000))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=sandbox.__file__.rsplit("/core/", 1)[0])
    assert done.returncode == 0, done.stderr[-2000:]
    reason, depth = done.stdout.split()
    assert reason == "recursion"
    assert int(depth) == (8 * 1024 * 1024 - 1024 * 1024) // sandbox.STACK_BYTES_PER_CALL


def test_string_module_of_the_host_is_untouched():
    assert string.Formatter().format("{0}", 1) == "1"  # the refusals above changed nothing in the host


def test_abstract_base_class_registration_cannot_leak_into_later_runs():
    """``Fraction`` and ``UserList`` are ABCs: ``register`` on them -- or on a task's own subclass, whose
    registry the parent consults and then caches for good -- would make ``isinstance`` lie in the host
    and in every later run on the worker."""
    for target in ("fractions.Fraction", "Mine", "collections.UserDict"):
        error = fails(f"import collections, fractions\nclass Mine(collections.UserList):\n    pass\n"
                      f"def main():\n    {target}.register(str)")
        assert error.message.startswith("AttributeError") and "register" in error.message
    import fractions

    assert not isinstance("x", fractions.Fraction) and not isinstance("x", collections.UserList)
    assert run("import fractions\ndef main():\n    return isinstance(fractions.Fraction(1, 2), "
               "fractions.Fraction)").result is True
