"""Multi-fidelity search: a trial scores its genome shard by shard, ASHA stops weak ones between rounds,
the searcher learns from the stopped ones, and only trials scored in full are promoted."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest
from demo_configs import demo_config
from ray.tune.search import Searcher

from mergesearch.config import FitnessConfig, MultiFidelityConfig, SearchConfig
from mergesearch.objectives.data import EvalData, Rounds
from mergesearch.objectives.evaluate import Scores, combined
from mergesearch.runtime import ray_session
from mergesearch.search.halving import ROUNDS_SCORED, halving_scheduler, small_rounds_hint, tie_breaker
from mergesearch.search.replay import LedgerReplay
from mergesearch.search.router import FreeEvaluators
from mergesearch.search.run_dir import RunDir, TrialResult
from mergesearch.setup import SearchSetup

ALL_OBJECTIVES = {"safety": 1.0, "task_accuracy": 1.0, "over_refusal": 0.5, "loss_proxy": 0.5}


def config_for(toy_dataset, **search) -> SearchConfig:
    config = demo_config()
    config["data"] = {"path": str(toy_dataset), "max_alignment_prompts": 30, "max_task_prompts": 30}
    config["fitness"] = {"weights": ALL_OBJECTIVES}
    config["search"] = {"name": "cma", "num_trials": 12, "seed": 0, "warm_starts": ["uniform"], **search}
    config["promotion"] = {"top_k": 3}
    return SearchConfig.model_validate(config)


def test_shards_scored_apart_combine_into_the_whole_splits_scores(toy_dataset) -> None:
    from mergesearch.actors import Evaluator

    config = config_for(toy_dataset)
    evaluator = Evaluator(SearchSetup.prepare(config, log=lambda _: None), log=lambda _: None)
    genome = {"w.aligned.g0": 0.5, "w.math.g0": 0.7, "w.facts.g0": 0.4}
    whole = evaluator.evaluate(genome)
    shards = [evaluator.evaluate(genome, shard=Rounds(i, i + 1, 4)) for i in range(4)]  # unequal sizes
    together = combined(shards, config.fitness)
    assert set(together.objectives) == {*ALL_OBJECTIVES, "short_answer", "choice_accuracy"}
    # the same verdicts and hits; log-likelihoods differ in float rounding (other batches)
    assert together.objectives == pytest.approx(whole.objectives, abs=1e-6)
    assert together.fitness == pytest.approx(whole.fitness, abs=1e-6)
    for count in ("harmful", "judged_safe", "benign", "benign_refused", "choice_items", "short_items"):
        assert together.counts[count] == whole.counts[count]
    assert [s.counts["harmful"] for s in shards] == [8, 8, 7, 7]  # disjoint, covering the 30
    # the live model already held this genome: the shards did not merge it again
    assert whole.counts["merges"] == 1 and [s.counts["merges"] for s in shards] == [0, 0, 0, 0]


class ScheduledTrial:
    """What ASHA reads of a Tune trial: its id, and its config (the genome)."""

    def __init__(self, number: int) -> None:
        self.trial_id, self.config = f"t{number}", {"a": number / 100}


def halving_decisions(scheduler, scores: list[float]) -> list[str]:
    """ASHA's decision for each new trial, in turn, reporting ``score`` after its first round."""
    decisions = []
    for number, score in enumerate(scores):
        trial = ScheduledTrial(number)
        scheduler.on_trial_add(None, trial)
        decisions.append(scheduler.on_trial_result(None, trial, {"fitness": score, ROUNDS_SCORED: 1}))
    return decisions


def test_asha_lets_about_one_in_reduction_factor_of_a_tie_go_on_not_all_of_it() -> None:
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    multi = MultiFidelityConfig(rounds=9, reduction_factor=3)
    tied = halving_decisions(halving_scheduler(multi, metric_set=False), [0.5] * 30)
    went_on = tied.count(TrialScheduler.CONTINUE)
    assert 5 <= went_on <= 15  # asynchronous: the first ones go on against fewer; 11 when written
    plain = ASHAScheduler(time_attr=ROUNDS_SCORED, max_t=9, metric="fitness", mode="max")
    assert halving_decisions(plain, [0.5] * 30).count(TrialScheduler.CONTINUE) == 30  # Tune's own
    # the tie-breaker ranks equal scores only: a better one still goes on, a worse one still stops
    after = halving_decisions(halving_scheduler(multi, metric_set=False), [0.5] * 10 + [0.6, 0.4])
    assert after[-2:] == [TrialScheduler.CONTINUE, TrialScheduler.STOP]
    assert tie_breaker({"a": 0.1}) == tie_breaker({"a": 0.1}) != tie_breaker({"a": 0.2})


def halved(scheduler, runs: dict[int, dict[int, float]]) -> dict[int, TrialResult]:
    """Each trial in turn reports its running fitness by rounds scored until ASHA stops it (Tune then
    completes it); returns what the ledger records of each: its last report and the scores reported."""
    from ray.tune.schedulers import TrialScheduler

    ledgered = {}
    for number, scores in runs.items():
        trial, reported = ScheduledTrial(number), {}
        scheduler.on_trial_add(None, trial)
        for rounds, fitness in scores.items():
            reported[rounds] = fitness
            result = {"fitness": fitness, ROUNDS_SCORED: rounds}
            if scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP:
                break
        scheduler.on_trial_complete(None, trial, result)
        ledgered[number] = TrialResult(
            genes=trial.config, fitness=fitness, fidelity=rounds / 9, running=reported, index=number
        )
    return ledgered


def test_a_resumed_search_halves_as_the_uninterrupted_one_would_from_its_ledger() -> None:
    rng = random.Random(0)
    runs = {n: {1: rng.random(), 3: rng.random(), 9: rng.random()} for n in range(30)}
    first, rest = dict(list(runs.items())[:20]), dict(list(runs.items())[20:])
    multi = MultiFidelityConfig(rounds=9, reduction_factor=3)

    def fidelities(ledgered: dict[int, TrialResult]) -> list[float]:
        return [t.fidelity for t in ledgered.values()]

    uninterrupted = halved(halving_scheduler(multi, metric_set=False), runs)
    killed = halved(halving_scheduler(multi, metric_set=False), first)
    assert killed == {n: uninterrupted[n] for n in first}
    ledger = [TrialResult.from_row(t.to_row()) for t in killed.values()]  # through the ledger's columns
    resumed = halved(halving_scheduler(multi, metric_set=False, ledgered=ledger), rest)
    assert fidelities(resumed) == fidelities({n: uninterrupted[n] for n in rest})
    # a scheduler started empty, as Tune's would be, lets more of them go on
    forgetful = halved(halving_scheduler(multi, metric_set=False), rest)
    assert sum(fidelities(forgetful)) > sum(fidelities(resumed))


def test_a_resumed_searchs_tune_experiment_gets_asha_with_the_ledgers_scores(tmp_path, monkeypatch) -> None:
    from ray import tune
    from ray.tune.schedulers import TrialScheduler

    from mergesearch.search.ledger import TrialLedger
    from mergesearch.search.tuner import _new_tuner

    monkeypatch.setattr(tune, "Tuner", lambda trainable, tune_config, run_config: tune_config)
    config = demo_config(resolved=False)
    config["search"] = {
        "name": "cma",
        "num_trials": 12,
        "multi_fidelity": {"rounds": 9, "reduction_factor": 3},
    }
    config = SearchConfig.model_validate(config)
    run = RunDir(tmp_path / "run")
    good = [
        TrialResult(genes={"a": n / 10}, fitness=0.9, fidelity=1 / 9, running={1: 0.9}, index=n)
        for n in range(6)
    ]
    run.write_trials(good, ["a"])
    tune_config = _new_tuner(None, None, ("fitness",), TrialLedger(run, 12, ["a"]), 6, config)
    tune_config.scheduler.set_search_properties("fitness", "max")  # as Tune does
    # an ASHA started empty lets a first trial go on, whatever its score
    assert halving_decisions(tune_config.scheduler, [0.5]) == [TrialScheduler.STOP]


def test_the_log_says_when_a_first_round_answers_fewer_prompts_than_a_decoding_batch() -> None:
    rows = tuple(f"prompt {i}" for i in range(30))
    data = EvalData(rows, rows, (), (), (), "split")  # 60 prompts to answer
    nine = MultiFidelityConfig(rounds=9, reduction_factor=3)  # the first round answers 4 + 4
    assert "answer 8 prompts" in small_rounds_hint(data, nine, batch_size=32)
    assert small_rounds_hint(data, nine, batch_size=8) is None
    three = MultiFidelityConfig(rounds=3, reduction_factor=3)  # 10 + 10
    assert small_rounds_hint(data, three, batch_size=16) is None
    assert small_rounds_hint(data, MultiFidelityConfig(), batch_size=64) is None  # one round: no rounds


class Recording(Searcher):
    """Proposes fixed points and records what it is told."""

    def __init__(self) -> None:
        super().__init__(metric="fitness", mode="max")
        self.told: list[tuple[str, dict | None]] = []

    def suggest(self, trial_id: str) -> dict:
        return {"a": 0.5, "b": 0.25}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.told.append((trial_id, result))


def report(genes: dict, fidelity: float, fitness: float, running: dict[int, float] | None = None) -> dict:
    result = TrialResult(genes=genes, fitness=fitness, fidelity=fidelity, running=running or {})
    return {**result.report(), "training_iteration": round(fidelity * 3)}


def test_a_running_report_holds_the_slot_and_a_stop_between_rounds_tells_the_searcher() -> None:
    inner = Recording()
    search = LedgerReplay(inner, ["a", "b"], in_flight=1, budget=6)
    genes = {"a": 0.5, "b": 0.25}
    search.suggest("t0")
    search.on_trial_result("t0", report(genes, 1 / 3, fitness=0.4))
    assert search.suggest("t1") is None and not inner.told  # still running: its slot is held
    search.on_trial_complete("t0", report(genes, 1 / 3, fitness=0.4))  # ASHA stopped it after round 1
    ((_, told),) = inner.told
    assert told is not None and told["fitness"] == 0.4  # the searcher learns its running fitness
    assert search.suggest("t1") is not None  # and the slot is free
    search.on_trial_result("t1", report(genes, 1.0, fitness=0.7))  # a last round: told at once
    assert inner.told[-1][1]["fitness"] == 0.7


def test_a_stopped_trial_is_told_its_running_fitness_plus_the_full_trials_gap_there() -> None:
    """A decision point's rows may be easier than the split's: its running fitness then reads high for
    every genome. The searcher ranks stopped trials among full ones, so it is told a stopped trial's
    running fitness plus the mean gap (full - running) at that point of the full trials told before
    it; before any, the running fitness as it is. A replay of the ledger tells the same values."""
    genes = {"a": 0.5, "b": 0.25}
    ledger = [  # (fidelity, fitness, running by rounds scored of 9)
        (1 / 9, 0.40, {1: 0.40}),  # no full trial yet: told as it is
        (1.0, 0.70, {1: 0.65, 3: 0.90, 9: 0.70}),
        (3 / 9, 0.85, {1: 0.50, 3: 0.85}),  # 0.85 + (0.70 - 0.90)
        (1.0, 0.60, {1: 0.75, 3: 0.70, 9: 0.60}),
        (1 / 9, 0.55, {1: 0.55}),  # 0.55 + mean(0.05, -0.15)
        (3 / 9, 0.80, {1: 0.60, 3: 0.80}),  # 0.80 + mean(-0.20, -0.10)
    ]
    expected = [0.40, 0.70, 0.65, 0.60, 0.50, 0.65]
    inner = Recording()
    search = LedgerReplay(inner, ["a", "b"], in_flight=1, budget=len(ledger))
    for number, (fidelity, fitness, running) in enumerate(ledger):
        search.suggest(f"t{number}")
        reported = report(genes, fidelity, fitness, running)
        search.on_trial_result(f"t{number}", reported)
        if fidelity < 1:  # ASHA stopped it
            search.on_trial_complete(f"t{number}", reported)
    assert [told["fitness"] for _, told in inner.told] == pytest.approx(expected)

    replayed = Recording()
    trials = [TrialResult.from_report(report(genes, *row)) for row in ledger]
    LedgerReplay(replayed, ["a", "b"], in_flight=1, budget=len(ledger)).replay(trials)
    assert [told["fitness"] for _, told in replayed.told] == pytest.approx(expected)

    failed = TrialResult.failed("the merge failed", genes)  # told its penalty, as it is
    assert search.gaps.told(failed) == failed


def test_a_trial_reports_at_ashas_decision_points_and_at_the_end() -> None:
    def points(rounds: int, reduction_factor: float, grace_rounds: int = 1) -> list[int]:
        return MultiFidelityConfig(
            rounds=rounds, reduction_factor=reduction_factor, grace_rounds=grace_rounds
        ).decision_points()

    assert points(1, 3) == [1]
    assert points(3, 3) == [1, 3]
    assert points(9, 3) == [1, 3, 9]
    assert points(27, 3, grace_rounds=2) == [2, 6, 18, 27]
    assert points(10, 2.5) == [1, 3, 7, 10]  # milestones 2.5 and 6.25 are reached at whole rounds


def test_a_stretch_of_rounds_is_the_union_of_its_single_rounds() -> None:
    rows = tuple(f"prompt {i}" for i in range(30))
    data = EvalData(rows, rows, (), (), (), "split")
    stretch = data.shard(Rounds(1, 3, 9)).harmful
    singles = data.shard(Rounds(1, 2, 9)).harmful + data.shard(Rounds(2, 3, 9)).harmful
    assert sorted(stretch) == sorted(singles) and len(stretch) == 8  # rows 1, 2, 10, 11, 19, 20, 28, 29
    assert str(Rounds(1, 3, 9)) == "round 2-3 of 9" and str(Rounds(0, 1, 9)) == "round 1 of 9"
    with pytest.raises(ValueError, match="not within"):
        Rounds(3, 3, 9)


def test_a_freed_evaluator_goes_to_a_trials_later_rounds_before_a_new_trials_first() -> None:
    """Deepest rounds first, then first come first served; a call cancelled while waiting takes none."""

    async def scenario() -> list[str]:
        evaluators = FreeEvaluators(["the evaluator"])
        served: list[str] = []

        async def call(name: str, depth: int) -> None:
            evaluator = await evaluators.take(depth)
            served.append(name)
            await asyncio.sleep(0)
            evaluators.give_back(evaluator)

        busy = await evaluators.take(0)
        waits = [("new trial", 0), ("another new trial", 0), ("rounds 2-3", 1), ("rounds 4-9", 3)]
        calls = [asyncio.create_task(call(name, depth)) for name, depth in waits]
        gone = asyncio.create_task(call("a stopped trial's rounds 2-3", 1))
        await asyncio.sleep(0)  # every call is waiting now
        gone.cancel()
        evaluators.give_back(busy)
        await asyncio.gather(*calls)
        assert evaluators.free == ["the evaluator"]
        return served

    assert asyncio.run(scenario()) == ["rounds 4-9", "rounds 2-3", "new trial", "another new trial"]


def test_a_multi_fidelity_search_stops_weak_genomes_and_promotes_only_full_ones(
    toy_dataset, tmp_path
) -> None:
    import ray

    from mergesearch.search.promote import candidates
    from mergesearch.search.tuner import run_search

    multi = {"rounds": 9, "reduction_factor": 3, "grace_rounds": 1}
    # a searcher never told of its stopped trials would hold their slots, and the search would stall:
    # the time budget turns that into a short ledger
    config = config_for(toy_dataset, multi_fidelity=multi, time_budget_s=400)
    setup = SearchSetup.prepare(config, log=lambda _: None)
    ray_session(num_cpus=2)
    try:
        trials = run_search(setup, RunDir(tmp_path / "run"), log=lambda _: None).trials()
    finally:
        ray.shutdown()
    assert len(trials) == 12 and len({t.trial_id for t in trials}) == 12
    assert all(t.ok for t in trials)
    stopped = [t for t in trials if not t.full]
    assert stopped and len(stopped) < 12
    # ASHA decides after rounds 1 and 3 of 9; a trial scores the rounds up to each decision in one call
    calls_at = {1: 1, 3: 2, 9: 3}
    assert {round(t.fidelity * 9) for t in stopped} <= {1, 3}
    for trial in trials:
        scored = round(trial.fidelity * 9)
        assert trial.counts["evaluator_calls"] == calls_at[scored]
        assert trial.counts["harmful"] == sum(Rounds(0, scored, 9).holds(i) for i in range(30))
        # the ledger keeps its running fitness at each decision point: a resumed ASHA starts from it
        assert sorted(trial.running) == [point for point in calls_at if point <= scored]
        assert trial.running[scored] == trial.fitness
        # merged once, unless a later round went to another evaluator
        assert 1 <= trial.counts["merges"] <= trial.counts["evaluator_calls"]
    # a stopped trial answered and scored only its rounds: less work than a full one (counted, not timed)
    task_items = {
        full: [t.counts["choice_items"] + t.counts["short_items"] for t in trials if t.full == full]
        for full in (True, False)
    }
    assert max(task_items[False]) < min(task_items[True])
    promoted = candidates(setup, trials, 3)
    assert promoted and all(t.full for t in promoted)
    assert (tmp_path / "run" / "trials.parquet").is_file()


class KnownLandscape:
    """An evaluator actor over a landscape whose optimum is known, to see where a search ends: row ``i``
    of a 270-row split is judged safe when its fixed threshold is below the genome's true safety
    ``1 - |genome - OPTIMUM|²``. A round's safety is then a noisy estimate of the true one (as a shard of
    real prompts is), and the whole split's is exact to a row. Real models could not tell where the
    optimum is; everything else (trainable, router, ASHA, ledger, searcher) is the search's own."""

    ROWS = 270
    OPTIMUM = {"a": 0.7, "b": 0.3}

    def __init__(self) -> None:
        import numpy as np

        self.thresholds = np.random.default_rng(0).permutation((np.arange(self.ROWS) + 0.5) / self.ROWS)

    def evaluate(self, genes: dict, seed: int, rounds: Rounds | None, fitness: FitnessConfig) -> Scores:
        rows = [i for i in range(self.ROWS) if rounds is None or rounds.holds(i)]
        safe = sum(bool(self.thresholds[i] < true_safety(genes)) for i in rows)
        return combined([Scores(counts={"harmful": len(rows), "judged_safe": safe})], fitness)


def true_safety(genes: dict[str, float]) -> float:
    return 1 - sum((genes[g] - KnownLandscape.OPTIMUM[g]) ** 2 for g in KnownLandscape.OPTIMUM)


def searched(tmp_path, name: str, multi: dict, trials: int = 36) -> list[TrialResult]:
    """A CMA search of ``trials`` genomes over the known landscape, as ``run_search`` assembles one."""
    import ray
    from ray import tune

    from mergesearch.search.ledger import TrialLedger
    from mergesearch.search.problem import SearchProblem
    from mergesearch.search.router import start_router
    from mergesearch.search.searchers import searcher
    from mergesearch.search.tuner import TRIAL_RESOURCES, _new_tuner, make_trainable

    config = demo_config(resolved=False)
    config["fitness"] = {"weights": {"safety": 1.0}}
    config["search"] = {"name": "cma", "num_trials": trials, "warm_starts": [], "multi_fidelity": multi}
    config = SearchConfig.model_validate(config)
    genes = list(KnownLandscape.OPTIMUM)
    spec = searcher("cma")
    problem = SearchProblem({g: (0.0, 1.0) for g in genes}, trials, concurrency=1, seed=0)
    search_alg = LedgerReplay(spec.make(problem), genes, 1, trials)
    router = start_router(f"router-{name}", [ray.remote(KnownLandscape).remote()])
    trainable = make_trainable(f"router-{name}", genes, 0, config.fitness, config.search.multi_fidelity)
    run = RunDir(tmp_path / name)
    ledger = TrialLedger(run, trials, genes)
    tuner = _new_tuner(
        tune.with_resources(trainable, TRIAL_RESOURCES),
        search_alg,
        problem.objectives,
        ledger,
        trials,
        config,
    )
    tuner.fit()
    ray.kill(router)
    return run.trials()


# The default run keeps the smaller case: a multi-fidelity search stops weak genomes (above).
@pytest.mark.slow  # ~50 s, two searches side by side: `make test-slow` (CI)
def test_a_multi_fidelity_search_converges_as_full_fidelity_does_on_fewer_rows(tmp_path, monkeypatch) -> None:
    """The searcher is told each stopped trial's imputed fitness: it still closes in on the optimum,
    and ends as near it as the full-fidelity search with the same number of trials."""
    import ray

    # the router's process calls the landscape actor, so it imports this module
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    )
    ray_session(num_cpus=2)
    try:
        full = searched(tmp_path, "full", {"rounds": 1})
        multi = searched(tmp_path, "multi", {"rounds": 9, "reduction_factor": 3, "grace_rounds": 1})
    finally:
        ray.shutdown()

    def best(trials: list[TrialResult]) -> float:
        return max(true_safety(t.genes) for t in trials if t.full)

    def rows(trials: list[TrialResult]) -> float:
        return sum(t.counts["harmful"] for t in trials)

    assert len(full) == len(multi) == 36 and any(not t.full for t in multi)
    assert best(multi) >= best(full) - 0.005  # 0.9993 against 0.9998 when written
    assert best(multi) > 0.998  # the best of 36 random genomes gets there about one time in five
    # 47% when written (64% with Tune's ASHA, which lets every genome tied on a round's 30 rows go on)
    assert rows(multi) < 0.6 * rows(full)
