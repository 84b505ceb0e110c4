"""The status line: Redis, workers, due set, runs per minute and failures in the last hour."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Sparkline, Static

from tui.guard import CarriesOn
from tui.safe import plain

COMPACT = 110
"""Below this width the line drops the brand and the sparkline first, spaces its facts closer and calls the
scheduler beat, so runs/min and failed/h stay in view (at 80 columns too)."""


class StatusBar(CarriesOn, Horizontal):
    """One line at the top of the main screen; ``update`` takes what ``tui.feed.status`` read."""

    _values: dict[str, Any] | None = None
    """What ``update`` was last given, to draw it again when the width crosses ``COMPACT``."""

    def compose(self) -> ComposeResult:
        yield Static("taskman", id="brand")
        yield Static("", id="facts")
        yield Sparkline([0.0], id="rate")
        yield Static("", id="rate-text")

    def on_resize(self) -> None:
        compact = self.size.width < COMPACT
        if compact != self.has_class("compact"):
            self.set_class(compact, "compact")
            if self._values is not None:
                self.update(**self._values)

    def update(self, *, redis: str, ok: bool, workers: int, due: int, per_minute: list[float],
               failed_hour: int, queued: int = 0, scheduler: bool = True, walls: str = "",
               restarts: str = "") -> None:
        """``walls``: what the code workers' jails say ("jail ●", or "walls ✘ landlock"); ``restarts``:
        what ``taskman up`` restarted ("beat ×2")."""
        self._values = {"redis": redis, "ok": ok, "workers": workers, "due": due, "per_minute": per_minute,
                        "failed_hour": failed_hour, "queued": queued, "scheduler": scheduler, "walls": walls,
                        "restarts": restarts}
        compact = self.has_class("compact")
        gap = "  " if compact else "   "
        dot = "●" if ok else "○"
        beat = "" if scheduler or not ok else f"{gap}{'beat' if compact else 'scheduler'} ○"
        extra = "".join(f"{gap}{part}" for part in (walls, restarts) if part)
        where = f"{dot} {redis}" if compact else f"redis {dot} {redis}"
        self.query_one("#facts", Static).update(
            plain(f"{where}{gap}workers {workers}{gap}queued {queued}{gap}due {due}{beat}{extra}"))
        self.set_class(walls.startswith(("walls", "REDIS LOST", "REDIS REFUSES")), "weak")
        self.query_one("#rate", Sparkline).data = per_minute or [0.0]
        self.query_one("#rate-text", Static).update(
            f" {per_minute[-1] if per_minute else 0:.0f} runs/min{gap}failed/h {failed_hour}")
        self.set_class(not ok, "down")
