"""The search problem every searcher is made for: genes, bounds, budget, parallelism, seed, and for a gated
pool, which genes are whose."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

Bounds = Mapping[str, tuple[float, float]]


@dataclass(frozen=True)
class ExpertGenes:
    """A gated pool as a searcher that selects experts sees it: each expert's own genes (its gate
    included), and the genome in which exactly a given set of experts takes part, at its reference genes."""

    owned: Mapping[str, tuple[str, ...]]
    together: Callable[[tuple[str, ...]], dict[str, float]]


@dataclass(frozen=True)
class SearchProblem:
    """What every searcher needs: the genes and their bounds, the budget, the parallelism, the seed;
    ``experts``: for a gated pool (``merge.gates``), which genes are whose; ``categories``: the
    categorical genes (``merge.choices``); ``objectives``: what it optimises."""

    bounds: Bounds
    num_trials: int
    concurrency: int
    seed: int
    warm_starts: tuple[dict[str, float], ...] = ()
    experts: ExpertGenes | None = None
    # categorical genes (the method to merge with) and their values, which a searcher treats as unordered
    categories: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    # the metrics the searcher optimises, as the trials report them (several: a multi-objective searcher)
    objectives: tuple[str, ...] = ("fitness",)
