"""The table's rows: each one a way to choose a merge, registered by name.

A row returns the merge it chose (scored on the held-out split by the runner) and what it saw on the
search split. Rows that do not depend on a seed run once; seeded rows run once per protocol seed.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from mergesearch.config import MergeSpaceConfig, gene_id
from mergesearch.errors import UserError
from mergesearch.objectives.data import EvalData
from mergesearch.objectives.evaluate import Scores
from mergesearch.protocol.bench import Bench, Merge
from mergesearch.protocol.config import ProtocolConfig
from mergesearch.registry import Registry
from mergesearch.search.baselines import cocktail_weights, expert_losses

RowResult = tuple[Merge, dict[str, Any]]
ALIGNED_SEARCH = "search_task_alignment"  # the row the paper's fix is judged on; its variants follow it


@dataclass(frozen=True)
class Row:
    name: str
    group: str  # "expert", "data-free", "search" or "cocktail": how the table groups and plots it
    seeded: bool
    choose: Callable[[Bench, int], RowResult]
    # The protocol's sections the row's merge depends on (dotted into a mapping:
    # "alignment_search_variants.NAME"), beside what every row does (search config, models, data): its
    # cells' digest covers only these, so that editing the grid keeps every search cell and adding a
    # search variant keeps every other row's.
    reads: tuple[str, ...] = ()


ROWS: Registry[Row] = Registry("protocol row")


def row(
    name: str, group: str, seeded: bool, reads: tuple[str, ...] = ()
) -> Callable[[Callable[[Bench, int], RowResult]], Row]:
    def add(choose: Callable[[Bench, int], RowResult]) -> Row:
        return ROWS.add(name, Row(name, group, seeded, choose, reads))

    return add


def expert_rows(bench: Bench) -> list[Row]:
    """The base and each expert alone: a task-arithmetic merge with one weight at 1 (base: none)."""

    def alone(expert: str | None) -> Callable[[Bench, int], RowResult]:
        def choose(bench: Bench, seed: int) -> RowResult:
            genes = {f"w.{gene_id(e)}.g0": float(e == expert) for e in bench.experts}
            return Merge.of("task_arithmetic", bench.experts, genes), {}

        return choose

    return [Row(f"expert:{name or 'base'}", "expert", False, alone(name)) for name in (None, *bench.experts)]


def variant_rows(protocol: ProtocolConfig) -> list[Row]:
    """One alignment-aware search row per ``alignment_search_variants`` entry, over that entry's space."""
    return [
        Row(
            f"{ALIGNED_SEARCH}:{name}",
            "search",
            True,
            _search(ALIGNED_SEARCH, name),
            _search_reads(name),
        )
        for name in protocol.alignment_search_variants
    ]


def rows_of(bench: Bench) -> list[Row]:
    """Every row of the protocol, in table order (or the protocol's ``rows`` subset): the variants of the
    alignment-aware search follow it."""
    everything = [*expert_rows(bench)]
    for name in ROWS_ORDER:
        everything.append(ROWS.get(name))
        if name == ALIGNED_SEARCH:
            everything += variant_rows(bench.protocol)
    wanted = bench.protocol.rows
    return [r for r in everything if wanted is None or r.name in wanted]


def check_rows(protocol: ProtocolConfig, experts: list[str]) -> None:
    """Every row the protocol asks for is one of its own (its experts', ``ROWS_ORDER``, its variants)."""
    wanted = protocol.rows
    known = [f"expert:{name}" for name in ("base", *experts)] + list(ROWS_ORDER)
    known += [r.name for r in variant_rows(protocol)]
    unknown = [name for name in wanted or () if name not in known]
    if unknown:
        raise UserError(
            f"rows: no row {', '.join(map(repr, unknown))} in this protocol (rows: {', '.join(known)})"
        )


def _ties_genes(experts: tuple[str, ...], weights: tuple[float, ...], density: float) -> dict[str, float]:
    return {f"w.{gene_id(e)}.g0": w for e, w in zip(experts, weights)} | {
        f"d.{gene_id(e)}.g0": density for e in experts
    }


def _slerp_pair(bench: Bench) -> tuple[str, ...]:
    return (bench.protocol.aligned, bench.protocol.misaligned)


# Equal weights: mergekit's customary weight 1 and density 0.5 per expert; SLERP halfway.
@row("ties_equal", "data-free", seeded=False)
def _ties_equal(bench: Bench, seed: int) -> RowResult:
    experts = bench.experts
    return Merge.of("ties", experts, _ties_genes(experts, (1.0,) * len(experts), 0.5)), {}


@row("dare_ties_equal", "data-free", seeded=True)  # DARE drops at random: the seed matters
def _dare_equal(bench: Bench, seed: int) -> RowResult:
    experts = bench.experts
    return Merge.of("dare_ties", experts, _ties_genes(experts, (1.0,) * len(experts), 0.5)), {}


@row("slerp_equal", "data-free", seeded=False)
def _slerp_equal(bench: Bench, seed: int) -> RowResult:
    return Merge.of("slerp", _slerp_pair(bench), {"t.g0": 0.5}), {}


def _grid(bench: Bench, seed: int, candidates: Iterator[Merge]) -> RowResult:
    """The candidate with the best search-split fitness (the search config's fitness weights)."""
    scored = [(bench.search_score(m, seed).fitness, i, m) for i, m in enumerate(candidates)]
    fitness, _, best = max(scored, key=lambda s: (-math.inf if math.isnan(s[0]) else s[0], -s[1]))
    return best, {"search_fitness": fitness, "grid_points": len(scored)}


def _ties_grid(method: str) -> Callable[[Bench, int], RowResult]:
    def choose(bench: Bench, seed: int) -> RowResult:
        grid = bench.protocol.grid
        experts = bench.experts
        points = itertools.product(itertools.product(grid.weights, repeat=len(experts)), grid.densities)
        return _grid(bench, seed, (Merge.of(method, experts, _ties_genes(experts, w, d)) for w, d in points))

    return choose


ROWS.add("ties_grid", Row("ties_grid", "data-free", False, _ties_grid("ties"), ("grid",)))
ROWS.add("dare_ties_grid", Row("dare_ties_grid", "data-free", True, _ties_grid("dare_ties"), ("grid",)))


@row("slerp_grid", "data-free", seeded=False, reads=("grid",))
def _slerp_grid(bench: Bench, seed: int) -> RowResult:
    pair = _slerp_pair(bench)
    return _grid(bench, seed, (Merge.of("slerp", pair, {"t.g0": t}) for t in bench.protocol.grid.slerp_t))


# The evolutionary searches: what each one's fitness sees.
SEARCH_FITNESS: dict[str, Callable[[Bench], dict[str, float]]] = {
    "search_task_only": lambda bench: {"task_accuracy": 1.0},
    ALIGNED_SEARCH: lambda bench: dict(bench.setup.config.fitness.weights),
    "search_loss_proxy": lambda bench: {"loss_proxy": 1.0},
}


def _search_reads(variant: str | None) -> tuple[str, ...]:
    """The protocol section a search row reads: its search space (``ProtocolConfig.searches``' key)."""
    return ("search",) if variant is None else (f"alignment_search_variants.{variant}",)


def _search(name: str, variant: str | None = None) -> Callable[[Bench, int], RowResult]:
    """A Tune search with ``name``'s fitness over the protocol's search space (or its ``variant``'s)."""
    row_name = name if variant is None else f"{name}:{variant}"

    def choose(bench: Bench, seed: int) -> RowResult:
        from mergesearch.search.run_dir import RunDir
        from mergesearch.search.validate import best_by_fitness, validated
        from mergesearch.workflow import SEARCH_ONLY, search_to_report

        (section,) = _search_reads(variant)
        rows = bench.protocol.searches()[section]
        space = rows.space()
        setup = bench.setup.with_merge(space)
        config = setup.config
        config = config.model_copy(
            update={
                # a valid run name, as a config's must be
                "name": f"{bench.protocol.name}_{row_name.replace(':', '_')}_seed{seed}",
                "fitness": config.fitness.model_copy(
                    update={"weights": SEARCH_FITNESS[name](bench), "loss_alpha": rows.loss_alpha}
                ),
                "search": config.search.model_copy(
                    update={
                        "name": rows.searcher,
                        "num_trials": rows.trials,
                        "seed": seed,
                        "warm_starts": ["uniform"],
                        "queued_per_evaluator": rows.queued_per_evaluator,
                    }
                ),
            }
        )
        folder = bench.search_folder(row_name, seed, (section,))
        run = RunDir(folder)
        # the search alone: the cell scores its best genome on the held-out split itself
        searched = dataclasses.replace(setup, config=config)
        # a search resumed from sessions of earlier runs: their time is the cell's too
        earlier_s = sum(session["wall_s"] for session in run.efficiency())
        search_to_report(searched, run, bench.log, SEARCH_ONLY, bench.search_actors)
        extras: dict[str, Any] = {
            "trials": run.trial_count(),
            "run_dir": str(folder.relative_to(bench.folder)),
            "earlier_sessions_wall_s": round(earlier_s, 2),
        }
        ranked = best_by_fitness(run.trials(), max(rows.validate_top, 1))
        if rows.validate_top:
            evaluator = bench.evaluator(space, bench.experts)

            def score(genomes: list[Mapping[str, float]], data: EvalData) -> Generator[Scores, None, None]:
                for genes in genomes:
                    yield evaluator.evaluate(genes, seed, fitness=config.fitness, data=data)

            whole = searched.validation_data(f"{section}.validate_top")
            ranked = [t for t in validated(run, config, ranked, whole, score, bench.log) if t.full]
            extras["validated"] = {t.trial_id: [t.counts["search_fitness"], t.fitness] for t in ranked}
        if not ranked:
            raise UserError(f"{run.root}: no trial of {row_name} seed {seed} was scored in full")
        best = ranked[0]
        extras["search_fitness"] = best.counts.get("search_fitness", best.fitness)
        return Merge(space, bench.experts, dict(best.genes)), extras

    return choose


for _name in SEARCH_FITNESS:
    ROWS.add(_name, Row(_name, "search", True, _search(_name), _search_reads(None)))


def _cocktail(types: tuple[str, ...], temperature: float) -> Callable[[Bench, int], RowResult]:
    """A linear merge weighted by each expert's loss on a few examples of ``types``, drawn by seed."""

    def choose(bench: Bench, seed: int) -> RowResult:
        experts = bench.experts
        evaluator = bench.evaluator(MergeSpaceConfig(method="linear"), experts)
        rng = random.Random(seed)
        examples = []
        for type_ in types:
            pool = [r for r in evaluator.data.tagged if r[2] == type_]
            examples += rng.sample(pool, min(bench.protocol.cocktail.examples, len(pool)))
        losses = expert_losses(evaluator, examples)
        weights = cocktail_weights(losses, temperature)
        genes = {f"w.{gene_id(e)}.g0": w for e, w in weights.items()}
        return Merge.of("linear", experts, genes), {"losses": losses, "weights": weights}

    return choose


for _types, _label in ((("task",), "lm_cocktail"), (("task", "alignment"), "lm_cocktail_aligned")):
    for _t in (1.0, 5.0):
        _name = f"{_label}_T{_t:g}"
        ROWS.add(_name, Row(_name, "cocktail", True, _cocktail(_types, _t), ("cocktail",)))

ROWS_ORDER = (
    "ties_equal",
    "dare_ties_equal",
    "slerp_equal",
    "ties_grid",
    "dare_ties_grid",
    "slerp_grid",
    "search_task_only",
    ALIGNED_SEARCH,
    "search_loss_proxy",
    "lm_cocktail_T1",
    "lm_cocktail_T5",
    "lm_cocktail_aligned_T1",
    "lm_cocktail_aligned_T5",
)
