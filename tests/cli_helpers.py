"""Running the CLI as a user does (a process of its own) and checking its one-line errors.

Each run is a child forked from ``cli_server.py``, which has imported torch once (see its docstring): a run
keeps everything a subprocess gives a test (exit status, stdout, stderr, working directory, environment,
files left behind) without paying ~2.3 s to import torch again. ``subprocess.run`` stays where a test is
about the interpreter itself (``-X importtime``, what is imported before what).
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

SERVER = Path(__file__).with_name("cli_server.py")


class _CliServer:
    """The one server process of this test session, started on first use."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def run(
        self, args: list[str], cwd: Path, env: Mapping[str, str], file_size_limit: int | None
    ) -> subprocess.CompletedProcess:
        with self._lock, tempfile.TemporaryDirectory(prefix="mergesearch-cli-") as scratch:
            out, err = Path(scratch, "stdout"), Path(scratch, "stderr")
            request = {
                "args": args,
                "cwd": str(cwd),
                "env": dict(env),
                "stdout": str(out),
                "stderr": str(err),
                "file_size_limit": file_size_limit,
            }
            process = self._started()
            process.stdin.write(json.dumps(request) + "\n")
            process.stdin.flush()
            reply = process.stdout.readline()
            if not reply:
                raise RuntimeError(f"the CLI server died (exit {process.wait()})")
            return subprocess.CompletedProcess(
                [sys.executable, "-m", "mergesearch.cli", *args],
                json.loads(reply)["returncode"],
                out.read_text() if out.exists() else "",
                err.read_text() if err.exists() else "",
            )

    def _started(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            atexit.register(self.close)
        return self._process

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.stdin.close()
            self._process.wait(timeout=30)


_SERVER = _CliServer()


def run(
    *args: str,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    file_size_limit: int | None = None,
) -> subprocess.CompletedProcess:
    """``python -m mergesearch.cli ARGS`` in a process of its own; ``file_size_limit`` makes every write past
    that many bytes per file fail (EFBIG), the way a full disk fails it."""
    return _SERVER.run(
        list(args), Path(cwd or os.getcwd()), os.environ if env is None else env, file_size_limit
    )


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, exactly one ``error:`` line on stderr, no traceback, every fragment in that line."""
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
