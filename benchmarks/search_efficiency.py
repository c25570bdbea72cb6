"""Benchmark: how fast each searcher finds a good merge on the demo config, how busy evaluators are (JSON).

    .venv/bin/python benchmarks/search_efficiency.py --out benchmarks/results/search_efficiency.json

Each searcher runs the demo search (toy zoo, search_spaces/demo.yaml, its data spec) with the same trial
budget for several seeds, in one Ray session. Reported per searcher: the best fitness reached (mean and
per seed), trials needed to reach the target fitness (the 95th percentile of every fitness seen in the
benchmark; a run that never reaches it counts as budget + 1), genomes per hour per evaluator actor, and
the idle share of evaluator time (wall time the evaluators were not evaluating; target < 10%), over the
whole session and in steady state (first evaluation to last).
Claim under test: CMA-ES beats random search at equal budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from mergesearch.config import load_config
from mergesearch.io import atomic_write_text
from mergesearch.runtime import offline_and_quiet, ray_session
from mergesearch.search.run_dir import RunDir, TrialResult
from mergesearch.workflow import SEARCH_ONLY, prepare, search_to_report

CONFIG = Path(__file__).parent.parent / "search_spaces" / "demo.yaml"


def steady_idle_share(trials: list[TrialResult], evaluators: int) -> float:
    """Idle share while the search runs: from the first evaluation's start to the last one's end (the
    session's share also counts Ray/Tune start-up and shut-down, a fixed few seconds)."""
    busy = [t.timings["evaluator"] for t in trials]
    window = max(t.finished_at for t in trials) - min(t.finished_at - b for t, b in zip(trials, busy))
    return max(0.0, 1 - sum(busy) / (window * evaluators))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--searchers", default="cma,random,tpe")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--work", type=Path, default=Path("runs/bench_search_efficiency"))
    args = parser.parse_args()
    offline_and_quiet()
    ray_session(num_cpus=os.cpu_count())
    base = load_config(CONFIG)
    setup = prepare(base, CONFIG, RunDir(args.work / "shared"), lambda m: print(m, file=sys.stderr))
    runs: dict[str, list[dict]] = {}
    for name in args.searchers.split(","):
        for seed in range(args.seeds):
            search = setup.config.search.model_copy(
                update={"name": name, "seed": seed, "num_trials": args.trials}
            )
            config = setup.config.model_copy(update={"search": search})
            run = RunDir(args.work / f"{name}_seed{seed}")
            started = time.perf_counter()
            search_to_report(dataclasses.replace(setup, config=config), run, lambda m: None, SEARCH_ONLY)
            wall = time.perf_counter() - started
            trials = run.trials()
            efficiency = run.efficiency()[-1]
            runs.setdefault(name, []).append(
                {
                    "seed": seed,
                    "fitness": [t.fitness for t in trials],
                    "wall_s": wall,
                    **efficiency,
                    "steady_idle_share": steady_idle_share(trials, efficiency["evaluators"]),
                }
            )
            best = max(t.fitness for t in trials)
            idle = efficiency["idle_share"]
            print(
                f"{name} seed {seed}: best {best:.4f} in {wall:.0f}s, idle {idle:.2%}",
                file=sys.stderr,
                flush=True,
            )
    everything = [f for rs in runs.values() for r in rs for f in r["fitness"]]
    target = float(np.percentile(everything, 95))
    searchers = {}
    for name, rs in runs.items():
        reach = [
            next(
                (i + 1 for i, f in enumerate(np.maximum.accumulate(r["fitness"])) if f >= target),
                args.trials + 1,
            )
            for r in rs
        ]
        searchers[name] = {
            "best_fitness_mean": round(statistics.mean(max(r["fitness"]) for r in rs), 4),
            "best_fitness_per_seed": [round(max(r["fitness"]), 4) for r in rs],
            "trials_to_target_mean": round(statistics.mean(reach), 2),
            "trials_to_target_per_seed": reach,
            "genomes_per_hour_per_evaluator": round(
                statistics.mean(args.trials / (r["wall_s"] / 3600) / r["evaluators"] for r in rs), 1
            ),
            "idle_share_mean": round(statistics.mean(r["idle_share"] for r in rs), 4),
            "steady_idle_share_mean": round(statistics.mean(r["steady_idle_share"] for r in rs), 4),
            "evaluator_busy_s_per_trial": round(
                statistics.mean(r["evaluator_busy_s"] / args.trials for r in rs), 3
            ),
        }
    result = {
        "benchmark": "search_efficiency",
        "config": str(CONFIG.name),
        "trials_per_run": args.trials,
        "seeds": args.seeds,
        "target_fitness": round(target, 4),
        "searchers": searchers,
        "cma_beats_random": searchers.get("cma", {}).get("best_fitness_mean", 0)
        > searchers.get("random", {}).get("best_fitness_mean", 1),
        "targets": {"idle_share": 0.10},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
