"""The search: a Ray Tune experiment whose trials route genomes to resident evaluator actors.

Trials are light Tune function trainables (a sliver of CPU); the evaluator actors own the CPUs/GPUs and
the models. A router actor hands each trial a free evaluator, so trials run asynchronously (no
generation barrier): at most one evaluation per evaluator runs at a time, and one more proposal per
evaluator waits at the router, so an evaluator never idles while the searcher and Tune turn around. A failed merge or evaluation
becomes a finite penalty with its error recorded; the search goes on.

Everything lives in the run dir. Running the same command again (or ``mergesearch resume``) restores the
Tune experiment with its searcher state; a trial Tune re-runs because the driver died after it finished
reports its ledgered result instead of evaluating again.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mergesearch.config import SearchConfig, load_config
from mergesearch.errors import UserError
from mergesearch.io import atomic_write_text
from mergesearch.search.ledger import PENALTY, BudgetStopper, TrialLedger, finished_results, read_trials
from mergesearch.search.searchers import (
    MULTI_OBJECTIVE_SEARCHERS,
    SearchProblem,
    check_searcher,
    grid_size,
    make_searcher,
)

NAMESPACE = "mergesearch"
TUNE_DIR = "tune"
CONFIG_FILE = "config.yaml"


class Router:
    """Hands out free evaluators (an async Ray actor), and the ledger of finished trials for resumes."""

    def __init__(self, evaluators: list, finished: dict[str, dict]) -> None:
        self.free: asyncio.Queue = asyncio.Queue()
        for handle in evaluators:
            self.free.put_nowait(handle)
        self.finished = finished
        self.finished_genomes = {result["genes_json"]: result for result in finished.values()}
        self.busy_s = 0.0

    async def acquire(self) -> Any:
        return await self.free.get()

    async def release(self, handle: Any, busy_s: float) -> None:
        self.busy_s += busy_s
        self.free.put_nowait(handle)

    async def finished_result(self, trial_id: str, genes_json: str) -> dict | None:
        """A ledgered result for this trial, or for the same genome (a trial that finished after Tune's last
        state save is proposed again, under a new id, by the restored searcher)."""
        return self.finished.get(trial_id) or self.finished_genomes.get(genes_json)

    async def total_busy_s(self) -> float:
        return self.busy_s


def _flatten(result: dict[str, Any], genes: dict[str, float]) -> dict[str, Any]:
    timings = result["timings"]
    return {
        "fitness": float(result["fitness"]),
        **{k: float(v) for k, v in result["objectives"].items()},
        "status": "ok",
        "error": "",
        "merge_s": timings["merge"],
        "generate_s": timings["generate"],
        "judge_s": timings["judge"],
        "score_s": timings["score"],
        "load_s": timings["load"],
        "files_opened": result["files_opened"],
        "genes_json": json.dumps(genes),
        "counts_json": json.dumps(result["counts"]),
    }


def _penalty(error: str, genes: dict[str, float]) -> dict[str, Any]:
    return {
        "fitness": PENALTY,
        "safety": 0.0,
        "task_accuracy": 0.0,
        "status": "failed",
        "error": error[:300],
        "genes_json": json.dumps(genes),
        "counts_json": "{}",
    }


def make_trainable(router_name: str, gene_names: list[str], seed: int) -> Callable[[dict], None]:
    def evaluate_genome(config: dict) -> None:
        import ray
        from ray import tune

        router = ray.get_actor(router_name, namespace=NAMESPACE)
        trial_id = tune.get_context().get_trial_id()
        genes = {k: float(config[k]) for k in gene_names}
        done = ray.get(router.finished_result.remote(trial_id, json.dumps(genes)))
        if done is not None:  # finished before a driver crash; Tune did not record it
            tune.report({**done, "evaluator_s": done.get("evaluator_s") or 0.0})
            return
        evaluator = ray.get(router.acquire.remote())
        started = time.perf_counter()
        try:
            result = ray.get(evaluator.evaluate.remote(genes, seed))
            metrics = _flatten(result, genes)
            if math.isnan(metrics["fitness"]):
                metrics = _penalty("fitness is NaN (an objective could not be computed)", genes)
        except Exception as error:  # noqa: BLE001 - any failed merge/evaluation is a recorded penalty
            cause = getattr(error, "cause", None) or error
            metrics = _penalty(
                f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}",
                genes,
            )
        finally:
            elapsed = time.perf_counter() - started
            router.release.remote(evaluator, elapsed)
        tune.report({**metrics, "evaluator_s": elapsed})

    return evaluate_genome


def warm_starts(config: SearchConfig, space) -> list[dict[str, float]]:  # noqa: ANN001 - a GenomeSpace
    points = []
    for kind in config.search.warm_starts:
        if kind == "uniform":
            points.append(space.uniform())
        else:
            points += [space.expert_alone(e) for e in space.experts]
    bounds = space.gene_bounds()
    return [{k: min(max(v, bounds[k][0]), bounds[k][1]) for k, v in p.items()} for p in points]


def check_models(config: SearchConfig, log: Callable[[str], None] = print) -> Path:
    """Every model of the config resolved and checked against the base before a run dir or an actor
    exists: a wrong path or a mismatched expert is one line, not a search of failed trials."""
    from mergesearch.merge.resident import check_compatible
    from mergesearch.model_paths import resolve_pool

    base, experts = resolve_pool(config.models, log)
    check_compatible(base, experts)
    return base


def run_search(
    config: SearchConfig, run_dir: Path, log: Callable[[str], None] = print, ray_address: str | None = None
) -> Path:
    """Run (or resume) the search of ``config`` in ``run_dir``; returns the run dir."""
    import ray
    from ray import tune

    from mergesearch.actors import evaluator_actor, judge_actor
    from mergesearch.merge.genome import space_from_config

    base = check_models(config, log)
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / CONFIG_FILE
    resolved = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    if saved.is_file() and yaml.safe_load(saved.read_text()) != config.model_dump(mode="json"):
        raise UserError(
            f"{run_dir}: already holds a search with a different config ({saved}); pick another run name or resume it as it is"
        )
    atomic_write_text(saved, resolved)
    # Experiment state (searcher included) saved at least every second; a trial that finished after the last
    # save is re-reported from the ledger on resume, never re-evaluated.
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "1"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    if not ray.is_initialized():
        # Actor output stays in the Ray logs (dashboard, `ray logs`); the driver prints one line per trial.
        ray.init(
            address=ray_address or os.environ.get("RAY_ADDRESS"),
            namespace=NAMESPACE,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    from mergesearch.merge.resident import model_config

    num_layers = model_config(base).get("num_hidden_layers")
    space = space_from_config(config.merge, [e.name for e in config.models.experts], num_layers)
    check_searcher(config.search.name, config.merge.granularity, space.gene_names())
    gene_names = space.gene_names()
    bounds = space.gene_bounds()
    concurrency = config.resources.num_evaluators
    num_trials = config.search.num_trials
    if config.search.name == "grid":
        num_trials = min(
            num_trials, grid_size(SearchProblem(bounds, num_trials, concurrency, config.search.seed))
        )
    problem = SearchProblem(
        bounds, num_trials, 2 * concurrency, config.search.seed, tuple(warm_starts(config, space))
    )

    done = read_trials(run_dir)
    if len({r["trial_id"] for r in done}) >= num_trials:
        log(
            f"search: {run_dir.name} already has {len(done)} finished trials (budget {num_trials}); nothing to run"
        )
        return run_dir
    log(
        f"search: {config.search.name} over {len(gene_names)} genes ({', '.join(gene_names[:6])}{' ...' if len(gene_names) > 6 else ''}), "
        f"{num_trials} trials, {concurrency} evaluator(s); run dir {run_dir}"
    )
    judge = judge_actor(config).remote(config) if config.judge.kind == "llama_guard" else None
    tag = f"{run_dir.name}-{os.getpid()}"
    evaluators = [
        evaluator_actor(config)
        .options(name=f"evaluator-{tag}-{i}", namespace=NAMESPACE)
        .remote(config, judge)
        for i in range(concurrency)
    ]
    router_name = f"router-{tag}"
    router = (
        ray.remote(num_cpus=0)(Router)
        .options(name=router_name, namespace=NAMESPACE)
        .remote(evaluators, finished_results(run_dir))
    )
    trainable = tune.with_resources(
        make_trainable(router_name, gene_names, config.search.seed), {"cpu": 0.001}
    )
    ledger = TrialLedger(str(run_dir), num_trials, gene_names)
    tune_path = run_dir / TUNE_DIR
    started = time.perf_counter()
    try:
        if tune.Tuner.can_restore(str(tune_path)):
            log(f"search: resuming {len(done)} finished trial(s) from {tune_path}")
            tuner = tune.Tuner.restore(
                str(tune_path), trainable=trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            searcher = make_searcher(config.search.name, problem)
            multi = config.search.name in MULTI_OBJECTIVE_SEARCHERS
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=tune.search.ConcurrencyLimiter(searcher, max_concurrent=2 * concurrency),
                    num_samples=num_trials,
                    time_budget_s=config.search.time_budget_s,
                    reuse_actors=True,
                    **({} if multi else {"metric": "fitness", "mode": "max"}),
                ),
                run_config=tune.RunConfig(
                    name=TUNE_DIR,
                    storage_path=str(run_dir),
                    callbacks=[ledger],
                    stop=BudgetStopper(str(run_dir), num_trials),
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=2),
                ),
            )
        tuner.fit()
        busy = ray.get(router.total_busy_s.remote())
    finally:
        for handle in [*evaluators, router, *([judge] if judge is not None else [])]:
            ray.kill(handle)
    wall = time.perf_counter() - started
    _write_efficiency(run_dir, busy, wall, concurrency)
    return run_dir


def _write_efficiency(run_dir: Path, busy_s: float, wall_s: float, evaluators: int) -> None:
    """Evaluator busy share over this session (idle = waiting for the searcher or Tune)."""
    path = run_dir / "efficiency.json"
    sessions = json.loads(path.read_text()) if path.is_file() else []
    sessions.append(
        {
            "wall_s": round(wall_s, 2),
            "evaluator_busy_s": round(busy_s, 2),
            "evaluators": evaluators,
            "idle_share": round(1 - busy_s / max(wall_s * evaluators, 1e-9), 4),
        }
    )
    atomic_write_text(path, json.dumps(sessions, indent=2) + "\n")


def load_run_config(run_dir: Path) -> SearchConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: not a search run dir (no {CONFIG_FILE})")
    return load_config(path)
