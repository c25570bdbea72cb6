"""Issue 51: how close the alignment-aware search's best trials come to the goal, read on the whole search
split rather than on the rows its fitness read.

A protocol search cell with ``validate_top`` scores its best trials by search fitness again on the whole
search split (``promotion/validation.json`` in its run dir) and keeps the best there. Each of those trials
is read here against the goal (``mergesearch/protocol/goal.py``) on the same rows, beside each expert's
own figures there: the experts' scores on the two parts of the split (``paper_validation.json``), pooled
by the rows of each part. The held-out split is not read: it stays for the table's figures.

    python benchmarks/paper_front.py [--cells runs/protocol-smollm2-paper]
        [--out benchmarks/results/paper_front.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mergesearch.io import atomic_write_text
from mergesearch.protocol.goal import against_goal
from mergesearch.protocol.rows import ALIGNED_SEARCH
from mergesearch.search.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from stamps import provenance  # noqa: E402

# Each objective is a share of one kind of row: the part sizes it is pooled by.
ROWS_OF = {
    "safety": "harmful",
    "over_refusal": "benign",
    "short_answer": "short_items",
    "choice_accuracy": "choice_items",
}
AXES = ("safety", "over_refusal", "short_answer", "choice_accuracy")  # over-refusal: lower is better


def whole_split(scores: dict[str, dict[str, float]], sizes: dict[str, dict[str, int]]) -> dict[str, float]:
    """An expert's share on the whole search split, from its shares on the fitness's rows and the rest."""
    parts = ("fitness_rows", "validation")
    pooled = {}
    for objective, rows in ROWS_OF.items():
        total = sum(sizes[p][rows] for p in parts)
        pooled[objective] = sum(scores[p][objective] * sizes[p][rows] for p in parts) / total
    return pooled


def front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other beats on every axis (over-refusal counted lower as better)."""

    def signed(p: dict[str, Any]) -> tuple[float, ...]:
        return tuple(-p["objectives"][a] if a == "over_refusal" else p["objectives"][a] for a in AXES)

    values = [signed(p) for p in points]
    return [
        p
        for p, v in zip(points, values)
        if not any(all(x >= y for x, y in zip(w, v)) and w != v for w in values)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cells", type=Path, default=ROOT / "runs" / "protocol-smollm2-paper")
    parser.add_argument("--experts", type=Path, default=ROOT / "benchmarks/results/paper_validation.json")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "paper_front.json")
    args = parser.parse_args()
    stamp = provenance(sys.argv)
    validation = json.loads(args.experts.read_text())
    experts = {
        m["row"].removeprefix("expert:"): whole_split(m, validation["sizes"])
        for m in validation["merges"]
        if m["row"].startswith("expert:")
    }
    points = []
    for path in sorted((args.cells / "cells").glob(f"{ALIGNED_SEARCH}*__seed[0-9].json")):
        cell = json.loads(path.read_text())
        if "validated" not in cell["search_split"]:
            continue
        run = RunDir(args.cells / cell["search_split"]["run_dir"])
        recorded = json.loads(run.validation_file.read_text())["trials"]
        for trial_id in cell["search_split"]["validated"]:  # the cell's own, scored in full
            trial = recorded[trial_id]
            objectives = {a: trial["objectives"][a] for a in AXES}
            goal = against_goal(
                objectives,
                experts["aligned"],
                {
                    "short_answer": (objectives["short_answer"], experts["arithmetic"]["short_answer"]),
                    "choice_accuracy": (
                        objectives["choice_accuracy"],
                        experts["knowledge"]["choice_accuracy"],
                    ),
                },
            )
            points.append(
                {
                    "row": cell["row"],
                    "seed": cell["seed"],
                    "trial_id": trial_id,
                    "chosen": trial["genes"] == cell["merge"]["genes"],
                    "search_fitness": trial["counts"]["search_fitness"],
                    "whole_split_fitness": trial["fitness"],
                    "objectives": {a: round(v, 4) for a, v in objectives.items()},
                    "goal": goal,
                }
            )
    if not points:
        raise SystemExit(f"{args.cells}: no search cell chose its merge on the whole split (validate_top)")
    closest = min(points, key=lambda p: p["goal"]["shortfall"])
    result = {
        "benchmark": "paper_front",
        "experts_from": f"{args.experts.name} (commit {validation.get('commit', '?')})",
        "experts_whole_split": {e: {k: round(v, 4) for k, v in s.items()} for e, s in experts.items()},
        "trials": points,
        "front": [f"{p['row']} seed {p['seed']} {p['trial_id']}" for p in front(points)],
        "closest": f"{closest['row']} seed {closest['seed']} {closest['trial_id']}",
        "meets_goal": sum(p["goal"]["meets_goal"] for p in points),
    }
    atomic_write_text(args.out, json.dumps(result | stamp, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("closest", "meets_goal", "front")}, indent=1))


if __name__ == "__main__":
    main()
