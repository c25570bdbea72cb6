"""The search: a Ray Tune experiment whose trials route genomes to resident evaluator actors.

Trials are light Tune function trainables (a sliver of CPU); the evaluator actors own the CPUs/GPUs and
the models. A router actor hands each trial a free evaluator, so trials run asynchronously (no
generation barrier): at most one evaluation per evaluator runs at a time, and one more proposal per
evaluator waits at the router, so an evaluator never idles while the searcher and Tune turn around.
A failed merge or evaluation becomes a finite penalty with its error recorded; the search goes on.

Everything lives in the run dir. Running the same command again (or ``mergesearch resume``) restores the
Tune experiment with its searcher state; a trial Tune re-runs because the driver died after it finished
reports its ledgered result instead of evaluating again.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from mergesearch.merge.genome import GenomeSpace
from mergesearch.runtime import NAMESPACE, ray_session
from mergesearch.search.ledger import BudgetStopper, TrialLedger
from mergesearch.search.run_dir import RunDir, TrialResult
from mergesearch.search.searchers import SearchProblem, searcher
from mergesearch.setup import SearchSetup

Log = Callable[[str], None]


class Router:
    """Hands out free evaluators (an async Ray actor), and the ledger of finished trials for resumes."""

    def __init__(self, evaluators: list[Any], finished: list[TrialResult]) -> None:
        self.free: asyncio.Queue = asyncio.Queue()
        for handle in evaluators:
            self.free.put_nowait(handle)
        self.by_trial = {t.trial_id: t for t in finished}
        self.by_genome = {_key(t.genes): t for t in finished}
        self.busy_s = 0.0

    async def acquire(self) -> Any:
        return await self.free.get()

    async def release(self, handle: Any, busy_s: float) -> None:
        self.busy_s += busy_s
        self.free.put_nowait(handle)

    async def finished_result(self, trial_id: str, genes: dict[str, float]) -> TrialResult | None:
        """A ledgered result for this trial, or for the same genome (a trial that finished after Tune's last
        state save is proposed again, under a new id, by the restored searcher)."""
        return self.by_trial.get(trial_id) or self.by_genome.get(_key(genes))

    async def total_busy_s(self) -> float:
        return self.busy_s


def _key(genes: dict[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted(genes.items()))


def _error_line(error: BaseException) -> str:
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[-1] if text else ''}"


# A trial only waits on the router, so it holds no CPU: a CPU share, however small, would not fit once
# the evaluators and the judge hold every core (a 2-core machine with a guard judge waited forever). Tune
# refuses an empty request, so a trial asks for one byte of Ray's `memory` resource, which every node has.
TRIAL_RESOURCES = {"cpu": 0, "memory": 1}


def make_trainable(router_name: str, gene_names: list[str], seed: int) -> Callable[[dict], None]:
    def evaluate_genome(config: dict) -> None:
        import ray
        from ray import tune

        router = ray.get_actor(router_name, namespace=NAMESPACE)
        genes = {k: float(config[k]) for k in gene_names}
        done = ray.get(router.finished_result.remote(tune.get_context().get_trial_id(), genes))
        if done is not None:  # finished before a driver crash; Tune did not record it
            tune.report(done.report())
            return
        evaluator = ray.get(router.acquire.remote())
        started = time.perf_counter()
        try:
            scores = ray.get(evaluator.evaluate.remote(genes, seed))
            result = TrialResult.from_scores(scores, genes, evaluator=time.perf_counter() - started)
        except Exception as error:  # any failed merge/evaluation is a recorded penalty
            result = TrialResult.failed(_error_line(error), genes, evaluator=time.perf_counter() - started)
        finally:
            router.release.remote(evaluator, time.perf_counter() - started)
        tune.report(result.report())

    return evaluate_genome


def warm_starts(space: GenomeSpace, kinds: Sequence[str], log: Log = print) -> list[dict[str, float]]:
    """The searcher's first points, clipped to the bounds. Bounds that exclude the starts (a weight range
    above 1, say) make them coincide: each distinct point is evaluated once, and the log says so."""
    points = []
    for kind in kinds:
        points += [space.uniform()] if kind == "uniform" else [space.expert_alone(e) for e in space.experts]
    distinct = [p for i, p in enumerate(points) if p not in points[:i]]
    if len(distinct) < len(points):
        log(
            f"search.warm_starts: {len(points)} starts ({', '.join(kinds)}) are {len(distinct)} distinct "
            "point(s) inside merge.bounds; each is evaluated once"
        )
    return distinct


def run_search(setup: SearchSetup, run: RunDir, log: Log = print) -> RunDir:
    """Run (or resume) the search of ``setup`` in ``run``."""
    import ray
    from ray import tune

    from mergesearch.actors import evaluator_actor, judge_actor
    from mergesearch.plan import check_plan, plan_actors, plan_summary, ray_nodes, this_machine

    config = setup.config
    run.check_config(config)
    run.trials()  # a torn ledger is named before Ray starts
    setup.eval_data()  # and a dataset the fitness cannot score on
    starts = tuple(warm_starts(setup.space, config.search.warm_starts, log))
    ray_session()
    placements = check_plan(
        plan_actors(setup), ray_nodes(ray.nodes(), this_machine().gpu_bytes), "the Ray cluster"
    )  # before any load
    run.write_config(config)
    # Experiment state (searcher included) saved at least every second; a trial that finished after the last
    # save is re-reported from the ledger on resume, never re-evaluated.
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "1"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    gene_names = setup.space.gene_names()
    spec = searcher(config.search.name)
    concurrency = config.resources.num_evaluators
    problem = SearchProblem(
        setup.space.gene_bounds(),
        config.search.num_trials,
        2 * concurrency,
        config.search.seed,
        starts,
    )
    num_trials = spec.trials(problem)
    done = run.trials()
    if len(done) >= num_trials:
        log(
            f"search: {run.name} already has {len(done)} finished trials (budget {num_trials}); "
            "nothing to run"
        )
        return run
    shown = ", ".join(gene_names[:6]) + (" ..." if len(gene_names) > 6 else "")
    log(
        f"search: {config.search.name} over {len(gene_names)} genes ({shown}), {num_trials} trials, "
        f"{concurrency} evaluator(s); run dir {run.root}"
    )
    for line in plan_summary(placements):
        log(line)
    judge = judge_actor(setup)
    tag = f"{run.name}-{os.getpid()}"
    evaluators = [
        evaluator_actor(setup).options(name=f"evaluator-{tag}-{i}", namespace=NAMESPACE).remote(setup, judge)
        for i in range(concurrency)
    ]
    router_name = f"router-{tag}"
    router = (
        ray.remote(num_cpus=0)(Router).options(name=router_name, namespace=NAMESPACE).remote(evaluators, done)
    )
    trainable = tune.with_resources(
        make_trainable(router_name, gene_names, config.search.seed), TRIAL_RESOURCES
    )
    started = time.perf_counter()
    try:
        if tune.Tuner.can_restore(str(run.tune)):
            log(f"search: resuming {len(done)} finished trial(s) from {run.tune}")
            tuner = tune.Tuner.restore(
                str(run.tune), trainable=trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            tuner = _new_tuner(
                trainable, spec.make(problem), spec.objectives, run, num_trials, gene_names, config
            )
        tuner.fit()
        busy = ray.get(router.total_busy_s.remote())
    finally:
        for handle in [*evaluators, router, *([judge] if judge is not None else [])]:
            ray.kill(handle)
    run.add_efficiency(busy, time.perf_counter() - started, concurrency)
    return run


def _new_tuner(
    trainable: Any,
    search_alg: Any,
    objectives: tuple[str, ...],
    run: RunDir,
    num_trials: int,
    gene_names: list[str],
    config: Any,
) -> Any:
    from ray import tune

    single = {"metric": objectives[0], "mode": "max"} if len(objectives) == 1 else {}
    concurrency = 2 * config.resources.num_evaluators
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=tune.search.ConcurrencyLimiter(search_alg, max_concurrent=concurrency),
            num_samples=num_trials,
            time_budget_s=config.search.time_budget_s,
            reuse_actors=True,
            **single,
        ),
        run_config=tune.RunConfig(
            name=run.tune.name,
            storage_path=str(run.root),
            callbacks=[TrialLedger(run, num_trials, gene_names)],
            stop=BudgetStopper(run, num_trials),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=2),
        ),
    )
