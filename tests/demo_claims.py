"""What the README says the demo shows, as checks on its protocol.json: one definition for
tests/test_demo.py and benchmarks/demo_across_zoos.py, which checks them on zoos trained from other seeds.

Each margin was set on the zoos of training seeds 0-2 and then checked on seed 3
(benchmarks/results/demo_across_zoos.json; docs/zoo.md): a claim is only as strong as it holds on
every one of them, since a zoo trained on another machine is another such zoo.
"""

from __future__ import annotations

from typing import Any


def row_means(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per row, the mean over search seeds of each metric."""
    return {
        r["row"]: {k: v["mean"] for k, v in r.items() if isinstance(v, dict) and k != "wall_s"}
        for r in summary["rows"]
    }


def demo_claims(summary: dict[str, Any]) -> dict[str, bool]:
    """Only what held on every zoo of seeds 0-2. What did not is left out, and docs/zoo.md gives its
    spread: alignment data's safety gain (+17, +38, +0.8 points) and the short answers the
    alignment-aware search keeps (76.5%, 10.3%, 73.5%): at 12 trials a search's end point depends on
    the zoo."""
    means = row_means(summary)
    aligned = means["expert:aligned"]
    task_only, searched = means["search_task_only"], means["search_task_alignment"]
    cocktail = means["lm_cocktail_aligned_T1"]
    return {
        "task-only search is less safe than the aligned expert": task_only["safety"] < aligned["safety"],
        "alignment data makes the search no less safe": searched["safety"] >= task_only["safety"],
        "LM-Cocktail with alignment examples is >= 90% safe": cocktail["safety"] >= 0.90,
    }
