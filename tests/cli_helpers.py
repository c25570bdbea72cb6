"""Running the CLI as a user does (a process of its own) and checking its one-line errors.

Each run is a child forked from a server that has imported torch once (``fork_server.py`` says why): a run
keeps everything a subprocess gives a test (exit status, stdout, stderr, working directory, environment,
files left behind). ``subprocess.run`` stays where a test is about the interpreter itself (``-X importtime``,
what is imported before what).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from fork_server import ForkServer

# Third-party only: mergesearch itself is imported in each run, so that each sees its own plugins.
_CLI = ForkServer("mergesearch.cli", preload=("torch", "pydantic", "yaml", "click"))


def run(
    *args: str,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    file_size_limit: int | None = None,
) -> subprocess.CompletedProcess:
    """``python -m mergesearch.cli ARGS`` in a process of its own (``ForkServer.run``)."""
    return _CLI.run(args, cwd=cwd, env=env, file_size_limit=file_size_limit)


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, exactly one ``error:`` line on stderr, no traceback, every fragment in that line."""
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
