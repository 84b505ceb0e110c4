"""Text that came from data, made safe to put on a terminal.

Task names, descriptions, results, errors, printed lines and log messages are data: whoever wrote a
task (or whatever its code printed, or whatever an API answered) chose them. A terminal obeys the
control characters in what it is sent — ``ESC ]52;c;…`` fills the clipboard, ``ESC ]0;…`` retitles
the window, ``ESC [2J`` clears the screen, ``\\r`` and cursor moves forge lines — so every front end
that writes to a terminal (the command line, the console) passes data through this module first,
whether or not its output is a TTY (a file is ``cat``-ed to a terminal later).

What is made visible: C0 controls (except newline and tab, which :func:`visible` keeps and
:func:`one_line` shows as ``\\n``), DEL, C1 controls, the bidirectional overrides and isolates (they
reorder what a line appears to say) and lone surrogates (they cannot be encoded and would crash the
writer). Each becomes its Python escape, ``\\x1b``, ``\\u202e``, ``\\udc80``, so what was there stays
readable. JSON output keeps its own escaping: :func:`json_text` escapes the few characters
``json.dumps(ensure_ascii=False)`` lets through, and the result is still valid JSON with the same value.

This module decides nothing about markup: the console shows data as ``rich.text.Text``, never as
markup (``tui/safe.py``). It also holds the one way durations and moments are written for people
(:func:`human_duration`, :func:`run_time`, :func:`relative_time`, :func:`local_time`, :func:`log_time`),
so every front end writes them the same way, and the one way JSON a person typed (an option, a form's
field) is read (:func:`read_json`), so every front end refuses it in the same words.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Any

from core.errors import InvalidSpec

_UNSAFE = "\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_KEEP_LINES = re.compile(f"[{_UNSAFE}]")
"""What :func:`visible` escapes: everything unsafe but newline and tab."""
_ONE_LINE = re.compile(f"[{_UNSAFE}\n]")
"""What :func:`one_line` escapes: newline too, so one entry can never pose as two."""
_IN_JSON = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
"""What ``json.dumps(ensure_ascii=False)`` leaves raw but a terminal must not get (it escapes C0 itself)."""
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""Control characters that validation refuses in names and descriptions (C0 but newline and tab, DEL, C1)."""


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    if code == 0x0A:
        return "\\n"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(value: Any) -> str:
    """``value`` as text with every control character made visible; newlines and tabs are kept.

    For multi-line blocks: a run's output, a traceback, a code task's source.
    """
    text = value if isinstance(value, str) else str(value)
    return _KEEP_LINES.sub(_escape, text)


def one_line(value: Any) -> str:
    """``value`` as one line of text: like :func:`visible`, and newlines shown as ``\\n``.

    For names, list cells, single-line fields and log messages (one log entry is one line).
    """
    text = value if isinstance(value, str) else str(value)
    return _ONE_LINE.sub(_escape, text)


def json_text(value: Any, **dumps_args: Any) -> str:
    """``json.dumps(value, ensure_ascii=False, ...)`` with DEL, C1, bidi controls and lone surrogates
    escaped as ``\\u…`` (the same JSON value; only how it is spelled changes)."""
    dumps_args.setdefault("ensure_ascii", False)
    text = json.dumps(value, **dumps_args)
    if text.isascii() and "\x7f" not in text:  # nothing to escape (the usual case): no regex pass
        return text
    return _IN_JSON.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def has_control(text: str, *, allow: str = "") -> bool:
    """Whether ``text`` holds a control character other than those in ``allow`` (e.g. ``"\\n\\t"``)."""
    return any(char not in allow for char in CONTROL.findall(text)) or (
        "\n" not in allow and "\n" in text) or ("\t" not in allow and "\t" in text)


def has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (not Unicode text: it cannot be encoded)."""
    return any("\ud800" <= char <= "\udfff" for char in text)


def human_duration(seconds: float) -> str:
    """A duration as people read it: ``850 ms``, ``12.3 s``, ``4 m 05 s``, ``2 h 07 m``, ``3 d 04 h``.

    Each unit is used until the next one reads better; what a unit cannot show is rounded, never cut
    (59.97 s is ``1 m 00 s``, not ``60.0 s``)."""
    seconds = max(0.0, seconds)
    if seconds * 1000 < 999.5:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} m {whole % 60:02d} s"
    minutes = round(seconds / 60)
    if minutes < 24 * 60:
        return f"{minutes // 60} h {minutes % 60:02d} m"
    hours = round(seconds / 3600)
    return f"{hours // 24} d {hours % 24:02d} h"


def human_ago(seconds: float, *, compact: bool = False) -> str:
    """How long ago something happened: ``just now``, ``3 s ago``, ``4 m 05 s ago``; ``compact`` (a list's
    narrow column, as :func:`relative_time`'s ``+4m`` ahead) in the largest whole unit: ``28s ago``,
    ``4m ago``, ``3h ago``, ``2d ago``."""
    if seconds < 0.5:
        return "just now"
    if compact:
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if seconds >= size:
                return f"{int(seconds // size)}{unit} ago"
        return f"{max(1, int(seconds))}s ago"
    if seconds < 59.5:
        return f"{round(seconds)} s ago"
    return f"{human_duration(seconds)} ago"


def run_time(duration_ms: float | None, started_at: float | None = None, *, running: bool = False,
             now: float | None = None) -> str:
    """How long a run took (``850 ms``) or, while ``running``, has run since ``started_at``; ``""`` when
    neither is known (a run still queued)."""
    if running and started_at is not None:
        return human_duration((time.time() if now is None else now) - started_at)
    if duration_ms is not None:
        return human_duration(duration_ms / 1000)
    return ""


def relative_time(timestamp: float | None, now: float | None = None, *, compact: bool = False) -> str:
    """When something is due: ``+28s`` or ``+4m`` within the hour, else the local date and time
    (``2026-11-30 09:00:00``); ``compact`` (a list's narrow column) says ``due`` once it has passed and
    beyond the hour only ``09:00`` (within a day), ``Nov 30`` (within 300 days) or the year. ``–``: never."""
    if timestamp is None:
        return "–"
    delta = timestamp - (time.time() if now is None else now)
    if compact and delta < 0:
        return "due"
    if 0 <= delta < 120:
        return f"+{delta:.0f}s"
    if 0 <= delta < 3600:
        return f"+{delta / 60:.0f}m"
    if not compact:
        return local_time(timestamp)
    local = time.localtime(timestamp)
    if delta < 86400:
        return time.strftime("%H:%M", local)
    if delta < 300 * 86400:
        return time.strftime("%b %d", local)
    return time.strftime("%Y", local)


def local_time(moment: float | str | None, pattern: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A moment (a Unix time, or an ISO 8601 string as the JSON views give it) in local time; ``–``: none."""
    if moment is None or moment == "":
        return "–"
    when = datetime.fromisoformat(moment).astimezone() if isinstance(moment, str) else datetime.fromtimestamp(moment)
    return when.strftime(pattern)


def log_time(timestamp: float | str | None) -> str:
    """A log line's local time of day to the millisecond (``09:00:00.003``); its ``ts`` is a Unix time."""
    return datetime.fromtimestamp(float(timestamp or 0)).strftime("%H:%M:%S.%f")[:-3]


TITLE_FIELDS = ("name", "kind", "task_type")
"""Spec fields a definition's title shows already (name, kind, mode), so its field list leaves them out."""


def definition_fields(spec: dict[str, Any]) -> tuple[list[tuple[str, str]], str | None]:
    """A spec as a task's definition shows it (``Task.to_dict()["spec"]``: secrets masked): each field but
    the title's as ``(name, text)``, text made visible (strings keep their newlines) or JSON, in order; and a
    code task's source apart, to show as code (None for the other kinds)."""
    fields = [(one_line(key), visible(value) if isinstance(value, str) else json_text(value))
              for key, value in spec.items() if key not in TITLE_FIELDS and key != "function_code"]
    code = spec.get("function_code")
    return fields, None if code is None else str(code)


_REQUIRED: Any = object()


def read_json(text: str, field: str, blank: Any = _REQUIRED) -> Any:
    """What a person typed into ``field`` (an option, a form's box) read as JSON; ``blank``, when given, for
    text that is only white space. ``InvalidSpec`` naming the field, and where the JSON goes wrong, if not JSON."""
    if blank is not _REQUIRED and not text.strip():
        return blank
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidSpec(field, f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise InvalidSpec(field, "the JSON is nested too deeply") from None
