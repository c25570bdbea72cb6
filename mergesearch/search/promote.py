"""Promotion: the best candidates of a search, materialised and evaluated in full.

The top-k trials by fitness (the Pareto front over safety and task accuracy for multi-objective runs)
are merged into model folders, run through lm-eval (``simple_evaluate``: a local YAML task built from the
held-out split's questions, plus any configured lm-eval task) and through the held-out safety
evaluation. Each candidate runs as a Ray task with the promotion's own resources. The winner (best
held-out fitness) becomes ``best/model`` and ``best/recipe.yaml``, a mergekit config anyone can run with
``mergekit-yaml``.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mergesearch.config import SearchConfig
from mergesearch.errors import UserError
from mergesearch.io import atomic_dir, atomic_write_text
from mergesearch.search.ledger import genes_of, read_trials
from mergesearch.search.searchers import MULTI_OBJECTIVE_SEARCHERS

PROMOTION_DIR = "promotion"
LEADERBOARD = "leaderboard.json"


def pareto_front(
    rows: list[dict[str, Any]], keys: tuple[str, str] = ("safety", "task_accuracy")
) -> list[dict[str, Any]]:
    """Rows no other row beats on both keys (ties kept), best fitness first."""
    front = [
        r
        for r in rows
        if not any(all(o[k] >= r[k] for k in keys) and any(o[k] > r[k] for k in keys) for o in rows)
    ]
    return sorted(front, key=lambda r: -r["fitness"])


def candidates(config: SearchConfig, rows: list[dict[str, Any]], top_k: int) -> list[dict[str, Any]]:
    ok = [
        r for r in rows if r["status"] == "ok" and r["fitness"] is not None and not math.isnan(r["fitness"])
    ]
    if config.search.name in MULTI_OBJECTIVE_SEARCHERS:
        return pareto_front(ok)[: max(top_k, 1)]
    return sorted(ok, key=lambda r: -r["fitness"])[:top_k]


def evaluate_candidate(
    config: SearchConfig, genes: dict[str, float], out: Path, seed: int = 0
) -> dict[str, Any]:
    """Materialise one genome into ``out/model``; lm-eval and held-out safety results into ``out``."""
    from mergesearch.backends.hf import HFBackend
    from mergesearch.judges.base import make_judge
    from mergesearch.merge.export import materialize
    from mergesearch.merge.genome import space_from_config
    from mergesearch.merge.resident import ResidentMerger
    from mergesearch.model_paths import resolve_pool
    from mergesearch.objectives.data import EvalData
    from mergesearch.objectives.evaluate import score_model
    from mergesearch.objectives.lm_eval_tasks import backend_lm, hf_lm, run_lm_eval, write_choice_task

    base, experts = resolve_pool(config.models)
    merger = ResidentMerger(base, experts, dtype=config.models.dtype, log=lambda _: None)
    space = space_from_config(config.merge, list(experts), merger.num_layers)
    recipe = space.decode(genes)
    out = Path(out)
    model_dir = materialize(merger, recipe, base, out / "model", seed=seed)
    backend = HFBackend.from_pretrained(
        model_dir,
        device=config.backend.device,
        batch_size=config.backend.batch_size,
        max_new_tokens=config.backend.max_new_tokens,
    )
    heldout = EvalData.from_dataset(config.data.path, "heldout")
    scores = score_model(
        backend,
        heldout,
        make_judge(config.judge, str(backend.device)),
        config.fitness,
        config.backend.max_new_tokens,
    )
    tasks_dir = out / "lm_eval_tasks"
    tasks = list(config.promotion.tasks)
    if heldout.choice_items:
        tasks.append(
            write_choice_task(heldout.choice_items, backend.render, tasks_dir, "mergesearch_heldout_choice")
        )
    lm_eval = {}
    if tasks:
        if config.promotion.backend == "vllm":
            from mergesearch.backends.vllm import VLLMBackend

            lm = backend_lm(VLLMBackend.from_pretrained(model_dir, config.backend, name="promotion"))
        else:
            lm = hf_lm(backend.model, backend.tokenizer, config.promotion.batch_size, str(backend.device))
        lm_eval = run_lm_eval(lm, tasks, tasks_dir)
    result = {
        "genes": genes,
        "heldout": {"objectives": scores.objectives, "fitness": scores.fitness, "counts": scores.counts},
        "lm_eval": lm_eval,
    }
    atomic_write_text(out / "result.json", json.dumps(result, indent=2) + "\n")
    return result


def promote(
    run_dir: Path, top_k: int | None = None, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Promote the best trials of ``run_dir``; returns the leaderboard (best held-out fitness first)."""
    import ray

    from mergesearch.search.tuner import NAMESPACE, load_run_config

    run_dir = Path(run_dir).resolve()
    config = load_run_config(run_dir)
    rows = read_trials(run_dir)
    chosen = candidates(config, rows, config.promotion.top_k if top_k is None else top_k)
    if not chosen:
        raise UserError(f"{run_dir}: no successful trial to promote")
    log(f"promote: {len(chosen)} candidate(s): {', '.join(r['trial_id'] for r in chosen)}")
    if not ray.is_initialized():
        ray.init(namespace=NAMESPACE, include_dashboard=False, configure_logging=False, log_to_driver=False)
    remote = ray.remote(num_cpus=config.promotion.cpus, num_gpus=config.promotion.gpus)(evaluate_candidate)
    refs = [
        remote.remote(config, genes_of(r), run_dir / PROMOTION_DIR / r["trial_id"], config.search.seed)
        for r in chosen
    ]
    board = []
    for row, result in zip(chosen, ray.get(refs)):
        board.append(
            {
                "trial_id": row["trial_id"],
                "search_fitness": row["fitness"],
                "heldout_fitness": result["heldout"]["fitness"],
                **{f"heldout_{k}": v for k, v in result["heldout"]["objectives"].items()},
                **{
                    f"{task}/{metric}": value
                    for task, metrics in result["lm_eval"].items()
                    for metric, value in metrics.items()
                    if metric in ("acc", "acc_norm")
                },
                "genes": genes_of(row),
            }
        )
        log(
            f"promote: {row['trial_id']}: held-out fitness {result['heldout']['fitness']:.4f} {json.dumps(result['heldout']['objectives'])}"
        )
    board.sort(key=lambda b: -b["heldout_fitness"])
    atomic_write_text(run_dir / PROMOTION_DIR / LEADERBOARD, json.dumps(board, indent=2) + "\n")
    publish_best(config, run_dir, board[0])
    return board


def publish_best(config: SearchConfig, run_dir: Path, winner: dict[str, Any]) -> None:
    """``best/model`` (the winner's folder) and ``best/recipe.yaml`` (mergekit's config for it)."""
    from mergesearch.merge.export import NOT_IN_MERGEKIT, recipe_to_mergekit
    from mergesearch.merge.genome import space_from_config
    from mergesearch.merge.resident import model_config
    from mergesearch.model_paths import resolve_pool

    base, experts = resolve_pool(config.models)
    space = space_from_config(config.merge, list(experts), model_config(base).get("num_hidden_layers"))
    recipe = space.decode(winner["genes"])
    with atomic_dir(run_dir / "best") as tmp:
        shutil.copytree(run_dir / PROMOTION_DIR / winner["trial_id"] / "model", tmp / "model")
        if recipe.method in NOT_IN_MERGEKIT:
            body = {
                "note": f"mergekit has no {recipe.method!r}; rebuild with mergesearch's engine",
                "recipe": recipe.model_dump(mode="json"),
            }
        else:
            body = recipe_to_mergekit(recipe, base, experts, config.models.dtype)
        (tmp / "recipe.yaml").write_text(
            f"# {config.name}: trial {winner['trial_id']}, held-out fitness {winner['heldout_fitness']:.4f}\n"
            + yaml.safe_dump(body, sort_keys=False)
        )
