"""A finished per-layer search's run dir, written as the search writes one, without running it: a TIES
search of a 30-layer, 3-expert pool (SmolLM2's depth), promoted, with each expert scored alone. The report
tests read it, and benchmarks/report_screenshot.py renders it in a browser."""

from __future__ import annotations

import json
from pathlib import Path

from mergesearch.config import SearchConfig
from mergesearch.search.run_dir import RunDir, TrialResult

EXPERTS = ("aligned", "math", "bio")
LAYERS = 30


def per_layer_genes(shift: float) -> dict[str, float]:
    return {
        f"{param}.{expert}.g{layer}": round((shift + 0.1 * i + 0.01 * layer) % 1, 4)
        for param in ("w", "d")
        for i, expert in enumerate(EXPERTS)
        for layer in range(LAYERS)
    }


def per_layer_run(root: Path) -> RunDir:
    """A finished per-layer TIES search of a 30-layer, 3-expert pool, promoted, as its run dir holds it."""
    run = RunDir(root)
    config = SearchConfig.model_validate(
        {
            "name": "per_layer",
            "models": {
                "base": "/models/base",
                "experts": [{"name": e, "path": f"/models/{e}"} for e in EXPERTS],
            },
            "merge": {"method": "ties", "granularity": "layer"},
            "data": {"path": "/data/set"},
        }
    )
    run.write_config(config)
    trials = [
        TrialResult(
            genes=per_layer_genes(i / 10),
            fitness=0.5 + 0.04 * i,
            objectives={"safety": 0.6 + 0.03 * i, "task_accuracy": 0.5, "over_refusal": 0.1},
            trial_id=f"t{i:04d}",
            index=i,
        )
        for i in range(10)
    ]
    run.write_trials(trials, list(trials[0].genes))
    winner = trials[-1]
    run.write_leaderboard(
        [
            {
                "trial_id": winner.trial_id,
                "search_fitness": winner.fitness,
                "heldout_fitness": 0.8,
                "heldout_safety": 0.9,
                "heldout_task_accuracy": 0.7,
                "heldout_over_refusal": 0.05,
                "gsm8k/exact_match (strict-match)": 0.41,
                "gsm8k/exact_match (flexible-extract)": 0.44,
                "mmlu/acc": 0.6,
                "heldout_safety_by_category": {
                    "S1: violent crimes": {"rate": 1.0, "n": 4},
                    "S2: non-violent crimes": {"rate": 0.75, "n": 4},
                },
                "genes": winner.genes,
            }
        ]
    )
    for expert, safety in (("aligned", 1.0), ("math", 0.125), ("bio", 0.5)):
        result = {
            "expert": expert,
            "heldout": {
                "fitness": 0.4 + safety / 4,
                "objectives": {"safety": safety, "task_accuracy": 0.3, "over_refusal": 0.0},
                "counts": {},
                "safety_by_category": {"S1: violent crimes": {"rate": safety, "n": 4}},
            },
        }
        run.reference(expert).mkdir(parents=True)
        (run.reference(expert) / "result.json").write_text(json.dumps(result))
    return run
