"""The live log pane: lines from the log stream, of every task or of the selected one.

Each entry is one line of plain text (``rich.text.Text``, ``markup=False``) with its control characters
and newlines made visible: a printed line can neither be markup nor pose as another entry.

While it has focus the pane has keys of its own (``BINDINGS``; ``?`` lists them): ``/`` finds text in
the lines shown (every match highlighted, ``n``/``N`` jump between them), ``w`` wraps long lines or not,
``S`` saves the lines shown to a file, ``y`` copies the line at the current match (or the newest one).
Holding the pane (``f``, or jumping to a match) freezes what it shows; lines that arrive meanwhile wait
and appear, none lost, when it follows again. Its subtitle says what is going on: wrap, the match, how
many lines wait.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import cast

from rich.segment import Segment
from rich.text import Text
from textual.binding import Binding
from textual.events import Blur, Resize
from textual.geometry import Size
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Input, RichLog

from core.text import log_time
from tui.guard import CarriesOn
from tui.safe import one_line

LEVEL_STYLES = {"error": "red", "warning": "yellow", "print": "", "info": "dim"}
MATCH_STYLE = "reverse"
KEPT = 5000
"""Entries kept (and shown) at most; older ones leave as newer ones come."""
WAITING = 50_000
"""Entries held back at most while the pane is held; beyond that the oldest waiting ones are dropped (and
counted)."""


class LogFind(CarriesOn, Input):
    """The pane's find box, under it while in use: typing highlights, enter jumps to the newest match."""

    DEFAULT_CSS = """
    LogFind {
        height: 3;
        border: round $accent;
    }
    """

    def __init__(self, pane: LogPane) -> None:
        super().__init__(placeholder="find in the log lines shown (enter: newest match, then n / N)",
                         id="log-find")
        self.pane = pane

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.pane.find(event.value, jump=False)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.pane.find(event.value, jump=True)
        self.pane.focus()

    def on_blur(self, event: Blur) -> None:
        self.display = False


class LogPane(CarriesOn, RichLog):
    """Keeps the recent entries so switching scope, wrapping or finding re-renders without reading Redis."""

    BINDINGS = [
        Binding("slash", "find", "find", id="logs.find", tooltip="Find text in the log lines shown"),
        Binding("n", "next_match", "next match", id="logs.next", tooltip="Jump to the next match, down"),
        Binding("N", "previous_match", "previous match", id="logs.previous", tooltip="Jump to the previous match, up"),
        Binding("w", "toggle_wrap", "wrap", id="logs.wrap", tooltip="Wrap long lines, or not (scroll sideways)"),
        Binding("S", "save_lines", "save", id="logs.save", tooltip="Save the lines shown to a file (asks where)"),
        Binding("y", "copy_line", "copy", id="logs.copy",
                tooltip="Copy the line at the current match (or the newest line) to the clipboard"),
    ]

    @dataclass
    class FollowChanged(Message):
        """The pane started or stopped following by itself (jumping to a match holds it)."""

        following: bool

    def __init__(self, **kwargs) -> None:
        super().__init__(wrap=True, markup=False, highlight=False, **kwargs)
        self.entries: deque[dict] = deque(maxlen=KEPT)
        self.waiting: deque[dict] = deque(maxlen=WAITING)
        """Entries that arrived while the pane was held, oldest first."""
        self.dropped = 0
        """Entries that did not fit in ``waiting``."""
        self.scope: str | None = None
        self.names: dict[str, str] = {}
        self.following = True
        self.query_text = ""
        self.shown: list[dict] = []
        """The entries on screen, in order."""
        self.starts: list[int] = []
        """The first line of each shown entry (``None`` until the pane has a size)."""
        self.matches: list[int] = []
        """Indexes into ``shown`` of the entries that hold ``query_text``."""
        self.current: int | None = None
        """Index into ``matches`` of the match jumped to last."""
        self._pattern: re.Pattern | None = None
        self._unplaced = False
        """Some shown entries were written before the pane had a size, so their lines are not known yet."""
        self._width = 0

    # -- what arrives ---------------------------------------------------------------------------

    def add(self, entries: list[dict]) -> None:
        """New entries from the stream: shown now while following, else kept waiting."""
        if not self.following:
            room = WAITING - len(self.waiting)
            self.dropped += max(0, len(entries) - room)
            self.waiting.extend(entries)
            self._subtitle()
            return
        self.entries.extend(entries)
        shown = [entry for entry in entries if self._in_scope(entry)]
        if len(shown) >= KEPT:  # a flood, or what waited while held: draw only the kept tail
            self._render_all()
            return
        self._write_many(shown)
        if len(self.shown) > KEPT + KEPT // 10:  # what is drawn stays as bounded as what is kept
            self._trim()
        if self.query_text:
            self._subtitle()

    def show_scope(self, task_id: str | None, title: str | Text) -> None:
        """Show only ``task_id``'s lines (None: all) and retitle the pane."""
        self.scope = task_id
        self.border_title = title
        self._render_all()

    def set_following(self, following: bool) -> None:
        """Follow new lines (showing every line that waited), or hold what is shown still."""
        self.following = following
        self.auto_scroll = following
        if following:
            waiting, self.waiting = list(self.waiting), deque(maxlen=WAITING)
            self.dropped = 0
            self.add(waiting)
            self.scroll_end(animate=False)
        self._subtitle()

    # -- drawing --------------------------------------------------------------------------------

    def _in_scope(self, entry: dict) -> bool:
        return self.scope is None or entry.get("task") == self.scope

    def _line(self, entry: dict) -> Text:
        line = Text(f"{log_time(entry.get('ts'))} ", style="dim")
        if self.scope is None:
            name = one_line(self.names.get(entry.get("task", ""), entry.get("task", "")))
            line.append(f"{name[:20]} ", style="bold")
        line.append(one_line(entry.get("msg", "")), style=LEVEL_STYLES.get(entry.get("level", ""), ""))
        return line

    def _found(self, entry: dict) -> Text:
        """The entry's line, its matches highlighted (and counted) while something is being found."""
        line = self._line(entry)
        if self._pattern is not None and self._pattern.search(line.plain):
            self.matches.append(len(self.shown))
            line.highlight_regex(self._pattern, style=MATCH_STYLE)
        return line

    def _write_many(self, entries: list[dict]) -> None:
        """Draw ``entries`` at the bottom, each into the lines ``RichLog.write`` would make of it, with the size,
        the scroll and the refresh done once for them all: written a line at a time, a flood of 2,000 lines
        spent most of its time on 2,000 of each (``bench/log_pane.py``)."""
        if not entries:
            return
        if not self._size_known:  # RichLog keeps them until it has a width; their lines are counted then
            for entry in entries:
                line = self._found(entry)
                self._unplaced = True
                self.starts.append(len(self.lines))
                self.shown.append(entry)
                self.write(line, scroll_end=self.following)
            return
        widest = self._widest_line_width
        for entry in entries:
            line = self._found(entry)
            self.starts.append(len(self.lines))
            self.shown.append(entry)
            strips = self._strips(line)
            widest = max(widest, *(strip.cell_length for strip in strips))
            self.lines.extend(strips)
        self._widest_line_width = max(widest, self._widest_line_width)
        self.virtual_size = Size(self._widest_line_width, len(self.lines))
        if self.following:
            self.scroll_end(animate=False, immediate=False, x_axis=False)
        self.refresh()

    def _strips(self, line: Text) -> list[Strip]:
        """The lines ``RichLog.write`` makes of ``line`` at the pane's width (wrapped, or not)."""
        console = self.app.console
        length = line.cell_len
        render_width = max(min(length, self.scrollable_content_region.width), self.min_width)  # as RichLog's
        if length <= render_width and "\t" not in line.plain:  # one line as it is: render it directly
            return [Strip(list(line.render(console, end="")), length)]
        options = console.options if self.wrap else console.options.update(overflow="ignore", no_wrap=True)
        rendered = console.render(line, options.update_width(render_width))
        return Strip.from_lines(list(Segment.split_lines(rendered))) or [Strip.blank(render_width)]

    def _highlight_again(self) -> None:
        """After the text to find changed: draw again only the entries that held a match or hold one now. A
        style moves no word, so each keeps its lines and no other entry moves; typing a word into the find box
        no longer draws every shown line once per key."""
        if self._unplaced or not self._size_known:
            self._render_all()
            return
        before, self.matches = set(self.matches), []
        changed = False
        for index, entry in enumerate(self.shown):
            line = self._line(entry)
            found = self._pattern is not None and self._pattern.search(line.plain) is not None
            if found:
                self.matches.append(index)
                line.highlight_regex(cast(re.Pattern, self._pattern), style=MATCH_STYLE)
            if found or index in before:
                start = self.starts[index]
                end = self.starts[index + 1] if index + 1 < len(self.starts) else len(self.lines)
                strips = self._strips(line)
                if len(strips) != end - start:  # not expected; if ever, drawing everything again is right
                    self._render_all()
                    return
                self.lines[start:end] = strips
                changed = True
        if changed:
            self._line_cache.clear()
            self.refresh()
        self._subtitle()

    def _render_all(self) -> None:
        """Draw the entries in scope again (after a change of scope, wrap, query or width), keeping the
        place of a held pane."""
        at_y = self.scroll_y
        self.clear()
        self.shown, self.starts, self.matches, self._unplaced = [], [], [], False
        kept = [entry for entry in self.entries if self._in_scope(entry)][-KEPT:]
        self._write_many(kept)
        if self.current is not None:
            self.current = min(self.current, len(self.matches) - 1) if self.matches else None
        if self.following:
            self.scroll_end(animate=False)
        else:
            self.scroll_to(y=at_y, animate=False)
        self._subtitle()

    def _trim(self) -> None:
        """Drop the oldest shown entries beyond ``KEPT`` and their lines (as ``RichLog``'s own
        ``max_lines`` would), keeping every other entry's line number right."""
        extra = len(self.shown) - KEPT
        if extra <= 0 or self._unplaced:
            return
        cut = self.starts[extra]
        self.shown, self.starts = self.shown[extra:], [start - cut for start in self.starts[extra:]]
        self.matches = [index - extra for index in self.matches if index >= extra]
        if self.current is not None:
            self.current = None
        self._start_line += cut
        self.lines = self.lines[cut:]
        self.virtual_size = Size(self._widest_line_width, len(self.lines))
        self.refresh()

    def on_resize(self, event: Resize) -> None:
        """Lines drawn before the pane had its size (or, wrapped, at another width) are drawn again."""
        width = event.size.width
        if width and (self._unplaced or (self.wrap and self._width and width != self._width)):
            self.call_after_refresh(self._render_all)
        self._width = width

    def _subtitle(self) -> None:
        parts = []
        if self.query_text:
            if self.matches:
                at = f"{self.current + 1}/" if self.current is not None else ""
                parts.append(f"“{one_line(self.query_text)[:30]}” {at}{len(self.matches)}")
            else:
                parts.append(f"“{one_line(self.query_text)[:30]}” not found")
        if not self.wrap:
            parts.append("no wrap")
        if not self.following:
            waiting = sum(1 for entry in self.waiting if self._in_scope(entry))
            if waiting:
                parts.append(f"{waiting} new line{'s' * (waiting != 1)} waiting, f shows them")
            if self.dropped:
                parts.append(f"{self.dropped} dropped")
        self.border_subtitle = Text(" · ".join(parts)) if parts else ""

    # -- finding ----------------------------------------------------------------------------------

    def find(self, text: str, *, jump: bool) -> None:
        """Highlight every shown line holding ``text`` (any case); with ``jump``, go to the newest match."""
        if text != self.query_text:
            self.query_text = text
            self._pattern = re.compile(re.escape(text), re.IGNORECASE) if text else None
            self.current = None
            self._highlight_again()
        if jump and self.matches:
            self._go(len(self.matches) - 1)

    def _go(self, index: int) -> None:
        """Hold the pane (so new lines cannot move it) and scroll the match ``index`` into view."""
        if self.following:
            self.set_following(False)
            self.post_message(self.FollowChanged(False))
        self.current = index
        line = self.starts[self.matches[index]]
        self.scroll_to(y=max(0, line - self.scrollable_content_region.height // 3), animate=False)
        self._subtitle()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """``n``/``N`` belong to the pane only while something is being found (else ``n`` makes a task)."""
        if action in ("next_match", "previous_match"):
            return bool(self.query_text)
        return True

    def action_find(self) -> None:
        box = next(iter(self.screen.query(LogFind)), None)
        if box is None:
            box = LogFind(self)
            assert isinstance(self.parent, Widget)
            self.parent.mount(box, after=self)
        box.display = True
        box.focus()

    def close_find(self) -> bool:
        """Hide the find box if it is in use (its highlights stay); whether it was."""
        box = next(iter(self.screen.query(LogFind)), None)
        if box is None or not box.has_focus:
            return False
        box.display = False
        self.focus()
        return True

    def action_next_match(self) -> None:
        self._step(+1)

    def action_previous_match(self) -> None:
        self._step(-1)

    def _step(self, direction: int) -> None:
        if not self.matches:
            self.notify(f"“{one_line(self.query_text)}” is not in the lines shown", severity="warning")
            return
        if self.current is None:
            index = len(self.matches) - 1 if direction < 0 else 0
        else:
            index = (self.current + direction) % len(self.matches)
        self._go(index)

    # -- wrap, save, copy ---------------------------------------------------------------------------

    def action_toggle_wrap(self) -> None:
        self.wrap = not self.wrap
        self._render_all()
        if self.current is not None:
            self._go(self.current)

    def lines_shown(self) -> list[str]:
        """The entries on screen as plain text, one line each (as saved and copied)."""
        return [self._line(entry).plain for entry in self.shown]

    def action_save_lines(self) -> None:
        from tui.screens.save_lines import SaveLinesScreen

        self.app.push_screen(SaveLinesScreen(self.lines_shown(), self.names.get(self.scope or "", "all")))

    def action_copy_line(self) -> None:
        if not self.shown:
            self.notify("no line to copy", severity="warning")
            return
        index = self.matches[self.current] if self.current is not None and self.matches else len(self.shown) - 1
        text = self._line(self.shown[index]).plain
        self.app.copy_to_clipboard(text)
        self.notify(f"copied: {text[:60]}{'…' if len(text) > 60 else ''}")

