"""The LM-Cocktail baseline next to the search: a linear merge weighted by each expert's loss."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from mergesearch.merge.genome import GenomeSpace
from mergesearch.objectives.evaluate import token_counts
from mergesearch.search.run_dir import RunDir
from mergesearch.setup import SearchSetup


def cocktail_weights(losses: dict[str, float], temperature: float) -> dict[str, float]:
    """LM-Cocktail: softmax(−loss / T) over the experts."""
    top = max(-v / temperature for v in losses.values())
    exps = {k: math.exp(-v / temperature - top) for k, v in losses.items()}
    total = sum(exps.values())
    return {k: v / total for k, v in exps.items()}


def expert_losses(evaluator: Any, rows: Sequence[tuple[str, str, str]]) -> dict[str, float]:
    """Each expert's mean per-token NLL on ``rows`` (prompt, response, type), the expert merged alone
    into ``evaluator``'s live model (an ``Evaluator`` over a linear space)."""
    backend, space = evaluator.backend, evaluator.space
    requests = [(backend.render(p), r) for p, r, _ in rows]
    tokens = max(1, sum(token_counts(backend, requests)))
    losses = {}
    for expert in space.experts:
        evaluator.merge(space.expert_alone(expert))
        losses[expert] = -sum(ll for ll, _ in backend.loglikelihood(requests)) / tokens
    return losses


def run_baselines(
    setup: SearchSetup,
    run: RunDir,
    temperature: float = 5.0,
    examples: int = 8,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """LM-Cocktail (linear merge, weights from each expert's loss on a few examples per type), with and
    without alignment examples, scored like a trial on the search split; into ``baselines.json``.

    The merges run in a Ray task with an evaluator's resources, never in the driver (on a cluster the
    driver is a small head node: it would hold the whole pool and the guard). Baselines already made
    with the same settings are kept."""
    import ray

    from mergesearch.runtime import ray_session
    from mergesearch.search.promote import result_settings

    settings = result_settings(setup.config, temperature=temperature, examples=examples)
    recorded = run.baselines()
    if recorded and all(b.get("settings") == settings for b in recorded):
        log(f"baselines: {', '.join(b['name'] for b in recorded)} made before with these settings, kept")
        return recorded
    ray_session()
    resources = setup.config.resources
    task = ray.remote(num_cpus=resources.cpus_per_evaluator, num_gpus=resources.gpus_per_evaluator)
    results = ray.get(task(cocktail_baselines).remote(setup, temperature, examples))
    for result in results:
        result["settings"] = settings
        shown = json.dumps({k: round(v, 3) for k, v in result["weights"].items()})
        log(f"baseline {result['name']}: weights {shown} fitness {result['fitness']:.4f}")
    run.write_baselines(results)
    return results


def cocktail_baselines(setup: SearchSetup, temperature: float, examples: int) -> list[dict[str, Any]]:
    """The two LM-Cocktail merges of ``setup``'s experts, each scored like a trial (in the calling
    process: a Ray task's)."""
    from mergesearch.actors import Evaluator

    setup.activate()
    experts = list(setup.experts)
    space = GenomeSpace("linear", experts, setup.space.num_layers)
    linear = dataclasses.replace(
        setup,
        config=setup.config.model_copy(
            update={
                "merge": setup.config.merge.model_copy(
                    update={"method": "linear", "granularity": "global", "bounds": {}, "params": {}}
                )
            }
        ),
        space=space,
    )
    with contextlib.closing(Evaluator(linear, log=lambda _: None)) as evaluator:
        return _cocktails(evaluator, temperature, examples)


def _cocktails(evaluator: Any, temperature: float, examples: int) -> list[dict[str, Any]]:
    few: dict[str, list[tuple[str, str, str]]] = {}
    for row in evaluator.data.tagged:
        few.setdefault(row[2], []).append(row)
    results = []
    for name, types in (("lm_cocktail", ("task",)), ("lm_cocktail_aligned", ("task", "alignment"))):
        rows = [r for t in types for r in few.get(t, [])[:examples]]
        losses = expert_losses(evaluator, rows)
        weights = cocktail_weights(losses, temperature)
        scores = evaluator.evaluate({evaluator.space.gene("weight", e): w for e, w in weights.items()})
        results.append(
            {
                "name": name,
                "examples_per_type": examples,
                "types": list(types),
                "temperature": temperature,
                "losses": losses,
                "weights": weights,
                "fitness": scores.fitness,
                "objectives": scores.objectives,
            }
        )
    return results
