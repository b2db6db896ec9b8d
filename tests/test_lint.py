"""The code stays as the style asks: ruff-clean and formatted, and mypy-strict where
the package is ours (settings in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [
        ("ruff", "check", "."),
        ("ruff", "format", "--check", "."),
        ("mypy",),
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_the_code_is_clean(command: tuple[str, ...]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if "No module named" in result.stderr:
        pytest.fail(f"{command[0]} is missing: pip install -e '.[test]'")
    assert result.returncode == 0, (
        f"{' '.join(command)}:\n{result.stdout}{result.stderr}"
    )
