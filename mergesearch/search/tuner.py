"""The search: a Ray Tune experiment whose trials route genomes to resident evaluator actors.

Trials are light Tune function trainables (a sliver of CPU); the evaluator actors own the CPUs/GPUs and
the models. A router actor runs each trial's genome on a free evaluator (``router.py``), so trials run
asynchronously (no generation barrier): at most one evaluation per evaluator runs at a time, and one more
proposal per evaluator waits at the router, so an evaluator never idles while the searcher and Tune turn
around. A failed merge or evaluation becomes a finite penalty with its error recorded; the search goes on.

On a cluster the evaluators spread over the nodes. A node that dies takes nothing with it: its
evaluators and the judge restart elsewhere and their calls are retried, the trials it hosted are
retried by Tune (``FailureConfig``), and the router lives on the driver's node.

Everything lives in the run dir. Running the same command again (or ``mergesearch resume``) rebuilds the
searcher from the ledger (``replay.py``), never from Tune's pickled state: a run dir holds data, not code.
The trials that were in flight when the driver died are proposed again, first; finished ones never are.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from mergesearch.actors import KeptActors
from mergesearch.config import FitnessConfig, MultiFidelityConfig
from mergesearch.io import refused_write
from mergesearch.merge.genome import GenomeSpace
from mergesearch.objectives.data import Rounds
from mergesearch.objectives.evaluate import combined
from mergesearch.runtime import NAMESPACE, ray_session
from mergesearch.search.halving import ROUNDS_SCORED, halving_scheduler, small_rounds_hint
from mergesearch.search.ledger import BudgetStopper, TrialLedger
from mergesearch.search.replay import LedgerReplay
from mergesearch.search.router import start_router
from mergesearch.search.run_dir import RunDir, TrialResult, genes_of
from mergesearch.search.searchers import ExpertGenes, SearchProblem, searcher
from mergesearch.setup import SearchSetup

Log = Callable[[str], None]


# A trial only waits on the router, so it holds no CPU: a CPU share, however small, would not fit once
# the evaluators and the judge hold every core (a 2-core machine with a guard judge waited forever). Tune
# refuses an empty request, so a trial asks for one byte of Ray's `memory` resource, which every node has.
TRIAL_RESOURCES = {"cpu": 0, "memory": 1}


def make_trainable(
    router_name: str,
    gene_names: list[str],
    seed: int,
    fitness: FitnessConfig,
    multi: MultiFidelityConfig,
) -> Callable[[dict], None]:
    """A Tune trial: its genome scored on the search split, one call per stretch of rounds between two
    of ASHA's decision points (multi-fidelity), with a report of the running scores after each; the
    scheduler may stop it at any report but the last. Each report carries the running fitness at every
    decision point so far: the ledger keeps the last, and a resumed search rebuilds ASHA from it."""

    def evaluate_genome(config: dict) -> None:
        import ray
        from ray import tune

        router = ray.get_actor(router_name, namespace=NAMESPACE)
        genes = genes_of(config, gene_names)
        parts, running, seconds, first = [], {}, 0.0, 0

        def report(result: TrialResult, stop: int | None = None) -> None:
            clock = {ROUNDS_SCORED: stop} if stop else {}
            tune.report({**result.model_copy(update={"running": dict(running)}).report(), **clock})

        for stop in multi.decision_points():
            rounds = Rounds(first, stop, multi.rounds) if multi.rounds > 1 else None
            done = ray.get(router.evaluate.remote(genes, seed, rounds, fitness))
            seconds += done.seconds
            if done.scores is None:
                report(TrialResult.failed(done.error, genes, evaluator=seconds))
                return
            parts.append(done.scores)
            scores = combined(parts, fitness) if multi.rounds > 1 else done.scores
            result = TrialResult.from_scores(scores, genes, stop / multi.rounds, evaluator=seconds)
            if multi.rounds > 1 and result.ok:
                running[stop] = result.fitness
            report(result, stop)
            if not result.ok:
                return
            first = stop

    return evaluate_genome


def warm_starts(space: GenomeSpace, kinds: Sequence[str], log: Log = print) -> list[dict[str, float]]:
    """The searcher's first points, clipped to the bounds. Bounds that exclude the starts (a weight range
    above 1, say) make them coincide: each distinct point is evaluated once, and the log says so."""
    points = [dict(space.centre)] if space.centre is not None else []  # a recipe the search starts from
    for kind in kinds:
        points += [space.uniform()] if kind == "uniform" else [space.expert_alone(e) for e in space.experts]
    distinct = [p for i, p in enumerate(points) if p not in points[:i]]
    if len(distinct) < len(points):
        log(
            f"search.warm_starts: {len(points)} starts ({', '.join(kinds)}) are {len(distinct)} distinct "
            "point(s) inside merge.bounds; each is evaluated once"
        )
    return distinct


_SEARCHES = itertools.count()  # this driver's searches, for the names of their actors


def run_search(setup: SearchSetup, run: RunDir, log: Log = print, kept: KeptActors | None = None) -> RunDir:
    """Run (or resume) the search of ``setup`` in ``run``. Its evaluator and judge actors are ``kept``'s
    when given (started there if it holds none for these models, and left running), else its own."""
    import ray
    from ray import tune

    from mergesearch.plan import plan_summary
    from mergesearch.search.placement import place_search
    from mergesearch.search.ray_internals import check_ray_hooks

    config = setup.config
    run.check_config(config)
    run.trials()  # a torn ledger is named before Ray starts
    check_ray_hooks()  # a Ray that changed what the replay reaches into fails here, in one line
    data = setup.eval_data()  # and a dataset the fitness cannot score on
    spec = searcher(config.search.name)
    kinds = config.search.warm_starts if spec.takes_warm_starts else []
    if config.search.warm_starts and not kinds:
        log(f"search.warm_starts: unused, {config.search.name} makes its own first proposals")
    starts = tuple(warm_starts(setup.space, kinds, log))
    hint = small_rounds_hint(data, config.search.multi_fidelity, config.backend.batch_size)
    if hint:
        log(hint)
    ray_session()
    setup, placements = place_search(setup, log)  # before any actor loads a model
    config = setup.config
    run.write_config(config)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    gene_names = setup.space.gene_names()
    concurrency = config.resources.num_evaluators
    in_flight = concurrency * (1 + config.search.queued_per_evaluator)
    space = setup.space
    experts = (
        ExpertGenes({e: tuple(space.genes_of_expert(e)) for e in space.experts}, space.together)
        if space.gates is not None
        else None
    )
    problem = SearchProblem(
        space.gene_bounds(),
        config.search.num_trials,
        in_flight,
        config.search.seed,
        starts,
        experts,
        space.categories(),
        spec.objectives(config.search.objectives),
    )
    num_trials = spec.trials(problem)
    done = run.trials()
    if len(done) >= num_trials:
        log(
            f"search: {run.name} already has {len(done)} finished trials (budget {num_trials}); "
            "nothing to run"
        )
        return run
    search_alg = LedgerReplay(spec.make(problem), gene_names, in_flight, num_trials)
    replayed = search_alg.replay(done)
    shown = ", ".join(gene_names[:6]) + (" ..." if len(gene_names) > 6 else "")
    log(
        f"search: {config.search.name} over {len(gene_names)} genes ({shown}), {num_trials} trials, "
        f"{concurrency} evaluator(s); run dir {run.root}"
    )
    if done:
        ranked = sum(1 for t in done if t.running)
        halving = f"; ASHA starts from {ranked} ledgered trial(s)' running fitness" if ranked else ""
        log(f"search: resuming: {replayed.line(config.search.name)}{halving}")
    for line in plan_summary(placements):
        log(line)
    own = kept is None
    kept = kept or KeptActors()
    # Named actors share the cluster's namespace: the tag tells this search's apart from another
    # driver's and from those an earlier search of this driver keeps (which may have the same run name).
    tag = f"{run.name}-{os.getpid()}-{next(_SEARCHES)}"
    actors = kept.for_search(setup, tag)
    router_name = f"router-{tag}"
    router = start_router(router_name, actors.evaluators)
    trainable = tune.with_resources(
        make_trainable(
            router_name, gene_names, config.search.seed, config.fitness, config.search.multi_fidelity
        ),
        TRIAL_RESOURCES,
    )
    ledger = TrialLedger(run, num_trials, gene_names)
    left = num_trials - len(done)
    started = time.perf_counter()
    try:
        _fit(_new_tuner(trainable, search_alg, problem.objectives, ledger, left, config), run)
        cache = _judge_stats(actors.judge)
    finally:
        ray.kill(router)
        if own:
            kept.close()
    if cache:
        log(
            f"judge: {cache['cached']} of {cache['verdicts']} verdicts from the cache "
            f"(hit rate {cache['hit_rate']:.0%}); {cache['requests']} requests in "
            f"{cache['judge_calls']} judge calls"
        )
    busy = sum(t.timings.get("evaluator", 0.0) for t in run.trials()[len(done) :])
    run.add_efficiency(busy, time.perf_counter() - started, concurrency, judge_cache=cache)
    return run


def _fit(tuner: Any, run: RunDir) -> None:
    """A disk that refuses a write (full, read-only) is the system's error naming a file, so the CLI
    prints one line. Tune wraps an error in our ledger callback in a TuneError holding the traceback as
    text (its cause is found), and some writes (TensorBoard's, Tune's own) name no file (the run dir is)."""
    from ray.tune.error import TuneError

    try:
        tuner.fit()
    except (TuneError, OSError) as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise (cause if cause.filename else refused_write(cause, str(run.root))) from None


def _judge_stats(judge: Any) -> dict[str, float] | None:
    """The judge actor's verdict cache and batching figures; None without a judge actor, or if it died
    once the search was over (the trials are safe in the ledger by then)."""
    import ray

    if judge is None:
        return None
    try:
        return ray.get(judge.stats.remote())
    except ray.exceptions.RayError:
        return None


def _new_tuner(
    trainable: Any,
    search_alg: Any,
    objectives: tuple[str, ...],
    ledger: TrialLedger,
    left: int,
    config: Any,
) -> Any:
    """A Tune experiment for this session (its own folder under ``tune/``), for the ``left`` trials."""
    from ray import tune

    single = {"metric": objectives[0], "mode": "max"} if len(objectives) == 1 else {}
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,  # a LedgerReplay: also the concurrency limit
            scheduler=halving_scheduler(config.search.multi_fidelity, bool(single), ledger.trials.values()),
            num_samples=left,
            time_budget_s=config.search.time_budget_s,
            reuse_actors=True,
            **single,
        ),
        run_config=tune.RunConfig(
            name=ledger.run.new_tune_session(),
            storage_path=str(ledger.run.tune),
            callbacks=[ledger],
            stop=BudgetStopper(ledger.run, ledger.total),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=2),
        ),
    )
