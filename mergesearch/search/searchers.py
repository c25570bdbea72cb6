"""Searchers as specs in the one registry: each turns a search problem into a Ray Tune ``Searcher``.

Nevergrad (``cma`` default, ``ngopt``, ``de``, ``pso``) through ``NevergradSearch``; Optuna
(``optuna_cmaes``, ``tpe``, ``nsga2`` multi-objective over ``search.objectives``, ``random``, ``grid``
over the global genes, the paper's grid-search baseline) through ``OptunaSearch``; ``select_cma`` for
gated many-expert pools (select the experts, then CMA over their genes: ``select_then_search.py``). All
are seeded, take warm-start genomes, and are deterministic given their seed, so a resumed search rebuilds
its searcher by replaying the ledger into a fresh one (``replay.py``). A spec says what the tuner and the
config need to know, so neither names a searcher.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mergesearch.registry import OBJECTIVES, SEARCHERS
from mergesearch.search.problem import ExpertGenes, SearchProblem

__all__ = ["ExpertGenes", "SearchProblem", "SearcherSpec", "searcher"]


@dataclass(frozen=True)
class SearcherSpec:
    """A searcher: its factory (a Tune ``Searcher`` for a problem) and what it supports.

    ``granularities``: the genome layouts it can search (None: all). ``budget``: the most trials it can
    propose for a problem, when finite (a grid), else None. ``multi_objective``: it trades off the
    config's ``search.objectives`` instead of maximising the fitness."""

    factory: Callable[[SearchProblem], Any]
    multi_objective: bool = False
    granularities: frozenset[str] | None = None
    budget: Callable[[SearchProblem], int] | None = None
    needs_gates: bool = False  # selects experts: the merge space must gate them (threshold ``merge.gates``)
    takes_warm_starts: bool = True  # False: it makes its own first proposals (the tuner says so, once)
    takes_categories: bool = True  # a categorical gene (``merge.choices``) among its continuous ones

    def objectives(self, chosen: Sequence[str]) -> tuple[str, ...]:
        """The metrics it optimises: ``chosen`` (``search.objectives``) when it is multi-objective."""
        return tuple(chosen) if self.multi_objective else ("fitness",)

    def check(self, granularity: str, gates: str | None, chooses_method: bool = False) -> None:
        """``gates``: the merge space's gate kind (None: no gates); ``chooses_method``: the space has a
        categorical gene (``merge.choices``)."""
        if chooses_method and not self.takes_categories:
            takes = ", ".join(n for n in SEARCHERS if SEARCHERS.get(n).takes_categories)
            raise ValueError(
                "search.name: this searcher moves continuous genes only, not the categorical `method` "
                f"gene merge.choices makes; choose one that takes it ({takes})"
            )
        if self.granularities is not None and granularity not in self.granularities:
            allowed = ", ".join(sorted(self.granularities))
            raise ValueError(
                f"search.name: this searcher covers merge.granularity {allowed} only, not {granularity!r}"
            )
        if self.needs_gates and gates != "threshold":  # it picks the set itself: no k to honour
            raise ValueError("search.name: this searcher selects experts; set merge.gates: {kind: threshold}")

    def trials(self, problem: SearchProblem) -> int:
        return min(problem.num_trials, self.budget(problem)) if self.budget else problem.num_trials

    def make(self, problem: SearchProblem) -> Any:
        return self.factory(problem)


def searcher(name: str) -> SearcherSpec:
    spec: SearcherSpec = SEARCHERS.get(name)
    return spec


# ------------------------------------------------------------------------------------ nevergrad
def _nevergrad(optimizer_name: str) -> SearcherSpec:
    def factory(problem: SearchProblem) -> Any:
        import nevergrad as ng
        import numpy as np

        from mergesearch.search.nevergrad_search import NevergradWithPoints

        # Warm starts are injected into CMA's population, which `cma` reports as "orphanated" when they
        # arrive one `ask` at a time (asynchronous trials): expected here, so not shown.
        warnings.filterwarnings("ignore", message=".*orphanated injected solution.*")
        space = ng.p.Dict(
            **{name: ng.p.Scalar(lower=low, upper=high) for name, (low, high) in problem.bounds.items()},
            **{name: ng.p.Choice(list(values)) for name, values in problem.categories.items()},
        )
        space.random_state = np.random.RandomState(problem.seed)
        return NevergradWithPoints(
            optimizer=getattr(ng.optimizers, optimizer_name),
            optimizer_kwargs={"budget": problem.num_trials, "num_workers": problem.concurrency},
            space=space,
            metric="fitness",
            mode="max",
            points_to_evaluate=list(problem.warm_starts) or None,
        )

    # CMA-ES adapts a Gaussian over continuous genes: a categorical one has no place in it.
    return SearcherSpec(factory, takes_categories=optimizer_name != "CMA")


for _name, _optimizer in (("cma", "CMA"), ("ngopt", "NGOpt"), ("de", "TwoPointsDE"), ("pso", "PSO")):
    SEARCHERS.add(_name, _nevergrad(_optimizer))


def _select_then(stage_two: SearcherSpec) -> SearcherSpec:
    def factory(problem: SearchProblem) -> Any:
        from mergesearch.search.select_then_search import SelectThenSearch

        return SelectThenSearch(problem, stage_two.make)

    return SearcherSpec(factory, needs_gates=True, takes_warm_starts=False, takes_categories=False)


# Many-expert pools: greedy selection of the experts over their gates, then CMA over their genes.
SEARCHERS.add("select_cma", _select_then(SEARCHERS.get("cma")))


# ------------------------------------------------------------------------------------ optuna
def _optuna(sampler: str, **spec: Any) -> SearcherSpec:
    """``sampler``: the name of a factory below, called with the problem."""

    def factory(problem: SearchProblem) -> Any:
        from optuna.distributions import CategoricalDistribution, FloatDistribution
        from ray.tune.search.optuna import OptunaSearch

        space = {name: FloatDistribution(low, high) for name, (low, high) in problem.bounds.items()}
        space |= {name: CategoricalDistribution(values) for name, values in problem.categories.items()}
        objectives = problem.objectives
        modes = [mode_of(name) for name in objectives]
        return OptunaSearch(
            space=space,
            metric=list(objectives) if len(objectives) > 1 else objectives[0],
            mode=modes if len(objectives) > 1 else modes[0],
            sampler=_SAMPLERS[sampler](problem),
            points_to_evaluate=list(problem.warm_starts) or None,
        )

    return SearcherSpec(factory, **spec)


def mode_of(metric: str) -> str:
    """Tune's mode for a reported metric: the fitness and most objectives are maximised."""
    return "min" if metric in OBJECTIVES and OBJECTIVES.get(metric).lower_is_better else "max"


def _grid_values(problem: SearchProblem) -> dict[str, list[float]]:
    """Evenly spaced values per gene, as many as the trial budget allows (k^genes <= trials, k >= 2)."""
    choices = math.prod(len(values) for values in problem.categories.values())
    genes = max(1, len(problem.bounds))  # methods with no genes of their own, chosen among: the choice alone
    per_gene = max(2, int(math.floor((problem.num_trials / choices) ** (1 / genes) + 1e-9)))
    return {
        name: [low + (high - low) * i / (per_gene - 1) for i in range(per_gene)]
        for name, (low, high) in problem.bounds.items()
    } | {name: list(values) for name, values in problem.categories.items()}


def _grid_size(problem: SearchProblem) -> int:
    return math.prod(len(v) for v in _grid_values(problem).values())


def _samplers() -> dict[str, Callable[[SearchProblem], Any]]:
    from optuna import samplers

    return {
        "cmaes": lambda p: samplers.CmaEsSampler(seed=p.seed, warn_independent_sampling=False),
        "tpe": lambda p: samplers.TPESampler(seed=p.seed),
        "nsga2": lambda p: samplers.NSGAIISampler(seed=p.seed, population_size=max(4, p.concurrency * 2)),
        "random": lambda p: samplers.RandomSampler(seed=p.seed),
        "grid": lambda p: samplers.GridSampler(_grid_values(p), seed=p.seed),
    }


class _LazySamplers(dict):
    """Optuna is imported when a sampler is first made, not when searchers are registered."""

    def __missing__(self, key: str) -> Callable[[SearchProblem], Any]:
        self.update(_samplers())
        return self[key]


_SAMPLERS = _LazySamplers()

# Optuna's CMA-ES samples a categorical gene independently, at random: it does not search it.
SEARCHERS.add("optuna_cmaes", _optuna("cmaes", takes_categories=False))
SEARCHERS.add("tpe", _optuna("tpe"))
SEARCHERS.add("nsga2", _optuna("nsga2", multi_objective=True))
SEARCHERS.add("random", _optuna("random"))
# The paper's grid-search baseline: per-layer grids explode, so global genes only; finite budget.
SEARCHERS.add("grid", _optuna("grid", granularities=frozenset({"global"}), budget=_grid_size))
