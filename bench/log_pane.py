"""Benchmark: how long the console's log pane takes to draw a flood of lines arriving in one batch.

    python3 boot.py python bench/log_pane.py [--lines 2000] [--repeat 7]

Opens a headless Textual app (the test driver, 120x30) holding one log widget, hands it ``--lines`` log
entries in one batch (what one read of the log stream brings after a burst of printing) and times it
until the screen has been drawn again. Measured for taskman's ``LogPane`` (find, wrap, hold), and in the
same run for two baselines given the same lines: a plain ``RichLog`` written one ``Text`` line at a time
(what the pane did before it could find, wrap and hold) and Textual's ``Log`` (plain strings,
``write_lines``). Each into an empty pane, and into one already holding 3,000 lines, with a find
running (``--query``, highlighted in every line that holds it). Prints medians and the ratio to the
``RichLog`` baseline. Then, in a pane holding 5,000 lines, the time a find takes to answer each key
as ``--typed`` is typed (its first letter is in nearly every line, the rest in one line in ten),
against drawing every shown line again (what a new find did before). Asserts nothing. Needs no Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.text import Text  # noqa: E402
from textual.app import App, ComposeResult  # noqa: E402
from textual.widget import Widget  # noqa: E402
from textual.widgets import Log, RichLog  # noqa: E402

from tui.widgets.log_pane import LogPane  # noqa: E402

SIZE = (120, 30)
TASK = "0123456789abcdef"


def entries(count: int, start: int = 0) -> list[dict]:
    """Log entries as the stream holds them: a printed line of about 70 characters each, now and then a longer one."""
    now = time.time()
    return [{"ts": now + i / 1000, "task": TASK, "level": "print",
             "msg": f"row {i:06d} of the nightly export: 42 records, checksum {i * 7919 % 100003:05d}"
                    + (" and a long tail that will not fit in one line of the pane" * 2 if i % 10 == 0 else "")}
            for i in range(start, start + count)]


def as_text(entry: dict) -> Text:
    """What the pane before find/wrap/hold wrote for one entry."""
    line = Text(f"{entry['ts']:.3f} ", style="dim")
    line.append("nightly-export ", style="bold")
    line.append(entry["msg"])
    return line


def pane_add(widget: Widget, batch: list[dict]) -> None:
    assert isinstance(widget, LogPane)
    widget.add(batch)


def richlog_add(widget: Widget, batch: list[dict]) -> None:
    assert isinstance(widget, RichLog)
    for entry in batch:
        widget.write(as_text(entry), scroll_end=True)


def log_add(widget: Widget, batch: list[dict]) -> None:
    assert isinstance(widget, Log)
    widget.write_lines(as_text(entry).plain for entry in batch)


def make_pane() -> Widget:
    pane = LogPane()
    pane.names = {TASK: "nightly-export"}
    return pane


VARIANTS: dict[str, tuple[Callable[[], Widget], Callable[[Widget, list[dict]], None]]] = {
    "RichLog, a write per line (baseline)": (lambda: RichLog(wrap=True, markup=False, highlight=False,
                                                             max_lines=5000), richlog_add),
    "Log, write_lines (plain text)": (lambda: Log(max_lines=5000), log_add),
    "LogPane (find, wrap, hold)": (make_pane, pane_add),
}


class Bench(App):
    def __init__(self, widget: Widget) -> None:
        super().__init__()
        self.widget = widget

    def compose(self) -> ComposeResult:
        yield self.widget


async def once(make: Callable[[], Widget], add: Callable[[Widget, list[dict]], None], lines: int, held: int,
               query: str) -> float:
    """Seconds from handing over ``lines`` entries to the screen drawn again."""
    widget = make()
    app = Bench(widget)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        if held:
            add(widget, entries(held))
            await pilot.pause()
        if query and isinstance(widget, LogPane):
            widget.find(query, jump=False)
            await pilot.pause()
        batch = entries(lines, start=held)
        started = time.perf_counter()
        add(widget, batch)
        await pilot.pause()
        return time.perf_counter() - started


async def typed_find(query: str) -> tuple[list[float], float]:
    """Seconds a find takes to answer each key as ``query`` is typed into a pane holding 5,000 lines, and the
    seconds drawing every one of those lines again takes."""
    pane = LogPane()
    pane.names = {TASK: "nightly-export"}
    app = Bench(pane)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        pane.add(entries(5000))
        await pilot.pause()
        per_key = []
        for end in range(1, len(query) + 1):
            started = time.perf_counter()
            pane.find(query[:end], jump=False)
            await pilot.pause()
            per_key.append(time.perf_counter() - started)
        started = time.perf_counter()
        pane._render_all()
        await pilot.pause()
        return per_key, time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--query", default="checksum 0")
    parser.add_argument("--typed", default="tail")
    options = parser.parse_args()
    for held, query in ((0, ""), (3000, options.query)):
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(options.repeat):  # the variants take turns, so load elsewhere weighs on each alike
            for name, (make, add) in VARIANTS.items():
                times[name].append(await once(make, add, options.lines, held, query))
        base = statistics.median(times["RichLog, a write per line (baseline)"])
        where = f"into a pane holding {held} lines, finding {query!r}" if held else "into an empty pane"
        print(f"{options.lines} lines in one batch, {where} (median of {options.repeat}):")
        for name, seconds in times.items():
            median = statistics.median(seconds)
            print(f"  {name:40} {median * 1000:7.1f} ms  {median / base:5.2f}x")
    runs = [await typed_find(options.typed) for _ in range(3)]
    redraw = statistics.median(run[1] for run in runs)
    print(f"typing {options.typed!r} into the find box of a pane holding 5000 lines (median of 3):")
    print(f"  {'every line drawn again (baseline)':40} {redraw * 1000:7.1f} ms  {1:5.2f}x")
    for index, letter in enumerate(options.typed):
        key = statistics.median(run[0][index] for run in runs)
        print(f"  {f'key {letter!r} answered':40} {key * 1000:7.1f} ms  {key / redraw:5.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
