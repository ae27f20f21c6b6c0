"""Helpers shared by tests."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args: str, timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real ``tuneloop`` command in a subprocess (same interpreter, same environment)."""
    return subprocess.run(
        [sys.executable, "-m", "tuneloop.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )
