"""Process-wide settings every entry point (CLI, benchmarks, tests) wants before loading models."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mergesearch.errors import UserError

if TYPE_CHECKING:
    import torch


def offline_and_quiet() -> None:
    """No hub look-ups (nothing can be downloaded here), no per-tensor progress bars, no fork warnings."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # lm-eval's local tasks load as datasets
    os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's per-request bars: our progress lines say enough
    # Read when transformers is imported (and by Ray workers, which inherit them): importing it here to
    # quiet it would cost every command half a second, one that fails on a bad input included.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # imported before this call: too late for the variables
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()


def cache_root() -> Path:
    """Where built models and fetched files are cached (by content hash): ``$MERGESEARCH_CACHE``."""
    return Path(os.environ.get("MERGESEARCH_CACHE", Path.home() / ".cache" / "mergesearch"))


def code_version() -> str:
    """The code a result was made with: mergesearch's version and, run from a git checkout, its commit
    ("+dirty" when the package's own tracked files were changed: a result file or doc being written is
    not the code), so a table built over several runs says which code made each part."""
    import subprocess

    from mergesearch import __version__

    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            # no optional locks: a status taking the index lock could fail a commit made meanwhile
            done = subprocess.run(
                ["git", "--no-optional-locks", *args], cwd=root, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") if (root / ".git").exists() else ""
    if not commit:
        return __version__
    dirty = "+dirty" if git("status", "--porcelain", "--untracked-files=no", "--", "mergesearch") else ""
    return f"{__version__} {commit[:12]}{dirty}"


def check_ray_address(address: str) -> None:
    """A ``host:port`` address must answer: Ray itself retries an unreachable head for minutes, flooding
    stderr, and a malformed one is a ValueError deep in ``ray.init``. (``auto`` and ``ray://`` pass.)"""
    import socket

    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"Ray address {address!r} (RAY_ADDRESS): expected host:port, auto or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise UserError(
            f"Ray address {address} (RAY_ADDRESS): no Ray head answers ({err.strerror or err})"
        ) from None


NAMESPACE = "mergesearch"  # every named actor (evaluators, routers, judges) lives here


def ray_session(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``, as under ``ray job submit``) or start a local Ray, once per
    process, the same way for search, promotion and data generation.

    Actor output stays in the Ray logs (dashboard, ``ray logs``): the driver prints its own progress.
    A local start turns token auth on and writes the token itself (Ray 2.60), so a fresh machine needs
    no manual step; the dashboard is off unless ``MERGESEARCH_DASHBOARD=1``.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_ray_address(address)
    # A local start turns token auth on and says so on stderr: keep it on, keep stderr ours.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    local = {
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,  # logical GPUs on a machine without any: a rehearsal of a GPU layout
        "include_dashboard": os.environ.get("MERGESEARCH_DASHBOARD") == "1",
        "dashboard_host": "127.0.0.1",  # this machine only; a cluster's head is set up by `ray start`
    }
    ray.init(
        # "local": a fresh Ray, never the last `ray start` head on this machine, which a bare ray.init() joins
        # (and, if that head is gone, waits on for minutes). Clusters are joined through RAY_ADDRESS.
        address=address or "local",
        namespace=NAMESPACE,
        log_to_driver=False,
        configure_logging=False,
        **({} if address else local),
    )


def withheld_gpu() -> bool:
    """Whether this process is a Ray worker (actor or task) that Ray gave no GPU share. Ray 2.60 leaves
    such a worker's CUDA_VISIBLE_DEVICES as it found it, so torch still sees the node's GPUs, and a
    device of ``auto`` would take one the scheduler never counted (seen on an H100: tests/test_cuda.py)."""
    ray = sys.modules.get("ray")  # a process that never imported Ray is no Ray worker
    if ray is None or not ray.is_initialized():
        return False
    return ray.get_runtime_context().worker.mode == ray.WORKER_MODE and not ray.get_gpu_ids()


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device a backend, judge or merge computes on. ``auto``: CUDA when there is one that this
    process may take (a Ray worker given no GPU share computes on the CPU); ``cuda`` on a machine without
    it is named, not a torch assertion. Here, below every backend, so that actors and the CLI choose a
    device without importing one backend's module."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and not withheld_gpu() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r}: this machine has no CUDA GPU (or torch was built without CUDA)")
    return torch.device(device)
