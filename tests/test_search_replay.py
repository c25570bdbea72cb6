"""A resumed search rebuilds its searcher from the ledger: the same proposals as a run never interrupted.

These drive the searchers the way Tune's ``ConcurrencyLimiter`` does (``in_flight`` proposals, then one
more each time a trial ends), without Ray: the replay is plain searcher calls.
"""

from __future__ import annotations

import math

import pytest

from mergesearch.search.replay import LedgerReplay
from mergesearch.search.run_dir import TrialResult
from mergesearch.search.searchers import SearchProblem, searcher

GENES = ["w_a", "w_b", "w_c"]
OBJECTIVES = ("safety", "over_refusal", "task_accuracy")
BUDGET = 14


def fitness(genes: dict[str, float]) -> float:
    """A smooth landscape, so that what a searcher is told changes what it proposes next."""
    return math.exp(-sum((v - 0.3 * i) ** 2 for i, v in enumerate(genes.values())))


def make(name: str, in_flight: int) -> LedgerReplay:
    bounds = {gene: (0.0, 1.0) for gene in GENES}
    objectives = searcher(name).objectives(OBJECTIVES)  # nsga2's: these three, over-refusal minimised
    starts = ({g: 0.5 for g in GENES},)
    problem = SearchProblem(bounds, BUDGET, in_flight, seed=3, warm_starts=starts, objectives=objectives)
    return LedgerReplay(searcher(name).make(problem), GENES, in_flight, BUDGET)


def drive(
    search: LedgerReplay, in_flight: int, start: int = 0, session: str = "a", crash: int = -1
) -> list[TrialResult]:
    """Run trials ``start`` .. ``BUDGET`` as Tune does: each step asks for proposals while the searcher
    gives them, then handles one event, a trial's report (which the ledger records) or a trial's end.
    Reports come out of order (the n-th is open trial number ``3n mod open``, in the order asked) and
    ends lag behind them, latest first, as Tune's events may. Trial number ``crash`` crashes instead of
    reporting (Tune ends it with an error; the ledger records it failed). Returns the ledger."""
    open_trials: dict[str, dict[str, float]] = {}
    reported: list[tuple[str, dict]] = []
    ledger: list[TrialResult] = []
    made = 0
    while len(ledger) < BUDGET - start or reported:
        while made < BUDGET - start and (proposal := search.suggest(f"{session}-{made}")) is not None:
            open_trials[f"{session}-{made}"] = {gene: float(proposal[gene]) for gene in GENES}
            made += 1
        if reported and (len(reported) >= 2 or not open_trials):
            trial_id, report = reported.pop()
            search.on_trial_complete(trial_id, report)
            continue
        trial_id = list(open_trials)[(3 * (start + len(ledger))) % len(open_trials)]
        genes = open_trials.pop(trial_id)
        if start + len(ledger) == crash:
            search.on_trial_complete(trial_id, None, error=True)
            ledger.append(TrialResult.crashed(genes))
            continue
        objectives = {"safety": fitness(genes), "over_refusal": genes["w_b"], "task_accuracy": genes["w_a"]}
        result = TrialResult(genes=genes, fitness=fitness(genes), objectives=objectives)
        report = {**result.report(), "training_iteration": 1}
        search.on_trial_result(trial_id, report)
        reported.append((trial_id, report))
        ledger.append(result)
    return ledger


@pytest.mark.parametrize("name", ["cma", "de", "tpe", "optuna_cmaes", "random", "nsga2"])
@pytest.mark.parametrize("in_flight", [1, 3])
def test_a_search_resumed_from_its_ledger_proposes_what_the_uninterrupted_one_did(name, in_flight) -> None:
    whole = drive(make(name, in_flight), in_flight, crash=3)
    assert whole[3].status == "failed"  # a crashed trial is in the ledger and the replay
    killed_after = 6
    resumed = make(name, in_flight)
    summary = resumed.replay(whole[:killed_after])
    assert (summary.exact, summary.told, summary.untold, summary.in_flight) == (killed_after, 0, 0, in_flight)
    rest = drive(resumed, in_flight, start=killed_after, session="b", crash=3)
    assert [t.genes for t in rest] == [t.genes for t in whole[killed_after:]]


def test_nsga2_minimises_over_refusal_and_maximises_the_other_objectives() -> None:
    problem = SearchProblem({"w_a": (0.0, 1.0)}, 4, 1, seed=0, objectives=("safety", "over_refusal"))
    made = searcher("nsga2").make(problem)
    assert (made._metric, made._mode) == (
        ["safety", "over_refusal"],
        ["max", "min"],
    )  # Tune's Searcher fields


def test_a_searcher_started_afresh_would_propose_other_genomes() -> None:
    """What the replay prevents: a fresh CMA searcher, not told the ledger, repeats its opening."""
    whole = drive(make("cma", 1), 1)
    fresh = drive(make("cma", 1), 1, start=6, session="b")
    assert [t.genes for t in fresh] != [t.genes for t in whole[6:]]
    assert fresh[0].genes == whole[0].genes


def test_a_ledger_the_searcher_did_not_propose_is_told_as_evaluated_points() -> None:
    foreign = [TrialResult(genes={g: 0.1 * (i + 1) for g in GENES}, fitness=0.2) for i in range(4)]
    for name in ("cma", "tpe"):
        summary = make(name, 2).replay(foreign)
        assert (summary.exact, summary.told) == (0, 4), name
        assert "told as evaluated points" in summary.line(name)


def test_every_private_ray_hook_the_search_reaches_into_holds_on_this_ray() -> None:
    """Each hook builds a small live Ray object and reads the attribute (ray_internals.py): an upgrade
    that renames one fails here, naming it, and `search` refuses to start in one line."""
    from mergesearch.search.ray_internals import HOOKS, broken_hooks

    assert len(HOOKS) == 3
    assert broken_hooks() == []


def test_a_hook_that_a_changed_ray_broke_is_named_and_refuses_the_search(monkeypatch) -> None:
    from ray.tune.schedulers import ASHAScheduler

    from mergesearch.errors import UserError
    from mergesearch.search import ray_internals

    real = ASHAScheduler.__init__

    def renamed(self, *args, **kwargs):  # as if a Ray release renamed the attribute
        real(self, *args, **kwargs)
        self._ranking_metric = self.__dict__.pop("_metric")

    monkeypatch.setattr(ASHAScheduler, "__init__", renamed)
    (broken,) = ray_internals.broken_hooks()
    assert broken.startswith("ASHAScheduler._metric (multi-fidelity halving resumed from the ledger)")
    with pytest.raises(UserError, match=r"lacks what mergesearch reaches into .*ASHAScheduler\._metric"):
        ray_internals.check_ray_hooks()
