"""Benchmark: which levers move the alignment-aware search towards the paper's goal on real language (JSON).

    .venv/bin/python benchmarks/paper_levers.py --out benchmarks/results/paper_levers.json [--levers a,b]

Issue 51's screen: each lever is one change to ``search_spaces/smollm2_guard.yaml`` (the SmolLM2 family
judged by its guard, the alignment-aware fitness), searched at one seed and 40 evaluations. Levers are
compared on the **search split** only, by what the search itself saw: the best trial's fitness and its
objectives (safety, over-refusal, the two skills), never on held-out data, which scores only the final
choices (the protocol). The goal is read against the experts scored on the same search split here: safety
within 3 points of the aligned expert's, over-refusal at most 5 points above it, and at least 90% of the
arithmetic expert's short answers and of the knowledge expert's multiple-choice accuracy. Per lever: the
best trial by fitness, the trials that meet the goal and the one closest to it (the smallest shortfall:
the most any part misses its bound by); over every lever screened: the front, the trials no other beats
on safety, over-refusal and both skills at once, each read against the goal.

Each lever's search keeps its run dir (``--work``) and resumes; a finished lever is read back, so the screen
is built over several runs and the JSON is rewritten after each lever. What each side includes: one
evaluator actor and the guard's actor on 2 cores, a merge and a score per trial.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from mergesearch.config import SearchConfig, gene_id, read_yaml, validate_mapping
from mergesearch.io import atomic_write_text
from mergesearch.protocol.goal import against_goal
from mergesearch.runtime import offline_and_quiet, ray_session
from mergesearch.search.run_dir import RunDir
from mergesearch.workflow import SEARCH_ONLY, prepare, search_to_report

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "search_spaces" / "smollm2_guard.yaml"
sys.path.insert(0, str(ROOT / "benchmarks"))
from stamps import provenance  # noqa: E402

ALIGNED, ARITHMETIC, KNOWLEDGE = "aligned", "arithmetic", "knowledge"
TASK_ONLY_BOUNDS = {"weight": {"low": 0.0, "high": 1.5}}

# Each lever: the config keys it changes, in the order the screen runs them. Its ``merge`` section replaces
# the config's whole (bounds of one method are no bounds of another); other sections are merged key by key.
LEVERS: dict[str, dict[str, Any]] = {
    # today's best protocol row: task-arithmetic weights, one per expert
    "ta_global": {"merge": {"method": "task_arithmetic", "bounds": TASK_ONLY_BOUNDS}},
    # per-layer genes, as the paper searched: one weight per expert per 6 decoder layers (5 groups; the
    # family trained its top 12 layers only, so the lower three groups move nothing)
    "ta_layer_groups": {
        "merge": {
            "method": "task_arithmetic",
            "granularity": "groups",
            "group_size": 6,
            "bounds": TASK_ONLY_BOUNDS,
        }
    },
    # finer per-layer genes: one weight per expert per 3 layers (10 groups; the top four move)
    "ta_layer_groups_3": {
        "merge": {
            "method": "task_arithmetic",
            "granularity": "groups",
            "group_size": 3,
            "bounds": TASK_ONLY_BOUNDS,
        }
    },
    # DARE-TIES with per-layer genes
    "dare_ties_layer_groups": {
        "merge": {
            "method": "dare_ties",
            "granularity": "groups",
            "group_size": 6,
            "bounds": {**TASK_ONLY_BOUNDS, "density": {"low": 0.1, "high": 1.0}},
        }
    },
    # DARE-TIES: sparsified task vectors interfere less
    "dare_ties_global": {
        "merge": {"method": "dare_ties", "bounds": {**TASK_ONLY_BOUNDS, "density": {"low": 0.1, "high": 1.0}}}
    },
    # over-refusal weighed as heavily as safety
    "ta_global_over_refusal_1": {
        "merge": {"method": "task_arithmetic", "bounds": TASK_ONLY_BOUNDS},
        "fitness": {"weights": {"safety": 1.0, "task_accuracy": 1.0, "over_refusal": 1.0}},
    },
    # twice the alignment prompts per evaluation (48 harmful, 48 benign)
    "ta_global_alignment_48": {
        "merge": {"method": "task_arithmetic", "bounds": TASK_ONLY_BOUNDS},
        "data": {"max_alignment_prompts": 48},
    },
    # a multi-objective search of the per-layer genes: NSGA-II over safety, over-refusal and each skill
    "ta_layer_groups_nsga2": {
        "merge": {
            "method": "task_arithmetic",
            "granularity": "groups",
            "group_size": 6,
            "bounds": TASK_ONLY_BOUNDS,
        },
        "search": {
            "name": "nsga2",
            "objectives": ["safety", "over_refusal", "short_answer", "choice_accuracy"],
        },
    },
    # per-layer genes scored on three times the task prompts and twice the alignment prompts: a winner
    # chosen on 16 questions a skill is partly chosen for its luck on them (the protocol's first search
    # cells kept far less of each skill on held-out prompts than on the 16 they were chosen on)
    "ta_layer_groups_prompts_48": {
        "merge": {
            "method": "task_arithmetic",
            "granularity": "groups",
            "group_size": 6,
            "bounds": TASK_ONLY_BOUNDS,
        },
        "data": {"max_alignment_prompts": 48, "max_task_prompts": 48},
    },
    # the method as a searched choice (TPE: CMA takes no categorical gene)
    "method_choice_tpe": {
        "merge": {"method": "task_arithmetic", "choices": ["dare_ties", "della", "breadcrumbs", "ties"]},
        "search": {"name": "tpe"},
    },
}


def merged(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``change``'s keys set, nested mappings merged key by key."""
    out = copy.deepcopy(base)
    for key, value in change.items():
        out[key] = (
            merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def lever_config(raw: dict[str, Any], lever: str, seed: int, trials: int) -> SearchConfig:
    change = merged(
        LEVERS[lever], {"search": {"seed": seed, "num_trials": trials}, "name": f"levers_{lever}"}
    )
    return validate_mapping(SearchConfig, merged({**raw, "merge": {}}, change), f"{CONFIG} (lever {lever})")


def on_resolved(setup: Any, lever: SearchConfig) -> Any:
    """``setup`` (its models and dataset resolved, its data made) searching as ``lever`` says: the lever's
    merge space, fitness, searcher and prompt counts; everything else as resolved."""
    spaced = setup.with_merge(lever.merge)
    counts = lever.data.model_dump(include={"max_alignment_prompts", "max_task_prompts"})
    config = spaced.config.model_copy(
        update={
            "name": lever.name,
            "fitness": lever.fitness,
            "search": lever.search,
            "data": spaced.config.data.model_copy(update=counts),
        }
    )
    return dataclasses.replace(spaced, config=config)


def expert_scores(setup: Any) -> dict[str, dict[str, float]]:
    """Each expert alone on the search split (a task-arithmetic merge with its weight at 1), as a trial is
    scored: the references the goal is read against."""
    from mergesearch.actors import Evaluator
    from mergesearch.config import MergeSpaceConfig

    evaluator = Evaluator(setup.with_merge(MergeSpaceConfig(method="task_arithmetic")), log=lambda _: None)
    scores = {}
    for expert in setup.experts:
        genes = {f"w.{gene_id(e)}.g0": float(e == expert) for e in setup.experts}
        result = evaluator.evaluate(genes, 0)
        scores[expert] = {**result.objectives, **result.counts, "fitness": result.fitness}
    return scores


def read_against_goal(scores: dict[str, float], experts: dict[str, dict[str, float]]) -> dict[str, Any]:
    """A trial read against the goal on the search split: the arithmetic expert's short answers and the
    knowledge expert's multiple-choice answers are the skills it keeps a share of."""
    return against_goal(
        scores,
        experts[ALIGNED],
        {
            "short_answer": (scores.get("contains_answer"), experts[ARITHMETIC].get("contains_answer")),
            "choice_accuracy": (scores.get("choice_acc"), experts[KNOWLEDGE].get("choice_acc")),
        },
    )


FRONT_AXES = ("safety", "over_refusal", "contains_answer", "choice_acc")  # over-refusal: lower is better


def front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats on every axis of ``FRONT_AXES`` (the achievable front seen)."""

    def signed(p: dict[str, Any]) -> tuple[float, ...]:
        return tuple(-p["scores"][a] if a == "over_refusal" else p["scores"][a] for a in FRONT_AXES)

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x >= y for x, y in zip(a, b)) and a != b

    values = [signed(p) for p in points]
    return [p for p, v in zip(points, values) if not any(dominates(w, v) for w in values)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--levers", default=",".join(LEVERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--work", type=Path, default=Path("runs/bench_paper_levers"))
    args = parser.parse_args()
    unknown = [lever for lever in args.levers.split(",") if lever not in LEVERS]
    if unknown:
        parser.error(f"unknown lever(s) {', '.join(unknown)}; known: {', '.join(LEVERS)}")
    stamp = provenance(sys.argv)  # at the start: the code this run loaded
    offline_and_quiet()
    ray_session(num_cpus=os.cpu_count())
    raw = read_yaml(CONFIG)
    log = lambda message: print(message, file=sys.stderr, flush=True)
    base = lever_config(raw, "ta_global", args.seed, args.trials)
    setup = prepare(base, CONFIG, RunDir(args.work / "data"), log)
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result |= {"benchmark": "paper_levers", "config": CONFIG.name, "seed": args.seed, "trials": args.trials}
    # the experts on the search split, by the prompts scored (a lever may change them)
    references = {k: v for k, v in result.get("experts_search_split", {}).items() if k.endswith("prompts")}
    result["experts_search_split"] = references
    levers = result.setdefault("levers", {})
    for lever in args.levers.split(","):
        config = lever_config(raw, lever, args.seed, args.trials)
        run = RunDir(args.work / f"{lever}_seed{args.seed}")
        started = time.perf_counter()
        lever_setup = on_resolved(setup, config)
        prompts = (
            f"{config.data.max_alignment_prompts} alignment, {config.data.max_task_prompts} task prompts"
        )
        if prompts not in references or not isinstance(references[prompts], dict):
            references[prompts] = expert_scores(lever_setup)
        experts = references[prompts]
        searched_before = lever in levers and run.trial_count() >= args.trials
        search_to_report(lever_setup, run, log, SEARCH_ONLY)
        trials = [t for t in run.trials() if t.status == "ok" and t.full]
        if not trials:
            log(f"lever {lever}: no trial succeeded (see {run.root})")
            continue
        best = max(trials, key=lambda t: t.fitness)
        scores = {**best.objectives, **best.counts}
        read = [(t, read_against_goal({**t.objectives, **t.counts}, experts)) for t in trials]
        closest, closest_read = min(read, key=lambda pair: pair[1]["shortfall"])
        levers[lever] = {
            "change": LEVERS[lever],
            "experts_scored_on": prompts,
            "trials": len(trials),
            "best_fitness": round(best.fitness, 4),
            "best_trial_index": best.index,
            "best": {k: round(v, 4) for k, v in scores.items()},
            "best_genes": {k: round(v, 4) for k, v in best.genes.items()},
            "against_goal": read_against_goal(scores, experts),
            "trials_meeting_goal": sum(r["meets_goal"] for _, r in read),
            "closest_to_goal": {"index": closest.index, "genes": closest.genes, **closest_read},
            "fitness_by_trial": [round(t.fitness, 4) for t in sorted(trials, key=lambda t: t.index)],
            "points": [
                {
                    "index": t.index,
                    "scores": {a: round({**t.objectives, **t.counts}[a], 4) for a in FRONT_AXES},
                    "against_goal": r,
                }
                for t, r in read
            ],
            # the run that searched it (a lever read back keeps its first run's)
            "wall_s": levers.get(lever, {}).get("wall_s")
            or levers.get(lever, {}).get("wall_s_this_run")
            or round(time.perf_counter() - started, 1),
            # the commit a lever's search ran at: this run's start, or, read back, the run that searched it
            **({k: levers[lever][k] for k in stamp} if searched_before else stamp),
        }
        seen = [{"lever": name, **p} for name, entry in levers.items() for p in entry["points"]]
        result["front"] = front(seen)  # each point read against the goal on its own lever's references
        log(f"lever {lever}: best fitness {best.fitness:.4f}, {levers[lever]['against_goal']}")
        atomic_write_text(args.out, json.dumps(result | stamp, indent=2) + "\n")


if __name__ == "__main__":
    main()
