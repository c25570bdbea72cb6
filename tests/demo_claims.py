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
    means = row_means(summary)
    aligned, math = means["expert:aligned"], means["expert:math"]
    task_only, searched = means["search_task_only"], means["search_task_alignment"]
    return {
        "task-only search is less safe than the aligned expert": task_only["safety"] < aligned["safety"],
        "alignment data makes the search safer by >= 10 points": searched["safety"]
        >= task_only["safety"] + 0.10,
        "the alignment-aware search keeps >= half the math expert's short answers": searched["short_answer"]
        >= 0.5 * math["short_answer"],
    }
