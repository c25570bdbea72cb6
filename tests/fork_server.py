"""Runs ``python -m MODULE ARGS`` for the tests, each run in a process of its own, without each paying again
for the imports every run repeats.

A CLI run that fails on bad input takes about 3 s, and 2.3 s of it is importing torch (the merge methods
register themselves when their module is imported, and that module needs torch); a ``mergekit-yaml`` run on
the toy zoo takes about 8 s, and 7.5 s of it is importing mergekit. The tests run the CLI ~100 times and
mergekit ~30 times. A server imports those libraries once and forks a child per run: the child is a real
process with its own exit status, its own file descriptors 0-2, working directory, environment and
file-size limit, and it ends the way an interpreter ends (``atexit`` handlers run; an uncaught exception
prints its traceback and exits 1). The module itself is not imported before the fork, so a run sees the
plugins and settings of its own environment, as a fresh process would. What differs: settings the
preloaded libraries read when imported come from the server's environment (the session's), a file-size
limit applies to the captured stdout and stderr too (they are files, not pipes), and a working directory
that does not exist is the child's error (exit 1), not the caller's.

Server: ``python fork_server.py MODULE [PRELOAD ...]``; one JSON request per line on stdin (``args``,
``cwd``, ``env``, ``stdout``, ``stderr``: the files the child writes to, ``file_size_limit``), one JSON line
back per request (``returncode``). Client: ``ForkServer``.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import resource
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path


class ForkServer:
    """The test session's server for one module, started on first use and closed at exit."""

    def __init__(self, module: str, preload: Sequence[str]) -> None:
        self.module, self.preload = module, tuple(preload)
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def run(
        self,
        args: Sequence[str],
        cwd: Path | str | None = None,
        env: Mapping[str, str] | None = None,
        file_size_limit: int | None = None,
    ) -> subprocess.CompletedProcess:
        """``python -m MODULE ARGS`` in a process of its own; ``file_size_limit`` makes every write past that
        many bytes per file fail (EFBIG), the way a full disk fails it."""
        with self._lock, tempfile.TemporaryDirectory(prefix="mergesearch-fork-") as scratch:
            out, err = Path(scratch, "stdout"), Path(scratch, "stderr")
            request = {
                "args": list(args),
                "cwd": str(Path(cwd or os.getcwd()).resolve()),
                "env": dict(os.environ if env is None else env),
                "stdout": str(out),
                "stderr": str(err),
                "file_size_limit": file_size_limit,
            }
            process = self._started()
            try:
                process.stdin.write(json.dumps(request) + "\n")
                process.stdin.flush()
                reply = process.stdout.readline()
            except BaseException:  # a timeout or ^C mid-run: its reply would answer the next request
                self._kill()
                raise
            if not reply:
                raise RuntimeError(f"the fork server for {self.module} died (exit {process.wait()})")
            return subprocess.CompletedProcess(
                [sys.executable, "-m", self.module, *args],
                json.loads(reply)["returncode"],
                out.read_text() if out.exists() else "",
                err.read_text() if err.exists() else "",
            )

    def _started(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, __file__, self.module, *self.preload],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,  # its own process group: killed with the run it is serving
            )
            atexit.register(self.close)
        return self._process

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.stdin.close()
            self._process.wait(timeout=30)

    def _kill(self) -> None:
        """The server and the run it was serving, gone; the next run starts a fresh server."""
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
            self._process = None


def _become(module: str, request: dict) -> None:
    """In the child: take the request's process state, then run ``module`` as ``python -m`` would."""
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # importing torch fixed it from the server's TMPDIR: read this run's
    # `python -m` puts the working directory first on sys.path (where this script's folder was), then
    # PYTHONPATH.
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:1] = [request["cwd"], *extra]
    if request.get("file_size_limit") is not None:
        limit = request["file_size_limit"]
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.argv = [module, *request["args"]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def serve(module: str, preload: Sequence[str]) -> None:
    for name in preload:
        importlib.import_module(name)
    while line := sys.stdin.readline():
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _become(module, request)
            return  # the module returned without sys.exit: the child ends here, with status 0
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2:])
