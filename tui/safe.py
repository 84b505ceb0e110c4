"""Data on the console's screen: always plain text, never markup, never raw control characters.

Textual parses a ``str`` as content markup almost everywhere (DataTable cells, ``Static.update``, border
titles, notifications, select options), so a task called ``weekly [/]`` would crash a widget and one
called ``[@click=app.screenshot()]x`` would act when clicked. And it writes a ``rich.text.Text``'s
characters to the terminal as they are, ``ESC`` included. So every string that comes from data is
handed to a widget through :func:`plain` or :func:`block`: a ``Text`` (which no widget parses) whose
control characters ``core.text`` has made visible.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text

from core.text import json_text, one_line, visible

__all__ = ["block", "json_text", "one_line", "plain", "visible"]


def plain(value: Any, style: str = "") -> Text:
    """One line of data as plain text: names, cells, titles, one-line messages (newlines shown as ``\\n``)."""
    return Text(one_line(value), style=style)


def block(value: Any, style: str = "") -> Text:
    """Several lines of data as plain text: output, errors, questions (newlines and tabs kept)."""
    return Text(visible(value), style=style)
