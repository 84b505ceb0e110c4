"""Unit tests of the code-task sandbox: what user code can do, what it cannot, and the limits."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import sandbox
from core.errors import InvalidSpec
from core.sandbox import DEFAULT_IMPORTS, Execution, Limits, SandboxError, check_source, compile_source, execute

try:
    import resource
except ImportError:  # pragma: no cover
    resource = None


def run(source: str, function_name: str = "main", *args, limits: Limits = Limits(), on_output=None, **kwargs):
    """Execute dedented ``source`` and return the result."""
    return execute(textwrap.dedent(source), function_name, list(args), kwargs, limits, on_output=on_output)


def fail(source: str, function_name: str = "main", *args, limits: Limits = Limits(), **kwargs) -> SandboxError:
    """Execute dedented ``source``, which must fail, and return the SandboxError."""
    with pytest.raises(SandboxError) as caught:
        run(source, function_name, *args, limits=limits, **kwargs)
    return caught.value


# --------------------------------------------------------------------------------------------
# What ordinary code can do


def test_seed_example_calculate():
    execution = execute("def calculate():\n    return 1 + 2 * 3", "calculate")
    assert execution == Execution(result=7, output="")


def test_seed_example_hello_world():
    assert execute("def hello_world():\n    return 'Hello World!'", "hello_world").result == "Hello World!"


def test_comprehensions_and_unpacking():
    result = run(
        """
        def main():
            squares = [n * n for n in range(6) if n % 2 == 0]
            table = {k: v for k, v in zip("abc", range(3))}
            unique = {c for c in "hello"}
            total = sum(x for x in range(10))
            first, *rest = [1, 2, 3]
            (a, b), c = (4, 5), 6
            pairs = [(i, j) for i, j in enumerate("xy")]
            return [squares, table, sorted(unique), total, first, rest, a + b + c, pairs]
        """
    ).result
    assert result == [[0, 4, 16], {"a": 0, "b": 1, "c": 2}, ["e", "h", "l", "o"], 45, 1, [2, 3], 15,
                      [[0, "x"], [1, "y"]]]


def test_classes_with_attributes_inheritance_and_super():
    result = run(
        """
        class Account:
            fee = 1
            def __init__(self, owner, balance=0):
                self.owner = owner
                self.balance = balance
            def deposit(self, amount):
                self.balance += amount
                return self
            def describe(self):
                return f"{self.owner}: {self.balance}"

        class Savings(Account):
            def describe(self):
                return super().describe() + " (savings)"

        def main():
            acct = Savings("ann", 10).deposit(5)
            acct.note = "vip"
            Account.fee = 2
            return [acct.describe(), acct.note, Account.fee, isinstance(acct, Account)]
        """
    ).result
    assert result == ["ann: 15 (savings)", "vip", 2, True]


def test_user_exception_classes_and_try_except_finally():
    result = run(
        """
        class Invalid(ValueError):
            pass

        def main():
            log = []
            try:
                raise Invalid("bad input")
            except ValueError as exc:
                log.append(f"caught {exc}")
            finally:
                log.append("cleanup")
            try:
                {}["missing"]
            except KeyError:
                log.append("key")
            try:
                1 / 0
            except (TypeError, ZeroDivisionError) as exc:
                log.append(type_name(exc))
            return log

        def type_name(exc):
            return "zero" if isinstance(exc, ZeroDivisionError) else "other"
        """
    ).result
    assert result == ["caught bad input", "cleanup", "key", "zero"]


def test_fstrings_sorted_with_key_lambdas_and_builtins():
    result = run(
        """
        def main():
            people = [{"name": "bo", "age": 31}, {"name": "al", "age": 25}, {"name": "cy", "age": 40}]
            ordered = sorted(people, key=lambda p: p["age"], reverse=True)
            names = [p["name"] for p in ordered]
            pi = 3.14159
            return [names, f"{pi:.2f}|{'x':>3}|{42!r}", max(3, 9), min([4, 2]), abs(-2), round(2.675, 1),
                    divmod(7, 2), pow(2, 10), hex(255), bin(5), oct(8), chr(65), ord("A"), list(reversed("ab")),
                    any([0, 1]), all([1, 1]), list(map(str, [1, 2])), list(filter(None, [0, 1, 2])),
                    hasattr("x", "upper"), getattr("x", "nope", "default"), callable(len), format(1234.5, ",.1f"),
                    bytes([104, 105]).decode(), frozenset([1]) == {1}, tuple([1, 2]), next(iter([9]))]
        """
    ).result
    assert result == [["cy", "bo", "al"], "3.14|  x|42", 9, 2, 2, 2.7, [3, 1], 1024, "0xff", "0b101", "0o10", "A",
                      65, ["b", "a"], True, True, ["1", "2"], [1, 2], True, "default", True, "1,234.5", "hi", True,
                      [1, 2], 9]


def test_augmented_assignment_of_names_items_and_attributes():
    result = run(
        """
        class Box:
            def __init__(self):
                self.count = 0

        def main(words):
            counts = {}
            for word in words:
                counts[word] = counts.get(word, 0) + 1
            totals = {"n": 1}
            totals["n"] += 10
            totals["n"] *= 2
            box = Box()
            box.count += 3
            n = 5
            n -= 2
            n **= 2
            items = [1]
            items += [2]
            items[0:1] += [0]
            return [counts, totals, box.count, n, items]
        """,
        "main",
        ["a", "b", "a"],
    ).result
    assert result == [{"a": 2, "b": 1}, {"n": 22}, 3, 9, [1, 0, 2]]


def test_allowed_imports_including_from_imports():
    result = run(
        """
        import json
        import math
        import datetime
        from collections import Counter, defaultdict
        from itertools import chain
        from functools import reduce
        from decimal import Decimal
        from fractions import Fraction
        import re
        import statistics
        import string
        import random

        def main():
            groups = defaultdict(list)
            groups["x"].append(1)
            counts = Counter("banana")
            counts["z"] += 1
            return [
                math.sqrt(16), math.pi > 3, json.loads(json.dumps({"a": [1, 2]})),
                datetime.timedelta(hours=1).total_seconds(), dict(groups), counts.most_common(1),
                list(chain([1], [2])), reduce(lambda a, b: a * b, [1, 2, 3, 4]),
                str(Decimal("0.1") + Decimal("0.2")), str(Fraction(1, 3) + Fraction(1, 6)),
                re.compile(r"\\d+").findall("a1 b22 c333"), statistics.median([3, 1, 2]),
                string.ascii_uppercase[:3], 1 <= random.randint(1, 6) <= 6,
            ]
        """
    ).result
    assert result == [4.0, True, {"a": [1, 2]}, 3600.0, {"x": [1]}, [["a", 3]], [1, 2], 24, "0.3", "1/2",
                      ["1", "22", "333"], 2, "ABC", True]


def test_datetime_strptime_and_strftime_work():
    result = run(
        """
        import datetime
        def main(text):
            moment = datetime.datetime.strptime(text, "%Y-%m-%d %H:%M")
            later = moment + datetime.timedelta(days=1)
            return [later.strftime("%A %d %B %Y"), later.isoformat(), datetime.timezone.utc.tzname(None)]
        """,
        "main",
        "2024-02-28 12:30",
    ).result
    assert result == ["Thursday 29 February 2024", "2024-02-29T12:30:00", "UTC"]


def test_args_and_kwargs_are_passed():
    source = "def greet(name, punctuation='.', *rest, **extra):\n    return [name + punctuation, list(rest), extra]"
    result = execute(source, "greet", ["Ann", "!", 1, 2], {"mood": "happy"}).result
    assert result == ["Ann!", [1, 2], {"mood": "happy"}]
    assert execute(source, "greet", None, {"name": "Bo"}).result == ["Bo.", [], {}]


def test_print_output_is_captured_and_streamed_line_by_line():
    lines: list[str] = []
    execution = run(
        """
        def main(seen):
            print("hello", "world")
            print("a", "b", sep="-")
            print("no newline", end="")
            print(" ... done")
            before = seen()
            print("tail", end="")
            return before
        """,
        "main",
        lambda: len(lines),
        on_output=lines.append,
    )
    assert execution.output == "hello world\na-b\nno newline ... done\ntail"
    assert execution.result == 3, "lines must reach on_output while the code is still running"
    assert lines == ["hello world", "a-b", "no newline ... done", "tail"]


def test_print_at_module_level_and_in_several_functions_share_one_output():
    execution = run(
        """
        print("loading")
        def helper():
            print("helper")
        def main():
            helper()
            print("main")
            return printed
        """
    )
    assert execution.output == "loading\nhelper\nmain\n"
    assert execution.result == "main\n", "'printed' is what this function printed"


def test_broken_on_output_callback_does_not_fail_the_run():
    def explode(line):
        raise ConnectionError("log stream down")

    execution = run("def main():\n    print('one')\n    print('two')\n    return 1", on_output=explode)
    assert (execution.result, execution.output) == (1, "one\ntwo\n")


def test_results_are_made_json_safe():
    result = run(
        """
        import datetime
        import decimal
        class Thing:
            pass
        def main():
            return {
                "tuple": (1, (2, 3)),
                "set": {3, 1, 2},
                "mixed_set": {1, "a"},
                1: "int key",
                None: "none key",
                "decimal": decimal.Decimal("1.5"),
                "date": datetime.date(2024, 1, 2),
                "nan": float("nan"),
                "thing": Thing(),
                "gen": (x for x in []),
            }
        """
    ).result
    json.dumps(result, allow_nan=False)  # plain JSON data
    assert result["tuple"] == [1, [2, 3]]
    assert result["set"] == [1, 2, 3]
    assert sorted(result["mixed_set"], key=str) == [1, "a"]
    assert result["1"] == "int key" and result["None"] == "none key"
    assert result["decimal"] == "Decimal('1.5')"
    assert result["date"] == "datetime.date(2024, 1, 2)"
    assert result["nan"] == "nan"
    assert result["thing"].startswith("<task.Thing object at ")
    assert result["gen"].startswith("<generator object")


def test_cyclic_results_do_not_hang():
    result = run("def main():\n    a = [1]\n    a.append(a)\n    return a").result
    assert result == [1, "[...]"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=40, deadline=None)
@given(json_values)
def test_json_values_round_trip_unchanged(value):
    assert execute("def echo(x):\n    return x", "echo", [value]).result == value


def test_decimal_context_is_per_run():
    source = """
    import decimal
    def main(prec):
        if prec:
            decimal.getcontext().prec = prec
        return str(decimal.Decimal(1) / decimal.Decimal(7))
    """
    assert run(source, "main", 3).result == "0.143"
    assert run(source, "main", 0).result == "0.1428571428571428571428571429"


def test_random_seeding_does_not_leak_between_runs_or_into_the_host():
    host_state = random.getstate()
    seeded = run("import random\ndef main():\n    random.seed(1)\n    return [random.random() for _ in range(3)]")
    assert seeded.result[0] == random.Random(1).random(), "seeding inside a run works"
    run("import random\ndef main():\n    random.seed(7)")
    follow_up = run("import random\ndef main():\n    return [random.random() for _ in range(3)]").result
    seed_7 = random.Random(7)
    assert follow_up != [seed_7.random() for _ in range(3)], "the next run does not continue a seeded generator"
    assert random.getstate() == host_state, "the host's global generator is untouched"


def test_each_run_gets_fresh_globals():
    source = """
    cache = []
    def main():
        cache.append(1)
        return len(cache)
    """
    assert [run(source).result for _ in range(3)] == [1, 1, 1]


def test_compiled_code_is_cached():
    source = "def calculate():\n    return 1"
    assert compile_source(source) is compile_source(source)


def test_a_cron_like_series_of_runs_compiles_once(monkeypatch):
    """Every fire of a cron task executes the same source: RestrictedPython compiles it the first time
    only (the cache is keyed by the source text, i.e. by its hash and equality); new code compiles anew."""
    calls: list[str] = []
    real = sandbox.compile_restricted_exec

    def counting(source, *args, **kwargs):
        calls.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(sandbox, "compile_restricted_exec", counting)
    sandbox.compile_source.cache_clear()
    source = f"import math\ndef tick(n):\n    return math.sqrt(n)  # {random.random()}"
    before = compile_source.cache_info()
    results = [execute(source, "tick", [n * n]).result for n in range(25)]
    assert results == [float(n) for n in range(25)]
    assert calls == [source], "compiled once for 25 runs"
    info = compile_source.cache_info()
    assert info.misses - before.misses == 1 and info.hits - before.hits >= 24
    edited = source.replace("sqrt(n)", "sqrt(n) + 1")
    assert execute(edited, "tick", [4]).result == 3.0
    assert calls == [source, edited], "an edit takes effect at the next run, compiled then"


def test_limits_for_a_task_take_its_own_values_within_the_bounds():
    from core.config import Settings
    from core.spec import TaskSpec

    settings = Settings(memory_limit_mb=512, max_memory_limit_mb=1024, output_cap=100, max_output_cap=1000,
                        result_cap=200, max_result_cap=2000, recursion_limit=50, max_recursion_limit=500)
    plain = TaskSpec(name="p", function_code="def f():\n    return 1", function_name="f")
    assert Limits.for_task(settings, plain) == Limits(output_cap=100, result_cap=200, memory_limit_mb=512,
                                                      recursion_limit=50)
    own = plain.model_copy(update={"memory_limit_mb": 64, "output_cap": 10, "result_cap": 20, "recursion_limit": 5})
    assert Limits.for_task(settings, own) == Limits(output_cap=10, result_cap=20, memory_limit_mb=64,
                                                    recursion_limit=5)
    # A bound lowered after the task was stored still holds at run time.
    greedy = plain.model_copy(update={"memory_limit_mb": 4096, "output_cap": 10**6, "recursion_limit": 900})
    limits = Limits.for_task(settings, greedy)
    assert (limits.memory_limit_mb, limits.output_cap, limits.recursion_limit) == (1024, 1000, 500)


# --------------------------------------------------------------------------------------------
# What code cannot do


@pytest.mark.parametrize("statement", ["import os", "import os.path", "from os import path", "import sys",
                                       "import subprocess", "import collections.abc", "from collections import abc"])
def test_imports_outside_the_allow_list_are_refused(statement):
    error = fail(f"def main():\n    {statement}\n    return 1")
    assert error.reason == "error"
    assert error.message.startswith("ImportError")
    assert "line 2" in error.traceback and statement in error.traceback


def test_dotted_imports_need_their_full_name_allowed():
    limits = Limits(allowed_imports=("collections.abc",))
    result = run("import collections.abc\ndef main():\n    return isinstance([], collections.abc.Sequence)",
                 limits=limits).result
    assert result is True
    error = fail("import collections.abc\ndef main():\n    return collections.Counter", limits=limits)
    assert "Counter" in error.message, "the parent package itself stays closed"


def test_allow_list_is_taken_from_limits():
    error = fail("import math\ndef main():\n    return 1", limits=Limits(allowed_imports=("json",)))
    assert "import of 'math' is not allowed" in error.message


@pytest.mark.parametrize(
    "expression",
    ["json.decoder", "json.scanner", "random.os", "re.enum", "datetime.sys", "statistics.math", "string.Formatter",
     "functools.wraps", "functools.update_wrapper", "functools.singledispatch", "decimal.DefaultContext"],
)
def test_module_proxies_expose_no_submodules_or_unsafe_helpers(expression):
    module = expression.split(".")[0]
    error = fail(f"import {module}\ndef main():\n    return {expression}")
    assert error.message.startswith("AttributeError")


def test_module_proxies_are_read_only():
    error = fail("import math\ndef main():\n    math.pi = 3\n    return math.pi")
    assert error.reason == "error" and "TypeError" in error.message
    assert run("import math\ndef main():\n    return math.pi").result == pytest.approx(3.14159, abs=1e-5)


@pytest.mark.parametrize(
    "source",
    [
        "def main():\n    return ().__class__.__bases__[0].__subclasses__()",
        "def main():\n    return main.__globals__",
        "def main():\n    _hidden = 1\n    return _hidden",
        "def main():\n    return __builtins__",
        "def main():\n    exec('1')",
        "def main():\n    eval('1')",
        "from math import *\ndef main():\n    return 1",
        "def main():\n    return f'{main.__code__}'",
    ],
)
def test_dunder_and_private_names_are_refused_at_check_time(source):
    with pytest.raises(InvalidSpec) as caught:
        check_source(source, "main")
    assert caught.value.field == "function_code"


@pytest.mark.parametrize("name", ["open", "eval", "exec", "compile", "globals", "locals", "vars", "dir", "type",
                                  "input", "memoryview", "help", "exit", "quit"])
def test_dangerous_builtins_are_absent(name):
    error = fail(f"def main():\n    f = {name}\n    return 1")
    assert error.message == f"NameError: name '{name}' is not defined"


def test_breakpoint_is_a_reserved_name():
    with pytest.raises(InvalidSpec, match="breakpoint"):
        check_source("def main():\n    breakpoint()", "main")


@pytest.mark.parametrize("name", ["__class__", "__subclasses__", "__globals__", "__dict__", "_private"])
def test_getattr_and_hasattr_refuse_underscore_names(name):
    error = fail(f"def main():\n    return getattr(1, {name!r})")
    assert error.message.startswith("AttributeError") and "starts with" in error.message
    error = fail(f"def main():\n    return hasattr(1, {name!r})")
    assert error.message.startswith("AttributeError")


def test_setattr_refuses_underscore_names_and_foreign_objects():
    error = fail("class A:\n    pass\ndef main():\n    setattr(A(), '__class__', int)")
    assert "starts with" in error.message
    error = fail("import datetime\ndef main():\n    setattr(datetime.timedelta, 'days', 1)")
    assert error.message.startswith("TypeError")
    assert run("class A:\n    pass\ndef main():\n    a = A()\n    setattr(a, 'x', 1)\n    return a.x").result == 1


@pytest.mark.parametrize(
    "expression",
    ['"{0.__class__}".format(1)', '"{x}".format_map({"x": 1})', 'str.format("{0.__class__}", 1)'],
)
def test_str_format_attribute_tricks_are_blocked(expression):
    error = fail(f"def main():\n    return {expression}")
    assert error.message.startswith("NotImplementedError") and "not safe" in error.message


def test_generator_frames_are_unreachable():
    source = "def main():\n    g = (x for x in [1])\n    return g.gi_frame"
    with pytest.raises(InvalidSpec):
        check_source(source, "main")
    error = fail("def main():\n    g = (x for x in [1])\n    return getattr(g, 'gi_frame')")
    assert error.message.startswith("AttributeError")


def test_string_annotations_cannot_be_evaluated_through_functools():
    source = """
    import functools
    def main():
        return functools.singledispatch
    """
    assert fail(source).message.startswith("AttributeError")


def test_stdlib_objects_cannot_be_modified():
    error = fail("import json\ndef main():\n    json.JSONEncoder.item_separator = ';'\n    return 1")
    assert error.message.startswith("TypeError")
    assert json.JSONEncoder.item_separator == ", "


# --------------------------------------------------------------------------------------------
# Errors, exits and time limits


def test_errors_carry_message_traceback_of_user_frames_and_output():
    source = textwrap.dedent(
        """
        def helper(value):
            raise ValueError("boom")

        def main():
            print("about to fail")
            helper(1)
        """
    )
    with pytest.raises(SandboxError) as caught:
        execute(source, "main")
    error = caught.value
    assert error.reason == "error"
    assert error.message == "ValueError: boom"
    assert error.output == "about to fail\n"
    assert error.traceback.splitlines() == [
        "Traceback (most recent call last):",
        '  File "<task>", line 7, in main',
        "    helper(1)",
        '  File "<task>", line 3, in helper',
        '    raise ValueError("boom")',
        "ValueError: boom",
    ]
    assert "sandbox.py" not in error.traceback


def test_chained_errors_show_both_exceptions():
    error = fail(
        """
        def main():
            try:
                1 / 0
            except ZeroDivisionError as exc:
                raise KeyError("k") from exc
        """
    )
    assert error.message == "KeyError: 'k'"
    assert "ZeroDivisionError: division by zero" in error.traceback
    assert "direct cause" in error.traceback


def test_user_exception_names_are_not_module_qualified():
    error = fail("class Oops(Exception):\n    pass\ndef main():\n    raise Oops('x')")
    assert error.message == "Oops: x"


def test_errors_at_module_level_are_reported():
    error = fail("x = 1 / 0\ndef main():\n    return x")
    assert error.message == "ZeroDivisionError: division by zero"
    assert 'File "<task>", line 1, in <module>' in error.traceback


def test_wrong_arguments_are_a_user_error():
    error = execute_error("def main(a):\n    return a", "main", [], {})
    assert error.reason == "error" and error.message.startswith("TypeError")


def execute_error(*args) -> SandboxError:
    with pytest.raises(SandboxError) as caught:
        execute(*args)
    return caught.value


@pytest.mark.parametrize("statement", ["raise SystemExit(3)", "raise KeyboardInterrupt()", "raise GeneratorExit()"])
def test_exit_exceptions_become_sandbox_errors(statement):
    error = fail(f"def main():\n    {statement}")
    assert error.reason == "exit"
    assert statement.split()[1].split("(")[0] in error.message


def test_soft_time_limit_passes_through_unchanged():
    from billiard.exceptions import SoftTimeLimitExceeded

    signal_exc = SoftTimeLimitExceeded("soft limit")

    def on_alarm(signum, frame):
        raise signal_exc

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    try:
        with pytest.raises(SoftTimeLimitExceeded) as caught:
            execute("def main():\n    while True:\n        pass", "main")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert caught.value is signal_exc


def test_soft_time_limit_is_recognised_by_name_too():
    class SoftTimeLimitExceeded(Exception):
        pass

    def stop():
        raise SoftTimeLimitExceeded()

    with pytest.raises(SoftTimeLimitExceeded):
        execute("def main(stop):\n    stop()", "main", [stop])


# --------------------------------------------------------------------------------------------
# Limits


def test_output_cap_cuts_output_with_a_marker_and_fails():
    lines: list[str] = []
    with pytest.raises(SandboxError) as caught:
        run("def main():\n    for i in range(1000):\n        print('x' * 50)\n    return 1",
            limits=Limits(output_cap=200), on_output=lines.append)
    error = caught.value
    assert error.reason == "output_cap"
    assert "200 bytes" in error.message
    assert error.output.endswith("… [output truncated at 200 bytes]\n")
    assert len(error.output.split("…")[0].encode()) <= 201
    assert lines[-1] == "… [output truncated at 200 bytes]"
    assert 'File "<task>", line 3' in error.traceback


def test_output_cap_cannot_be_swallowed_by_the_code():
    error = fail(
        """
        def main():
            for i in range(100):
                try:
                    print("y" * 100)
                except BaseException:
                    pass
            return "finished"
        """,
        limits=Limits(output_cap=300),
    )
    assert error.reason == "output_cap"


def test_output_cap_counts_utf8_bytes_without_splitting_characters():
    error = fail("def main():\n    print('é' * 100)", limits=Limits(output_cap=51))
    kept = error.output.split("\n")[0]
    assert kept == "é" * 25


def _encodes(*texts: str) -> bool:
    for text in texts:
        assert type(text) is str
        text.encode("utf-8")  # raises on a lone surrogate
    return True


@pytest.mark.parametrize("statement, message", [
    (r"raise ValueError('x\udcff')", "ValueError: x\ufffd"),
    (r"raise ValueError('\ud800', '\udfff')", "ValueError: ('\\ud800', '\\udfff')"),
    (r"raise KeyError('\udcff')", "KeyError: '\\udcff'"),
    (r"raise SystemExit('\udcff')", "the code tried to stop the program (SystemExit: \ufffd)"),
    (r"raise ValueError('\udcff') from KeyError('\ud801')", "ValueError: \ufffd"),
    (r"print('a\udcffb', end='\ud800'); print('\udfff' * 3); raise Oops('\udcff' * 5000)", None),
])
def test_lone_surrogates_in_messages_and_output_still_end_the_run_cleanly(statement, message):
    """Python strings may hold lone surrogates; UTF-8 (JSON results, the broker, logs, terminals) may not.
    A run that raises or prints one must still end in a SandboxError whose message, traceback and
    output are valid text, each surrogate shown as U+FFFD -- not in a UnicodeEncodeError later."""
    lines: list[str] = []
    error = fail(f"class Oops(Exception):\n    pass\ndef main():\n    {statement}", on_output=lines.append)
    assert _encodes(error.message, error.traceback, error.output, *lines)
    assert json.dumps(error.to_dict(), ensure_ascii=False).encode("utf-8")
    if message is not None:
        assert error.message == message
        assert error.traceback.endswith("\n") and error.traceback.splitlines()[-1] in message
    else:
        assert error.output == "a\ufffdb\ufffd\ufffd\ufffd\ufffd\n" and lines == ["a\ufffdb\ufffd\ufffd\ufffd\ufffd"]
        assert error.message.startswith("Oops: \ufffd\ufffd") and "characters of the message left out" in error.message


def test_lone_surrogates_in_results_and_output_of_a_successful_run_are_replaced():
    lines: list[str] = []
    execution = run(
        r"""
        class Tag(str):
            pass
        def main():
            print('\udcff', 'ok')
            return ['\udcff', Tag('t\ud800'), {'k\udcff': '\udfff', 1: ('\ud800',)}, {'\udcff'}, printed]
        """,
        on_output=lines.append,
    )
    assert execution.output == "\ufffd ok\n" and lines == ["\ufffd ok"]
    assert execution.result == ["\ufffd", "t\ufffd", {"k\ufffd": "\ufffd", "1": ["\ufffd"]}, ["\ufffd"], "\ufffd ok\n"]
    assert json.dumps(execution.result, ensure_ascii=False).encode("utf-8")


def test_lone_surrogates_do_not_bend_the_output_cap():
    error = fail("def main():\n    print('\\udcff' * 100)", limits=Limits(output_cap=10))
    assert error.reason == "output_cap"
    assert error.output.split("\n")[0] == "\ufffd" * 3  # 3 bytes each in UTF-8, 10 bytes allowed
    assert _encodes(error.output, error.message, error.traceback)


def test_result_cap():
    error = fail("def main():\n    return 'x' * 5000", limits=Limits(result_cap=1000))
    assert error.reason == "result_cap"
    assert "1000 bytes" in error.message
    assert run("def main():\n    return 'x' * 900", limits=Limits(result_cap=1000)).result == "x" * 900


def test_result_cap_on_many_small_items():
    error = fail("def main():\n    return list(range(100000))", limits=Limits(result_cap=1000))
    assert error.reason == "result_cap"


def test_deeply_nested_result_is_refused():
    error = fail("def main():\n    x = []\n    for i in range(150):\n        x = [x]\n    return x")
    assert error.reason == "result_cap" and "nested" in error.message


def test_recursion_limit():
    before = sys.getrecursionlimit()
    source = "def down(n):\n    return 0 if n == 0 else 1 + down(n - 1)\ndef main(n):\n    return down(n)"
    assert execute(source, "main", [150]).result == 150
    error = execute_error(source, "main", [10_000])
    assert error.reason == "recursion"
    assert "[the line above repeated" in error.traceback
    assert len(error.traceback) < 2000
    assert sys.getrecursionlimit() == before


def test_recursion_limit_is_configurable():
    source = "def down(n):\n    return 0 if n == 0 else 1 + down(n - 1)\ndef main(n):\n    return down(n)"
    assert execute_error(source, "main", [150], {}, Limits(recursion_limit=50)).reason == "recursion"
    assert execute(source, "main", [800], {}, Limits(recursion_limit=1000)).result == 800


RECURSIVE = (
    "def down(n):\n    return 0 if n <= 0 else down(n - 1) + 1\n"
    "def via_c(n):\n    return 0 if n <= 0 else sorted([n - 1], key=via_c)[0] + 1\n"
    "def main(n, through_c=False):\n    return via_c(n) if through_c else down(n)\n"
)


def test_ordinary_recursion_300_deep_fits_the_default_limit():
    assert Limits().recursion_limit == 1000
    assert execute(RECURSIVE, "main", [300]).result == 300
    assert execute(RECURSIVE, "main", [300, True]).result == 300


def test_stack_safe_recursion_limit_follows_the_stack_it_is_told_of():
    mib = 1024 * 1024
    per_call = sandbox.STACK_BYTES_PER_CALL
    assert sandbox.stack_safe_recursion_limit(1000, 64 * mib) == 1000
    assert sandbox.stack_safe_recursion_limit(10**6, 64 * mib) == (63 * mib) // per_call
    assert sandbox.stack_safe_recursion_limit(1000, 2 * mib) == (2 * mib - mib // 2) // per_call
    assert sandbox.stack_safe_recursion_limit(1000, 1024) == 1
    assert sandbox.stack_safe_recursion_limit(0, 1024) == 0  # 0 disables the limit, whatever the stack
    found = sandbox.stack_safe_recursion_limit(1000, sandbox.thread_stack_bytes())
    assert [sandbox.stack_safe_recursion_limit(1000, unknown) for unknown in (None, 0, -1)] == [found] * 3


def test_a_thread_with_a_large_stack_is_measured_by_its_own_stack_not_rlimit_stack():
    """The jail runs ``execute`` in a thread started after ``threading.stack_size(...)``; RLIMIT_STACK
    describes the main thread only. Run in-process: 900 nested calls under a limit of 1000."""
    seen: dict = {}

    def body():
        seen["stack"] = sandbox.thread_stack_bytes()
        seen["result"] = execute(RECURSIVE, "main", [900], None, Limits(recursion_limit=1000)).result
        seen["told"] = execute(RECURSIVE, "main", [900], None,
                               Limits(recursion_limit=1000, stack_bytes=64 * 1024 * 1024)).result
        seen["still set"] = threading.stack_size(64 * 1024 * 1024)  # finding the size out did not reset it

    previous = threading.stack_size(64 * 1024 * 1024)
    try:
        runner = threading.Thread(target=body)
        runner.start()
        runner.join()
    finally:
        threading.stack_size(previous)
    assert seen == {"stack": 64 * 1024 * 1024, "result": 900, "told": 900, "still set": 64 * 1024 * 1024}


@pytest.mark.skipif(resource is None or not hasattr(resource, "RLIMIT_STACK"), reason="needs RLIMIT_STACK")
def test_deep_recursion_in_a_large_stack_thread_is_a_recursion_error_not_a_crash():
    """In a subprocess (a SIGSEGV would take the test session with it) whose RLIMIT_STACK is 2 MiB --
    under which the old reading of RLIMIT_STACK allowed only 256 calls, so 900 failed -- a thread with
    a 64 MiB stack runs 900 nested calls under a limit of 1000, and 5,000 (plain, or each level through
    ``sorted(key=...)``, which costs C stack) end as SandboxError reason "recursion"."""
    code = textwrap.dedent(
        f"""
        import json, resource, threading
        from core.sandbox import Limits, SandboxError, execute, stack_safe_recursion_limit
        resource.setrlimit(resource.RLIMIT_STACK, (2 * 1024 * 1024, resource.getrlimit(resource.RLIMIT_STACK)[1]))
        source = {RECURSIVE!r}
        out = {{"main thread": stack_safe_recursion_limit(1000)}}

        def body():
            out["thread"] = stack_safe_recursion_limit(1000)
            limits = Limits(recursion_limit=1000, memory_limit_mb=0)
            out["900"] = execute(source, "main", [900], None, limits).result
            out["400 through C"] = execute(source, "main", [400, True], None, limits).result  # 2 counted per level
            for args in ([5000], [5000, True], [100000, True]):
                try:
                    execute(source, "main", args, None, limits)
                except SandboxError as exc:
                    out[repr(args)] = [exc.reason, exc.message]

        threading.stack_size(64 * 1024 * 1024)
        runner = threading.Thread(target=body)
        runner.start()
        runner.join()
        print(json.dumps(out))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=sandbox.__file__.rsplit("/core/", 1)[0])
    assert done.returncode == 0 and not done.stderr, (done.returncode, done.stderr[-2000:])
    out = json.loads(done.stdout)
    limit_message = "RecursionError: maximum recursion depth exceeded (limit 1000 calls)"
    assert out == {
        "main thread": (2 * 1024 * 1024 - 512 * 1024) // sandbox.STACK_BYTES_PER_CALL, "thread": 1000, "900": 900,
        "400 through C": 400, "[5000]": ["recursion", limit_message], "[5000, True]": ["recursion", limit_message],
        "[100000, True]": ["recursion", limit_message],
    }


@pytest.mark.skipif(resource is None or not hasattr(resource, "RLIMIT_STACK"), reason="needs RLIMIT_STACK")
def test_a_thread_with_a_small_stack_gets_a_lower_limit_not_a_crash():
    """The other side: RLIMIT_STACK (8 MiB here) says nothing of a thread made with 512 KiB. Read that
    way, a recursion through ``sorted(key=...)`` was allowed 1,792 levels and the process died of
    SIGSEGV; measured by the thread's own stack it ends as a RecursionError. In a subprocess."""
    code = textwrap.dedent(
        f"""
        import resource, threading
        from core.sandbox import Limits, SandboxError, execute
        resource.setrlimit(resource.RLIMIT_STACK, (8 * 1024 * 1024, resource.getrlimit(resource.RLIMIT_STACK)[1]))

        def body():
            try:
                execute({RECURSIVE!r}, "main", [100_000, True], None,
                        Limits(recursion_limit=100_000, memory_limit_mb=0))
            except SandboxError as exc:
                print(exc.reason, exc.message)

        threading.stack_size(512 * 1024)
        runner = threading.Thread(target=body)
        runner.start()
        runner.join()
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=sandbox.__file__.rsplit("/core/", 1)[0])
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    expected = (512 * 1024 - 128 * 1024) // sandbox.STACK_BYTES_PER_CALL
    assert done.stdout == f"recursion RecursionError: maximum recursion depth exceeded (limit {expected} calls)\n"


@pytest.mark.skipif(resource is None or not hasattr(resource, "RLIMIT_AS"), reason="needs RLIMIT_AS")
@pytest.mark.parametrize("statement", ["x = 'a' * (2**34)", "x = [0] * (10**10)", "x = bytes(2**33)"])
def test_memory_bombs_fail_and_the_process_recovers(statement):
    before = resource.getrlimit(resource.RLIMIT_AS)
    error = fail(f"def main():\n    {statement}\n    return 1", limits=Limits(memory_limit_mb=256))
    assert error.reason == "memory"
    assert "256 MiB" in error.message
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    block = bytearray(300 * 1024 * 1024)  # more than the sandbox allowed: the limit is gone again
    assert len(block) == 300 * 1024 * 1024
    del block
    assert run("def main():\n    return len([0] * 1000)").result == 1000


@pytest.mark.skipif(resource is None or not hasattr(resource, "RLIMIT_AS"), reason="needs RLIMIT_AS")
def test_memory_limit_applies_only_during_the_call():
    seen = []

    def probe():
        seen.append(resource.getrlimit(resource.RLIMIT_AS)[0])
        return 0

    before = resource.getrlimit(resource.RLIMIT_AS)
    execute("def main(probe):\n    return probe()", "main", [probe], None, Limits(memory_limit_mb=64))
    assert seen[0] != resource.RLIM_INFINITY and seen[0] != before[0]
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    seen.clear()
    execute("def main(probe):\n    return probe()", "main", [probe], None, Limits(memory_limit_mb=0))
    assert seen == [before[0]], "0 disables the memory limit"


def test_limits_from_settings():
    from core.config import Settings

    limits = Limits.from_settings(Settings(output_cap=10, result_cap=20, memory_limit_mb=40, recursion_limit=70,
                                           sandbox_imports="math,json"))
    assert (limits.output_cap, limits.result_cap, limits.memory_limit_mb, limits.recursion_limit) == (10, 20, 40, 70)
    assert limits.allowed_imports == ("math", "json")
    limits = Limits.from_settings(Settings())
    assert limits.allowed_imports == DEFAULT_IMPORTS


def test_sandbox_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(SandboxError("memory", "MemoryError: x", "tb", "out")))
    assert (error.reason, error.message, error.traceback, error.output, str(error)) == (
        "memory", "MemoryError: x", "tb", "out", "MemoryError: x")


# --------------------------------------------------------------------------------------------
# check_source


def test_check_source_accepts_a_good_function():
    assert check_source("def calculate():\n    return 1 + 2 * 3", "calculate") is None


def test_check_source_reports_syntax_errors_with_the_line_number():
    with pytest.raises(InvalidSpec) as caught:
        check_source("def main():\n    return (1 +\n\nx = 2", "main")
    assert caught.value.field == "function_code"
    assert "line 2" in caught.value.message.lower()


def test_check_source_reports_restricted_python_errors_with_the_line_number():
    with pytest.raises(InvalidSpec) as caught:
        check_source("def main():\n    x = 1\n    return x.__class__", "main")
    assert caught.value.field == "function_code"
    assert "Line 3" in caught.value.message and "__class__" in caught.value.message


def test_check_source_refuses_missing_function():
    with pytest.raises(InvalidSpec) as caught:
        check_source("def other():\n    return 1", "main")
    assert caught.value.field == "function_name"
    assert "main" in caught.value.message


def test_check_source_requires_a_top_level_def():
    for source in ("main = lambda: 1", "class main:\n    pass", "def outer():\n    def main():\n        return 1"):
        with pytest.raises(InvalidSpec) as caught:
            check_source(source, "main")
        assert caught.value.field == "function_name"


@pytest.mark.parametrize("name", ["", "1abc", "my-func", "with space", "class", "_private", None])
def test_check_source_refuses_invalid_function_names(name):
    with pytest.raises(InvalidSpec) as caught:
        check_source("def main():\n    return 1", name)
    assert caught.value.field == "function_name"


def test_check_source_refuses_async_def():
    with pytest.raises(InvalidSpec) as caught:
        check_source("async def main():\n    return 1", "main")
    assert caught.value.field == "function_name"
    assert "async" in caught.value.message and "not supported" in caught.value.message


def test_execute_checks_the_source_first():
    with pytest.raises(InvalidSpec):
        execute("def other():\n    return 1", "main")
    with pytest.raises(InvalidSpec):
        execute("def main(:\n", "main")


def test_function_rebound_to_a_non_function_is_a_user_error():
    error = execute_error("def main():\n    return 1\nmain = 5", "main", None, None)
    assert error.reason == "error" and "not a function" in error.message


def test_module_has_no_ui_imports():
    source = open(sandbox.__file__).read()
    assert "textual" not in source.lower() and "import rich" not in source.lower()
