"""Runs ``python -m mergesearch.cli ARGS`` for the tests, each in its own process, without each paying for
importing torch again.

A CLI run that fails on bad input takes about 3 s, and 2.3 s of it is importing torch (the merge methods
register themselves when their module is imported, and that module needs torch). The catalogue of bad
inputs alone runs the CLI ~60 times. This server imports the heavy third-party libraries once and forks a
child per run: the child is a real process with its own exit status, its own file descriptors 1 and 2, its
own working directory, environment and file-size limit, and it ends the way an interpreter ends (``atexit``
handlers run, an uncaught exception prints its traceback and exits 1). Nothing of mergesearch is imported
before the fork, so a run sees the plugins and settings of its own environment, as a fresh process would.

Protocol: one JSON request per line on stdin (``args``, ``cwd``, ``env``, ``stdout``, ``stderr``: the files
the child writes to, ``file_size_limit``), one JSON line back per request (``returncode``).
"""

from __future__ import annotations

import json
import os
import resource
import runpy
import signal
import sys

import click  # noqa: F401  (imported before the fork: that is the point of this server)
import pydantic  # noqa: F401
import torch  # noqa: F401
import yaml  # noqa: F401


def _become_the_cli(request: dict) -> None:
    """In the child: take the request's process state, then run the CLI as ``python -m`` would."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    # `python -m` puts the working directory first on sys.path; PYTHONPATH comes next.
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:0] = [request["cwd"], *extra]
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    if request.get("file_size_limit"):
        limit = request["file_size_limit"]
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.argv = ["mergesearch", *request["args"]]
    runpy.run_module("mergesearch.cli", run_name="__main__", alter_sys=True)


def serve() -> None:
    while line := sys.stdin.readline():
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _become_the_cli(request)
            return  # the CLI returned without sys.exit: the child ends here, with status 0
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    serve()
