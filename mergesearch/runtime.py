"""Process-wide settings every entry point (CLI, benchmarks, tests) wants before loading models."""

from __future__ import annotations

import os


def offline_and_quiet() -> None:
    """No hub look-ups (nothing can be downloaded here), no per-tensor progress bars, no fork warnings."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
