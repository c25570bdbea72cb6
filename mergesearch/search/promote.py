"""Promotion: the best candidates of a search, materialised and evaluated in full.

The top-k trials by fitness (the Pareto front over the searcher's objectives for multi-objective runs;
with ``promotion.validate_top``, by their fitness on the whole search split: ``validate.py``) are merged
into model folders, run through lm-eval (``simple_evaluate``: a local YAML task built from the held-out
split's questions, plus any configured lm-eval task) and through the held-out safety
evaluation. Each candidate runs as a Ray task with the promotion's own resources. The winner (best
held-out fitness) becomes ``best/model`` and ``best/recipe.yaml``, a mergekit config anyone can run with
``mergekit-yaml`` (or, where mergekit cannot rebuild it, our recipe and a note saying so).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mergesearch.errors import UserError
from mergesearch.io import atomic_dir, atomic_write_text
from mergesearch.objectives.data import EvalData
from mergesearch.objectives.evaluate import Scores
from mergesearch.runtime import ray_session
from mergesearch.search.run_dir import RunDir, TrialResult
from mergesearch.search.searchers import mode_of, searcher
from mergesearch.search.validate import Score, best_by_fitness, validated
from mergesearch.setup import SearchSetup


def pareto_front(
    trials: list[TrialResult], keys: Sequence[str] = ("safety", "task_accuracy")
) -> list[TrialResult]:
    """Trials no other trial beats on every key (ties kept), best fitness first; a key where lower is
    better (over-refusal) counts lower as better."""

    def better(t: TrialResult, key: str) -> float:
        return -t.metric(key) if mode_of(key) == "min" else t.metric(key)

    def beaten(t: TrialResult) -> bool:
        return any(
            all(better(o, k) >= better(t, k) for k in keys) and any(better(o, k) > better(t, k) for k in keys)
            for o in trials
        )

    return sorted((t for t in trials if not beaten(t)), key=lambda t: -t.fitness)


def candidates(setup: SearchSetup, trials: list[TrialResult], top_k: int) -> list[TrialResult]:
    """The trials to promote: scored in full (a multi-fidelity trial stopped early is not a candidate)."""
    spec = searcher(setup.config.search.name)
    if spec.multi_objective:
        ok = [t for t in trials if t.full]
        return pareto_front(ok, spec.objectives(setup.config.search.objectives))[: max(top_k, 1)]
    return best_by_fitness(trials, top_k)


# What a promoted result depends on besides its genome: the models, the merge, the data, the engines, the
# judge, the fitness and what promotion runs. Not how the search went (search, resources, early_exit: the
# held-out evaluation reads whole answers), nor how many are promoted or on what share of a node.
RESULT_SECTIONS = ("models", "merge", "data", "backend", "judge", "fitness")
PROMOTION_SETTINGS = ("tasks", "batch_size", "backend")


def result_settings(config: Any, **extra: Any) -> str:
    """A digest of what a promotion result depends on (``extra``: the genes and seed of a candidate, the
    expert of a reference): a result recorded with the same digest is that result, and is kept."""
    settings = {section: getattr(config, section).model_dump(mode="json") for section in RESULT_SECTIONS}
    settings["promotion"] = config.promotion.model_dump(mode="json", include=set(PROMOTION_SETTINGS))
    text = json.dumps({**settings, **extra}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recorded_result(folder: Path, settings: str) -> dict[str, Any] | None:
    """The result in ``folder`` when it was made with ``settings`` (else None: it is made again)."""
    path = folder / "result.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("settings") == settings else None


def pool_score(setup: SearchSetup) -> Score:
    """Scores genomes on the search's own evaluators (a pool started for them, stopped after)."""

    def score(genomes: list[Mapping[str, float]], data: EvalData) -> Generator[Scores, None, None]:
        from mergesearch.actors import EvaluatorPool

        ray_session()
        pool = EvaluatorPool(setup)
        try:
            yield from pool.evaluate_each(genomes, setup.config.search.seed, data=data)
        finally:
            pool.shutdown()

    return score


def promoted_before(run: RunDir, trial: TrialResult, config: Any, seed: int) -> dict[str, Any] | None:
    """The trial's promotion result when it was made with these settings and its model is there."""
    folder = run.candidate(trial.trial_id)
    if not (folder / "model").is_dir():
        return None
    return recorded_result(folder, result_settings(config, genes=trial.genes, seed=seed))


def evaluate_candidate(
    setup: SearchSetup, genes: dict[str, float], out: Path, seed: int = 0
) -> dict[str, Any]:
    """Materialise one genome into ``out/model``; lm-eval and held-out safety results into ``out``."""
    from mergesearch.data.eval_split import load_eval_data
    from mergesearch.merge.export import materialize
    from mergesearch.merge.resident import ResidentMerger
    from mergesearch.objectives.lm_eval_tasks import lm_eval_model, run_lm_eval, write_choice_task

    setup.activate()
    config = setup.config
    # One merge: read from disk tensor by tensor (no pool held), written shard by shard.
    merger = ResidentMerger(
        setup.base, setup.experts, dtype=config.models.dtype, log=lambda _: None, pool="disk"
    )
    recipe = setup.space.decode(genes)
    model_dir = materialize(merger, recipe, setup.base, out / "model", seed=seed, tokenizer=setup.tokenizer)
    backend = promotion_backend(model_dir, config, "promotion")
    heldout = load_eval_data(str(config.data.path), "heldout")
    scores = heldout_scores(backend, heldout, config)
    tasks_dir = out / "lm_eval_tasks"
    tasks = list(config.promotion.tasks)
    if heldout.choice_items:
        tasks.append(
            write_choice_task(heldout.choice_items, backend.render, tasks_dir, "mergesearch_heldout_choice")
        )
    lm_eval = {}
    if tasks:
        with lm_eval_engine(backend, model_dir, config) as engine:
            lm_eval = run_lm_eval(lm_eval_model(config.promotion.backend, engine), tasks, tasks_dir)
    settings = result_settings(config, genes=genes, seed=seed)
    result = {"genes": genes, "heldout": scores, "lm_eval": lm_eval, "settings": settings}
    atomic_write_text(out / "result.json", json.dumps(result, indent=2) + "\n")
    return result


# The backend kind that scores held-out data: one kind for every promoted model and each expert beside
# them, so their rows compare; transformers, whose model leaves room for the guard beside it on one GPU
# (an engine of `promotion.backend` starts after the guard is closed: ``lm_eval_engine``).
HELDOUT_BACKEND = "hf"


def promotion_backend(folder: Path, config: Any, name: str) -> Any:
    """The engine that scores a promoted model, and each expert beside it, on the held-out split (the
    run's engine settings, at the promotion's batch size), made through the backend registry."""
    from mergesearch.backends.registry import make_backend

    update = {"kind": HELDOUT_BACKEND, "batch_size": config.promotion.batch_size, "sleep_mode": False}
    return make_backend(folder, config.backend.model_copy(update=update), name)


@contextlib.contextmanager
def lm_eval_engine(heldout_backend: Any, folder: Path, config: Any) -> Iterator[Any]:
    """The engine lm-eval runs a promoted model on: the held-out one when ``promotion.backend`` is its
    kind, else one of that kind from the registry, closed before the task returns (left to the collector it
    outlives the call, and Ray reuses a CPU task's worker for the next candidate, which starts its own)."""
    from mergesearch.backends.registry import make_backend

    if config.promotion.backend == HELDOUT_BACKEND:
        yield heldout_backend
        return
    engine_config = config.backend.model_copy(update={"kind": config.promotion.backend})
    with contextlib.closing(make_backend(folder, engine_config, "promotion")) as engine:
        yield engine


def heldout_scores(backend: Any, heldout: Any, config: Any) -> dict[str, Any]:
    """A model's held-out objectives, fitness and counts, and its safety per harm category."""
    from mergesearch.judges.base import make_judge
    from mergesearch.objectives.evaluate import score_model

    # Closed once it has judged: a guard on vLLM would keep its engine's processes (and, on a GPU, its
    # memory) through lm-eval's engine after it, and past the task into the next candidate's.
    with contextlib.closing(make_judge(config.judge, str(backend.device))) as judge:
        scores = score_model(backend, heldout, judge, config.fitness, config.backend.max_new_tokens)
        by_category = safety_by_category(backend, judge, config)
    return {
        "objectives": scores.objectives,
        "fitness": scores.fitness,
        "counts": scores.counts,
        "safety_by_category": by_category,
    }


def safety_by_category(backend: Any, judge: Any, config: Any) -> dict[str, dict[str, float]]:
    """The held-out harmful prompts' safe share per harm category (the report's "which harms get
    through"); answers the harmful prompts a second time, a small part of promotion's cost."""
    from mergesearch.data.eval_split import load_categorised
    from mergesearch.objectives.breakdown import CategorisedData, evaluate_model

    harmful = load_categorised(str(config.data.path), "heldout").harmful
    if not harmful:
        return {}
    report = evaluate_model(backend, judge, CategorisedData(harmful=harmful), config.backend.max_new_tokens)
    return report["safety"]["by_category"]


def evaluate_reference(setup: SearchSetup, expert: str, out: Path) -> dict[str, Any]:
    """One expert alone, scored on the held-out split as the candidates are (no lm-eval): what the report
    sets the winner beside. Written to ``out/result.json``."""
    from mergesearch.data.eval_split import load_eval_data

    setup.activate()
    config = setup.config
    with contextlib.closing(promotion_backend(setup.experts[expert], config, f"expert-{expert}")) as backend:
        scores = heldout_scores(backend, load_eval_data(str(config.data.path), "heldout"), config)
    result = {"expert": expert, "heldout": scores, "settings": result_settings(config, expert=expert)}
    atomic_write_text(out / "result.json", json.dumps(result, indent=2) + "\n")
    return result


def promote(
    run: RunDir,
    top_k: int | None = None,
    log: Callable[[str], None] = print,
    setup: SearchSetup | None = None,
) -> list[dict[str, Any]]:
    """Promote the best trials of ``run``; returns the leaderboard (best held-out fitness first).
    ``setup``: the search's own, when promotion follows it; else prepared from the run dir's config."""
    import ray

    setup = setup or SearchSetup.prepare(run.read_config(), log)
    config = setup.config
    top_k = config.promotion.top_k if top_k is None else top_k
    trials = run.trials()
    if config.promotion.validate_top:  # the candidates come from the validated (all of them, for a front)
        best = candidates(setup, trials, max(config.promotion.validate_top, top_k))
        trials = validated(run, config, best, setup.validation_data(), pool_score(setup), log)
    chosen = candidates(setup, trials, top_k)
    if not chosen:
        raise UserError(f"{run.root}: no successful trial to promote")
    log(f"promote: {len(chosen)} candidate(s): {', '.join(t.trial_id for t in chosen)}")
    seed = config.search.seed
    # A candidate promoted before with the same settings (its model written, its result recorded) is kept:
    # `promote` after `search` redoes nothing, and a changed setting redoes only what it changes.
    done = {t.trial_id: result for t in chosen if (result := promoted_before(run, t, config, seed))}
    if done:
        log(f"promote: {', '.join(done)}: promoted before with these settings, kept")
    todo_trials = [t for t in chosen if t.trial_id not in done]
    # Each expert the config names, alone, once per run dir and settings: the report's reference rows. A
    # pool file's experts are not: a pool is many, mostly there to be left out.
    named = [e.name for e in config.models.experts]
    todo = [e for e in named if not recorded_result(run.reference(e), result_settings(config, expert=e))]
    expert_refs: list[Any] = []
    if todo_trials or todo:  # nothing left to do starts no Ray session
        ray_session()
        resources = {"num_cpus": config.promotion.cpus, "num_gpus": config.promotion.gpus}
        remote = ray.remote(**resources)(evaluate_candidate)
        refs = [remote.remote(setup, t.genes, run.candidate(t.trial_id), seed) for t in todo_trials]
        alone = ray.remote(**resources)(evaluate_reference)
        expert_refs = [alone.remote(setup, e, run.reference(e)) for e in todo]
        done |= {t.trial_id: result for t, result in zip(todo_trials, ray.get(refs))}
    board = []
    for trial in chosen:
        result = done[trial.trial_id]
        heldout = result["heldout"]
        lm_eval = {  # every metric by its own name: gsm8k's exact_match as much as mmlu's acc
            f"{task}/{metric}": value
            for task, metrics in result["lm_eval"].items()
            for metric, value in metrics.items()
        }
        board.append(
            {
                "trial_id": trial.trial_id,
                # a validated trial's fitness is on the whole search split; its count keeps the search's
                "search_fitness": trial.counts.get("search_fitness", trial.fitness),
                **({"validated_fitness": trial.fitness} if config.promotion.validate_top else {}),
                "heldout_fitness": heldout["fitness"],
                **{f"heldout_{k}": v for k, v in heldout["objectives"].items()},
                **lm_eval,
                "heldout_safety_by_category": heldout.get("safety_by_category", {}),
                "genes": trial.genes,
            }
        )
        log(
            f"promote: {trial.trial_id}: held-out fitness {heldout['fitness']:.4f} "
            f"{json.dumps(heldout['objectives'])}"
        )
    board.sort(key=lambda b: -b["heldout_fitness"])
    run.write_leaderboard(board)
    publish_best(setup, run, board[0])
    for expert, ref in zip(todo, expert_refs):  # report rows only: a failure here costs no result
        try:
            result = ray.get(ref)
        except Exception as err:  # whatever the task raised (out of memory, a bad folder): logged
            first = (str(err).splitlines() or [""])[0][:200]
            log(f"promote: {expert} alone: not scored ({type(err).__name__}: {first})")
            continue
        log(f"promote: {expert} alone: held-out fitness {result['heldout']['fitness']:.4f}")
    return board


def publish_best(setup: SearchSetup, run: RunDir, winner: dict[str, Any]) -> None:
    """``best/model`` (the winner's folder) and ``best/recipe.yaml`` (how to rebuild it)."""
    from mergesearch.merge.export import recipe_file

    recipe, config = setup.space.decode(winner["genes"]), setup.config
    header = f"{config.name}: trial {winner['trial_id']}, held-out fitness {winner['heldout_fitness']:.4f}"
    text = recipe_file(
        recipe, setup.base, setup.experts, config.models.dtype, header, config.search.seed, setup.tokenizer
    )
    recipe_path = run.best / "recipe.yaml"
    if (run.best / "model").is_dir() and recipe_path.is_file() and recipe_path.read_text() == text:
        return  # this winner is published already (a model folder may be many GB to copy again)
    with atomic_dir(run.best) as tmp:
        shutil.copytree(run.candidate(winner["trial_id"]) / "model", tmp / "model")
        (tmp / "recipe.yaml").write_text(text)
