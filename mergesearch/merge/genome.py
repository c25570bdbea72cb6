"""GenomeSpace: the searcher's view of a merge, as a flat dict of named, bounded genes.

Gene names are stable and readable: ``w.math.g0`` is expert ``math``'s weight in layer group 0,
``d.math.g0`` its density, ``t.g2`` slerp's interpolation in group 2, ``gate.math`` whether ``math``
takes part at all (with ``merge.gates``: a many-expert pool's search selects experts as it weighs them).
The genes, their prefixes and default bounds come from the method's declared parameters
(``merge/spec.py``). ``decode`` turns a genome into a MergeRecipe; ``encode`` does the reverse, so known
merges (uniform, one expert alone) seed a search.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from mergesearch.config import GatesConfig, gene_id, method_options
from mergesearch.errors import UserError
from mergesearch.merge.recipe import MergeRecipe
from mergesearch.merge.spec import MergeMethod, ParamSpec, get_method

Genome = dict[str, float]
GATE_PREFIX = "gate"
# With several methods to choose from, the chosen one's index: a categorical gene (stored as a float, so a
# genome stays a dict of floats in the ledger; searchers see its values as unordered categories).
METHOD_GENE = "method"
GATE_OPEN = 0.5  # a threshold gate at or above this lets its expert take part
Granularity = Literal["global", "groups", "layer"]


def chosen_method(methods: Sequence[str], genome: Mapping[str, float]) -> str:
    """The method a genome merges with, of ``methods`` (``method_options``): the one its ``method`` gene
    indexes, or the only one."""
    return methods[int(round(float(genome[METHOD_GENE])))] if len(methods) > 1 else methods[0]


def layer_groups(
    num_layers: int, granularity: Granularity, group_size: int = 1
) -> tuple[tuple[int, ...], ...]:
    size = {"global": num_layers, "layer": 1}.get(granularity, group_size)
    return tuple(tuple(range(start, min(start + size, num_layers))) for start in range(0, num_layers, size))


class GenomeSpace:
    """Genes per expert and layer group for each of a method's searched parameters, with their bounds."""

    def __init__(
        self,
        method: str,
        experts: Sequence[str],
        num_layers: int,
        granularity: Granularity = "global",
        group_size: int = 1,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        shared: Mapping[str, Any] | None = None,
        normalize_weights: bool = False,
        gates: GatesConfig | None = None,
        head_group: Literal["last", "first"] = "last",
        centre: Mapping[str, float] | None = None,
        radius: float = 0.25,
        choices: Sequence[str] = (),
    ) -> None:
        """``bounds`` override the declared ones by parameter name; ``shared`` sets shared parameters;
        ``normalize_weights``: decode each group's expert weights to sum to 1 (a search over mixtures);
        ``gates``: one gate gene per expert, a closed expert merges at weight 0; ``head_group``: the
        group the final norm and LM head follow (``MergeRecipe``); ``centre``: a genome (a recipe's) the
        search explores around: each of its genes bounded to ± ``radius`` of its parameter's range
        around it, clipped to that range; ``choices``: other methods a categorical gene (``method``)
        picks among, genes of the same parameter shared between them."""
        self.method = method
        self.methods = method_options(method, choices)
        specs = [get_method(m) for m in self.methods]
        for spec in specs:
            spec.check_experts(len(experts))
        declared = {p.name for spec in specs for p in spec.params}
        for name in [*(bounds or {}), *(shared or {})]:
            if name not in declared:
                specs[0].param(name)  # one line naming the method and its parameters
        self.experts = tuple(experts)
        self.groups = layer_groups(num_layers, granularity, group_size)
        searched = _union_of_searched(specs)
        self.expert_params = tuple(p.name for p in searched if p.scope == "expert")
        self.group_params = tuple(p.name for p in searched if p.scope == "group")
        self._defaults = {k: v for spec in reversed(specs) for k, v in spec.defaults.items()}
        self._searched_by = {m.name: {p.name for p in m.scoped("expert", "group")} for m in specs}
        self._shared_by = {m.name: {p.name for p in m.scoped("shared")} for m in specs}
        self.bounds = {p.name: tuple((bounds or {}).get(p.name, p.bounds)) for p in searched}
        self._by_prefix: dict[str, ParamSpec] = {str(p.gene): p for p in searched}
        self._prefix = {p.name: str(p.gene) for p in searched}
        self.shared = dict(shared or {})
        self.head_group = head_group
        self.normalize_weights = normalize_weights
        self.gates = gates
        if gates is not None:
            for name, params in self._searched_by.items():
                if "weight" not in params:
                    raise UserError(f"merge.gates: {name} has no per-expert weight for a gate to close")
            if gates.k is not None and gates.k > len(self.experts):
                pool = len(self.experts)
                raise UserError(f"merge.gates.k: {gates.k} experts asked for, the pool has {pool}")
        self.centre = dict(centre) if centre is not None else None
        self._centred: dict[str, tuple[float, float]] = {}
        for gene in self.gene_bounds() if centre is not None else ():
            if gene.startswith(f"{GATE_PREFIX}."):
                continue  # a gate stays free to open or close
            if gene not in centre:
                raise UserError(f"the search's centre has no value for gene {gene!r}")
            low, high = self._bounds_of(gene)
            value = float(centre[gene])
            if not low - 1e-12 <= value <= high + 1e-12:
                raise UserError(
                    f"{gene} starts at {value:g}, outside merge.bounds.{self.param_of(gene)} "
                    f"({low:g} to {high:g}); widen the bounds to search around it"
                )
            reach = radius * (high - low)
            self._centred[gene] = (max(low, value - reach), min(high, value + reach))

    @property
    def num_layers(self) -> int:
        return sum(len(g) for g in self.groups)

    def gene_names(self) -> list[str]:
        groups = range(len(self.groups))
        names = [self._gene(p, e, g) for p in self.expert_params for e in self.experts for g in groups]
        names += [self._gene(p, None, g) for p in self.group_params for g in groups]
        names += [self._gate(e) for e in self.experts] * (self.gates is not None)
        return names + [METHOD_GENE] * (len(self.methods) > 1)

    def gene_bounds(self) -> dict[str, tuple[float, float]]:
        """The continuous genes and their bounds (every gene but ``method``)."""
        return {name: self._bounds_of(name) for name in self.gene_names() if name != METHOD_GENE}

    def categories(self) -> dict[str, tuple[float, ...]]:
        """The categorical genes and their values: ``method``, the index of each method to choose from."""
        return (
            {METHOD_GENE: tuple(float(i) for i in range(len(self.methods)))} if len(self.methods) > 1 else {}
        )

    def method_of(self, genome: Mapping[str, float]) -> str:
        """The method a genome merges with."""
        return chosen_method(self.methods, genome)

    def open_experts(self, genome: Mapping[str, float]) -> tuple[str, ...]:
        """The experts a genome's gates let take part (every expert without gates), in pool order."""
        if self.gates is None:
            return self.experts
        gate = {e: float(genome[self._gate(e)]) for e in self.experts}
        if self.gates.kind == "top_k":
            ranked = sorted(self.experts, key=lambda e: -gate[e])  # stable: ties go to the earlier expert
            chosen = set(ranked[: self.gates.k])
        else:
            chosen = {e for e in self.experts if gate[e] >= GATE_OPEN}
        return tuple(e for e in self.experts if e in chosen)

    def decode(self, genome: Mapping[str, float]) -> MergeRecipe:
        expected = set(self.gene_names())
        missing, unknown = sorted(expected - set(genome)), sorted(set(genome) - expected)
        if missing or unknown:
            raise UserError(f"genome does not fit the space: missing {missing[:3]}, unknown {unknown[:3]}")
        groups = range(len(self.groups))
        method = self.method_of(genome)
        searched = self._searched_by[method]  # the chosen method's genes (all of them with one method)
        expert_params = {
            p: tuple(tuple(float(genome[self._gene(p, e, g)]) for e in self.experts) for g in groups)
            for p in self.expert_params
            if p in searched
        }
        if self.gates is not None:
            taking_part = [e in self.open_experts(genome) for e in self.experts]
            expert_params["weight"] = tuple(
                tuple(w if part else 0.0 for w, part in zip(per_group, taking_part))
                for per_group in expert_params["weight"]
            )
        if self.normalize_weights and "weight" in expert_params:
            taking_part = [e in self.open_experts(genome) for e in self.experts]
            expert_params["weight"] = tuple(
                _sum_to_one(per_group, taking_part) for per_group in expert_params["weight"]
            )
        return MergeRecipe(
            method=method,
            experts=self.experts,
            groups=self.groups,
            expert_params=expert_params,
            group_params={
                p: tuple(float(genome[self._gene(p, None, g)]) for g in groups)
                for p in self.group_params
                if p in searched
            },
            shared={k: v for k, v in self.shared.items() if k in self._shared_by[method]},
            head_group=self.head_group,
        )

    def encode(self, recipe: MergeRecipe) -> Genome:
        """The genome of ``recipe`` (with normalised weights, one of the genomes that decode to it)."""
        if (recipe.groups, recipe.experts, recipe.head_group) != (
            self.groups,
            self.experts,
            self.head_group,
        ) or recipe.method not in self.methods:
            raise UserError(
                "recipe was not made in this genome space (method, experts, layer groups or head differ)"
            )
        groups = range(len(self.groups))
        genome = self.uniform() if len(self.methods) > 1 else {}  # genes the recipe's method lacks
        genome |= {
            self._gene(p, e, g): v[g][i]
            for p, v in recipe.expert_params.items()
            for g in groups
            for i, e in enumerate(self.experts)
        }
        genome |= {self._gene(p, None, g): v[g] for p, v in recipe.group_params.items() for g in groups}
        if self.gates is not None:  # open exactly the experts the recipe weighs
            weights = recipe.expert_params["weight"]
            genome |= {
                self._gate(e): float(any(w[i] != 0 for w in weights)) for i, e in enumerate(self.experts)
            }
        if len(self.methods) > 1:
            genome[METHOD_GENE] = float(self.methods.index(recipe.method))
        return genome

    def uniform(self) -> Genome:
        """Every expert at weight 1/n, group parameters at their default (slerp's t halfway), other genes
        at their upper bound (keep all); clipped to the bounds."""

        def value(name: str) -> float:
            param = self.param_of(name)
            if param == "weight":
                return 1 / len(self.experts)
            return self._defaults[param] if param in self.group_params else self.bounds[param][1]

        genes = [name for name in self.gene_bounds() if name not in self._gates]
        genome = {name: self._clip(name, value(name)) for name in genes} | dict.fromkeys(self._gates, 1.0)
        return genome | dict.fromkeys(self.categories(), 0.0)  # the first method

    def expert_alone(self, expert: str) -> Genome:
        """Only ``expert`` merged (weight 1), others at weight 0."""
        genome = self.together((expert,))
        if "t" in self.group_params:  # slerp: t runs from the first expert (0) to the second (1)
            for g in range(len(self.groups)):
                genome[self._gene("t", None, g)] = self._clip(
                    self._gene("t", None, g), float(self.experts.index(expert))
                )
        return genome

    def together(self, experts: Sequence[str]) -> Genome:
        """``experts`` merged at weight 1 each (clipped to the bounds), the others at weight 0 (and their
        gates closed); other genes as in ``uniform``."""
        unknown = sorted(set(experts) - set(self.experts))
        if unknown:
            raise UserError(f"unknown expert {unknown[0]!r}; experts: {', '.join(self.experts)}")
        genome = self.uniform()
        for g in range(len(self.groups)):
            for e in self.experts if "weight" in self.expert_params else ():
                gene = self._gene("weight", e, g)
                genome[gene] = self._clip(gene, float(e in experts))
        return genome | {self._gate(e): float(e in experts) for e in self.experts if self.gates is not None}

    def genes_of_expert(self, expert: str) -> list[str]:
        """The genes that belong to ``expert`` (its weights, densities... and its gate)."""
        return [n for n in self.gene_names() if n in self._owned(expert)]

    def _owned(self, expert: str) -> set[str]:
        groups = range(len(self.groups))
        own = {self._gene(p, expert, g) for p in self.expert_params for g in groups}
        return own | ({self._gate(expert)} if self.gates is not None else set())

    def param_of(self, gene: str) -> str:
        return self._by_prefix[gene.split(".", 1)[0]].name

    @property
    def _gates(self) -> list[str]:
        return [self._gate(e) for e in self.experts] if self.gates is not None else []

    @staticmethod
    def _gate(expert: str) -> str:
        return f"{GATE_PREFIX}.{gene_id(expert)}"

    def _bounds_of(self, gene: str) -> tuple[float, float]:
        if gene in self._centred:
            return self._centred[gene]
        return (0.0, 1.0) if gene.startswith(f"{GATE_PREFIX}.") else self.bounds[self.param_of(gene)]

    def gene(self, param: str, expert: str | None = None, group: int = 0) -> str:
        """The gene of ``param`` (``weight``, ``density``...) for ``expert`` (by its name) in ``group``."""
        return self._gene(param, expert, group)

    def _gene(self, param: str, expert: str | None, group: int) -> str:
        prefix = self._prefix[param]
        return f"{prefix}.{gene_id(expert)}.g{group}" if expert else f"{prefix}.g{group}"

    def _clip(self, gene: str, value: float) -> float:
        low, high = self._bounds_of(gene)
        return min(max(value, low), high)


def _sum_to_one(weights: tuple[float, ...], taking_part: list[bool]) -> tuple[float, ...]:
    """Weights scaled to sum to 1; all at zero: equal among the experts taking part (none: all zero)."""
    total = sum(weights)
    if total > 1e-12:
        return tuple(w / total for w in weights)
    count = sum(taking_part)
    return tuple(float(part) / count if count else 0.0 for part in taking_part)


def _union_of_searched(specs: Sequence[MergeMethod]) -> list[ParamSpec]:
    """The searched parameters of several methods, each once: a parameter two methods declare alike is
    one gene; declared differently (scope, gene prefix or bounds) it cannot be, and is refused."""
    found: dict[str, ParamSpec] = {}
    for spec in specs:
        for param in spec.scoped("expert", "group"):
            seen = found.setdefault(param.name, param)
            if (seen.scope, seen.gene, seen.bounds) != (param.scope, param.gene, param.bounds):
                raise UserError(
                    f"merge.choices: {param.name!r} is a different gene in {spec.name} than in another "
                    "method chosen among; choose among methods whose shared parameters agree"
                )
    return list(found.values())
