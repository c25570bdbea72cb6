"""The demo config as tests start from it.

The demo's fitness uses the toy guard model (``judge: llama_guard``); tests that exercise something other
than the judge swap in the pattern judge, the fast offline option, so that they do not start a judge
actor. The guard judge in a search has its own tests (``test_search.py``, ``test_vllm_backend.py``).
"""

from __future__ import annotations

from pathlib import Path

import yaml

DEMO = Path(__file__).resolve().parents[1] / "search_spaces" / "demo.yaml"
PATTERN_JUDGE = {"kind": "refusal"}


def demo_config(resolved: bool = True, judge: dict | None = PATTERN_JUDGE) -> dict:
    """The demo config as a dict: ``resolved`` through the loader (``zoo:`` references become folders)
    or as written; ``judge`` replaces its judge (``None``: keep the demo's guard)."""
    from mergesearch.config import load_config

    config = load_config(DEMO).model_dump(mode="json") if resolved else yaml.safe_load(DEMO.read_text())
    if judge is not None:
        config["judge"] = dict(judge)
    return config
