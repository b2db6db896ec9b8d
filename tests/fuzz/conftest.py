"""Fuzzing: how long each target ran and on how many inputs, at the end of the run."""

from __future__ import annotations

from typing import Any

from .harness import RUNS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RUNS:
        return
    terminalreporter.section("fuzzing")
    for run in RUNS:
        rate = run.inputs / run.seconds if run.seconds else 0.0
        terminalreporter.write_line(
            f"{run.target:15} {run.inputs:8d} inputs in {run.seconds:6.1f} s"
            f" ({rate:.0f}/s)"
        )
