"""Running the CLI as a user does (a subprocess) and checking its one-line errors."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mergesearch.cli", *args], capture_output=True, text=True)


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, exactly one ``error:`` line on stderr, no traceback, every fragment in that line."""
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
