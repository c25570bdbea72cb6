"""Searchers in a registry: each turns the genome space into a Ray Tune ``Searcher``.

Nevergrad (``cma`` default, ``ngopt``, ``de``, ``pso``) through ``NevergradSearch``; Optuna (``optuna_cmaes``,
``tpe``, ``nsga2`` multi-objective over safety and task accuracy, ``random``, ``grid`` over the global
genes, the paper's grid-search baseline) through ``OptunaSearch``. All are seeded, take warm-start
genomes, and save/restore their state with the Tune experiment, so a resumed search continues.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mergesearch.errors import UserError
from mergesearch.registry import Registry

Bounds = Mapping[str, tuple[float, float]]
MULTI_OBJECTIVE = ("safety", "task_accuracy")


@dataclass(frozen=True)
class SearchProblem:
    """What every searcher needs: the genes and their bounds, the budget, the parallelism, the seed."""

    bounds: Bounds
    num_trials: int
    concurrency: int
    seed: int
    warm_starts: tuple[dict[str, float], ...] = ()


SearcherFactory = Callable[[SearchProblem], object]
SEARCHERS: Registry[SearcherFactory] = Registry("searcher")
register_searcher = SEARCHERS.register
MULTI_OBJECTIVE_SEARCHERS = {"nsga2"}


def make_searcher(name: str, problem: SearchProblem):  # noqa: ANN201 - a ray.tune Searcher
    return SEARCHERS.get(name)(problem)


# ------------------------------------------------------------------------------------ nevergrad
def _nevergrad(optimizer_name: str) -> SearcherFactory:
    def factory(problem: SearchProblem):  # noqa: ANN202
        import nevergrad as ng
        import numpy as np
        from ray.tune.search.nevergrad import NevergradSearch

        # Warm starts are injected into CMA's population, which `cma` reports as "orphanated" when they
        # arrive one `ask` at a time (asynchronous trials): expected here, so not shown.
        warnings.filterwarnings("ignore", message=".*orphanated injected solution.*")
        space = ng.p.Dict(
            **{name: ng.p.Scalar(lower=low, upper=high) for name, (low, high) in problem.bounds.items()}
        )
        space.random_state = np.random.RandomState(problem.seed)
        optimizer = getattr(ng.optimizers, optimizer_name)
        return NevergradSearch(
            optimizer=optimizer,
            optimizer_kwargs={"budget": problem.num_trials, "num_workers": problem.concurrency},
            space=space,
            metric="fitness",
            mode="max",
            points_to_evaluate=list(problem.warm_starts) or None,
        )

    return factory


for _name, _optimizer in (("cma", "CMA"), ("ngopt", "NGOpt"), ("de", "TwoPointsDE"), ("pso", "PSO")):
    register_searcher(_name)(_nevergrad(_optimizer))


# ------------------------------------------------------------------------------------ optuna
def _optuna(
    make_sampler: Callable[[SearchProblem], object], multi_objective: bool = False
) -> SearcherFactory:
    def factory(problem: SearchProblem):  # noqa: ANN202
        from optuna.distributions import FloatDistribution
        from ray.tune.search.optuna import OptunaSearch

        space = {name: FloatDistribution(low, high) for name, (low, high) in problem.bounds.items()}
        metric, mode = (list(MULTI_OBJECTIVE), ["max", "max"]) if multi_objective else ("fitness", "max")
        return OptunaSearch(
            space=space,
            metric=metric,
            mode=mode,
            sampler=make_sampler(problem),
            points_to_evaluate=list(problem.warm_starts) or None,
        )

    return factory


def _grid_values(problem: SearchProblem) -> dict[str, list[float]]:
    """Evenly spaced values per gene, as many as the trial budget allows (k^genes <= trials, k >= 2)."""
    genes = len(problem.bounds)
    per_gene = max(2, int(math.floor(problem.num_trials ** (1 / genes) + 1e-9)))
    return {
        name: [low + (high - low) * i / (per_gene - 1) for i in range(per_gene)]
        for name, (low, high) in problem.bounds.items()
    }


def grid_size(problem: SearchProblem) -> int:
    return math.prod(len(v) for v in _grid_values(problem).values())


register_searcher("optuna_cmaes")(
    _optuna(
        lambda p: __import__("optuna").samplers.CmaEsSampler(seed=p.seed, warn_independent_sampling=False)
    )
)
register_searcher("tpe")(_optuna(lambda p: __import__("optuna").samplers.TPESampler(seed=p.seed)))
register_searcher("nsga2")(
    _optuna(
        lambda p: __import__("optuna").samplers.NSGAIISampler(
            seed=p.seed, population_size=max(4, p.concurrency * 2)
        ),
        multi_objective=True,
    )
)
register_searcher("random")(_optuna(lambda p: __import__("optuna").samplers.RandomSampler(seed=p.seed)))
register_searcher("grid")(
    _optuna(lambda p: __import__("optuna").samplers.GridSampler(_grid_values(p), seed=p.seed))
)


def grid_points(problem: SearchProblem) -> list[dict[str, float]]:
    """Every point of the grid (for reports and tests)."""
    values = _grid_values(problem)
    return [dict(zip(values, combo)) for combo in itertools.product(*values.values())]


def check_searcher(name: str, granularity: str, genes: Sequence[str]) -> None:
    """The grid is over global genes only: per-layer grids explode."""
    if name == "grid" and granularity != "global":
        raise UserError(
            f"search.name grid: the grid covers global genes only (merge.granularity is {granularity!r}; {len(genes)} genes)"
        )
