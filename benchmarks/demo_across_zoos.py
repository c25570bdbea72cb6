"""Benchmark: the demo (`mergesearch demo`) on toy zoos trained from other seeds, stand-ins for zoos trained
on other machines; per row and metric, the spread over the seeds that set the README's figures, and
whether a further seed, not used to set them, falls inside it and meets the demo's claims.

    .venv/bin/python benchmarks/demo_across_zoos.py --out benchmarks/results/demo_across_zoos.json \
        --set-seeds 0,1,2 --check-seeds 3

Training seed 0 is the shipped zoo (zoo/mergesearch_zoo/toy_zoo); another seed is trained on first use
(about 10 minutes on 2 cores) and cached. Each demo runs in ``--work``/zoo-seed-N and resumes cell by
cell, so a run stopped half-way goes on where it stopped. The claims are the ones tests/test_demo.py asserts
(``demo_claims``): the same function, so the benchmark and the test cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from demo_claims import demo_claims, row_means  # noqa: E402

from mergesearch.io import atomic_write_text  # noqa: E402
from mergesearch_zoo.recipe import TRAIN_SEED_VARIABLE, ZooRecipe  # noqa: E402


def seeds(text: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 0,1,2 (got {text!r})") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected seeds >= 0 like 0,1,2 (got {text!r})")
    return values


def run_demo(seed: int, work: Path) -> dict:
    out = work / f"zoo-seed-{seed}"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "mergesearch.cli", "demo", "--out", str(out)],
        env={**os.environ, TRAIN_SEED_VARIABLE: str(seed)},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"demo on the zoo of training seed {seed} failed:\n{done.stderr[-3000:]}")
    summary = json.loads((out / "protocol.json").read_text())
    return {
        "train_seed": seed,
        "zoo_digest": ZooRecipe(train_seed=seed).digest(),
        "wall_seconds": round(time.monotonic() - started, 1),
        "means": row_means(summary),
        "claims": demo_claims(summary),
        "expectations": summary["expectations"],
    }


def spread(runs: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Per row and metric, [min, max] of the seed means."""
    out: dict[str, dict[str, list[float]]] = {}
    for row in runs[0]["means"]:
        for metric in runs[0]["means"][row]:
            values = [r["means"][row][metric] for r in runs if metric in r["means"].get(row, {})]
            out.setdefault(row, {})[metric] = [min(values), max(values)]
    return out


def outside(run: dict, ranges: dict[str, dict[str, list[float]]]) -> list[str]:
    return [
        f"{row} {metric}: {value:.3f} not in [{ranges[row][metric][0]:.3f}, {ranges[row][metric][1]:.3f}]"
        for row, metrics in run["means"].items()
        for metric, value in metrics.items()
        if metric in ranges.get(row, {})
        and not ranges[row][metric][0] - 1e-9 <= value <= ranges[row][metric][1] + 1e-9
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--set-seeds", type=seeds, default=[0, 1, 2], help="seeds that set the spread")
    parser.add_argument("--check-seeds", type=seeds, default=[3], help="seeds checked against it")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "demo_across_zoos")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    set_runs = [run_demo(s, args.work) for s in args.set_seeds]
    ranges = spread(set_runs)
    check_runs = [run_demo(s, args.work) for s in args.check_seeds]
    result = {
        "benchmark": "demo_across_zoos",
        "commit": commit.strip(),
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "gpu": None, "platform": platform.platform()},
        "set_seeds": args.set_seeds,
        "check_seeds": args.check_seeds,
        "spread": ranges,
        "runs": set_runs + check_runs,
        "checks": {
            str(r["train_seed"]): {
                "claims_hold": all(r["claims"].values()),
                "outside_spread": outside(r, ranges),
            }
            for r in check_runs
        },
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    for r in set_runs + check_runs:
        print(
            f"seed {r['train_seed']}: claims {'hold' if all(r['claims'].values()) else 'FAIL'} {r['claims']}"
        )
    for seed, check in result["checks"].items():
        print(
            f"check seed {seed}: {len(check['outside_spread'])} means outside the spread",
            *check["outside_spread"],
        )


if __name__ == "__main__":
    main()
