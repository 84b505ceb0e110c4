"""The status line: Redis, workers, due set, runs per minute and failures in the last hour."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Sparkline, Static

from tui.guard import CarriesOn
from tui.safe import plain


class StatusBar(CarriesOn, Horizontal):
    """One line at the top of the main screen; ``update`` takes what ``tui.feed.status`` read."""

    def compose(self) -> ComposeResult:
        yield Static("taskman", id="brand")
        yield Static("", id="facts")
        yield Sparkline([0.0], id="rate")
        yield Static("", id="rate-text")

    def update(self, *, redis: str, ok: bool, workers: int, due: int, per_minute: list[float],
               failed_hour: int, queued: int = 0, scheduler: bool = True, walls: str = "",
               restarts: str = "") -> None:
        """``walls``: what the code workers' jails say ("jail ●", or "walls ✘ landlock"); ``restarts``:
        what ``taskman up`` restarted ("beat ×2")."""
        dot = "●" if ok else "○"
        beat = "" if scheduler or not ok else "   scheduler ○"
        extra = "".join(f"   {part}" for part in (walls, restarts) if part)
        self.query_one("#facts", Static).update(
            plain(f"redis {dot} {redis}   workers {workers}   queued {queued}   due {due}{beat}{extra}"))
        self.set_class(walls.startswith(("walls", "REDIS LOST")), "weak")
        self.query_one("#rate", Sparkline).data = per_minute or [0.0]
        self.query_one("#rate-text", Static).update(
            f" {per_minute[-1] if per_minute else 0:.0f} runs/min   failed/h {failed_hour}")
        self.set_class(not ok, "down")
