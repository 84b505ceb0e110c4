"""The fault suite's summary: recovery figures measured by the tests, printed at the end of the run."""

from __future__ import annotations

FIGURES: dict[str, str] = {}
"""What each fault test measured (time to recover, runs lost, duplicate fires), by scenario."""


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("fault suite: recovery figures")
        for name, figure in FIGURES.items():
            terminalreporter.write_line(f"{name:58} {figure}")
