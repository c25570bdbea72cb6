"""Benchmark: a 16-expert search must find the real experts among 13 distractors (JSON).

    .venv/bin/python benchmarks/many_experts.py --out benchmarks/results/many_experts.json [--seeds 3]

Per seed, searches at the same trial budget, data, fitness and judge (search_spaces/toy16.yaml):

- ``select_cma``: the 16-expert pool (pools/toy16.yaml), gates; greedy selection over the gates, then
  CMA over the selected experts' weights (``select_then_search.py``);
- ``gates_cma``: the same pool, CMA over every gate and weight at once (32 genes);
- ``right_3``: CMA over the three real experts only, no gates: what a user who knew the answer runs.

Each search's best trial is promoted (held-out safety, over-refusal and task accuracy: the held-out
fitness). Reported per search: the experts its winner merges (gate open), whether every real expert is
among them and which distractors are (target for the 16-expert searches: every real expert and at most
one distractor in each seed's winner), the search and held-out fitness, and the wall clock (Ray, Tune and
actor start-up, the search, promotion; the pool's build is not counted: it is cached before).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from mergesearch.config import SearchConfig, load_config
from mergesearch.io import atomic_write_text
from mergesearch.runtime import offline_and_quiet, ray_session
from mergesearch.search.run_dir import RunDir
from mergesearch.setup import SearchSetup
from mergesearch.workflow import Steps, prepare, search_to_report
from mergesearch_zoo.layout import EXPERTS

CONFIG = Path(__file__).resolve().parent.parent / "search_spaces" / "toy16.yaml"


def variant_config(base: SearchConfig, variant: str, seed: int, trials: int) -> SearchConfig:
    data = base.model_dump()
    data["search"] |= {"seed": seed, "num_trials": trials}
    data["promotion"] |= {"top_k": 1}
    if variant == "gates_cma":
        data["search"]["name"] = "cma"
    elif variant == "right_3":
        data["models"] |= {"pool": None, "experts": [{"name": e, "path": f"zoo:{e}"} for e in EXPERTS]}
        data["merge"]["gates"] = None
        data["search"]["name"] = "cma"
    return SearchConfig.model_validate(data)


def one_search(base: SearchConfig, data, variant: str, seed: int, trials: int, work: Path) -> dict:
    """One search and its promotion; a search finished by an earlier invocation is read back (its row is
    kept in its run dir), so a stopped benchmark goes on where it stopped."""
    run = RunDir(work / f"{variant}_seed{seed}")
    kept = run.root / "bench_row.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    config = variant_config(base, variant, seed, trials)
    setup = SearchSetup.prepare(config, log=lambda _: None).with_data(data)
    started = time.perf_counter()
    promoted = Steps(baselines=False, promote=True, report=False, top_k=1)
    board = search_to_report(setup, run, lambda _: None, promoted)
    wall = time.perf_counter() - started
    winner = board[0]
    merged = setup.space.open_experts(winner["genes"])
    recipe = setup.space.decode(winner["genes"])
    weights = dict(zip(setup.space.experts, recipe.expert_params["weight"][0]))
    trials_done = run.trials()
    row = {
        "merged": list(merged),
        "weights": {e: round(weights[e], 3) for e in merged},
        "every_real_expert": set(EXPERTS) <= set(merged),
        "distractors": [e for e in merged if e not in EXPERTS],
        "search_fitness": round(winner["search_fitness"], 4),
        "heldout_fitness": round(winner["heldout_fitness"], 4),
        "heldout": {k[len("heldout_") :]: round(v, 4) for k, v in winner.items() if k.startswith("heldout_")},
        "trials": len(trials_done),
        "wall_s": round(wall, 1),
    }
    row["meets_target"] = row["every_real_expert"] and len(row["distractors"]) <= 1
    atomic_write_text(kept, json.dumps(row) + "\n")
    print(f"{variant} seed {seed}: {json.dumps(row)}", file=sys.stderr, flush=True)
    return row


def summary(rows: list[dict]) -> dict:
    held = [r["heldout_fitness"] for r in rows]
    return {
        "seeds_meeting_target": sum(r["meets_target"] for r in rows),
        "heldout_fitness_mean": round(statistics.mean(held), 4),
        "heldout_fitness_per_seed": held,
        "wall_s_mean": round(statistics.mean(r["wall_s"] for r in rows), 1),
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=120)
    parser.add_argument("--variants", default="select_cma,gates_cma,right_3", help="NAME[:SEEDS],...")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_many_experts"))
    args = parser.parse_args()
    offline_and_quiet()
    ray_session(num_cpus=os.cpu_count())
    base = load_config(CONFIG)
    shared = prepare(base, CONFIG, RunDir(args.work / "shared"), lambda m: print(m, file=sys.stderr))
    data = shared.config.data  # the pool built if needed, the data made once for every variant
    variants: dict[str, dict] = {}
    for entry in args.variants.split(","):
        variant, _, seeds = entry.partition(":")
        rows = [
            one_search(base, data, variant, seed, args.trials, args.work)
            for seed in range(int(seeds or args.seeds))
        ]
        variants[variant] = {"seeds": len(rows), "per_seed": rows, **summary(rows)}
    result = {
        "benchmark": "many_experts",
        "config": CONFIG.name,
        "pool": {"experts": len(shared.experts), "real": list(EXPERTS)},
        "trials_per_search": args.trials,
        "seeds": {name: v["seeds"] for name, v in variants.items()},
        "target": "every real expert and at most one distractor in each seed's winner",
        "variants": variants,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
