"""What a merge method declares: its function and its parameters (mergekit's ``ConfigParameterDef``s).

Each parameter says its scope, so the genome, the config check, the mergekit exporter and the report all
read one declaration:

- ``expert``: one value per expert and layer group (a gene: ``w.math.g0``);
- ``group``: one value per layer group (a gene: slerp's ``t.g0``);
- ``shared``: one value for the whole merge, set in the config (``normalize``, ``lambda``...), never searched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from mergesearch.errors import UserError
from mergesearch.registry import MERGE_METHODS

Scope = Literal["expert", "group", "shared"]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a merge method. ``bounds`` and ``gene`` are for searched (expert/group) ones;
    ``mergekit``: the parameter's name in mergekit, or None when mergekit has no such parameter."""

    name: str
    scope: Scope
    default: Any = None
    bounds: tuple[float, float] | None = None
    gene: str | None = None
    mergekit: str | None = None

    def __post_init__(self) -> None:
        if (self.scope == "shared") != (self.gene is None) or (self.gene is None) != (self.bounds is None):
            raise ValueError(f"parameter {self.name!r}: searched parameters take a gene prefix and bounds")


# The parameters the built-in methods share, declared once (mergekit's names, meanings and defaults: the
# value a mergekit recipe that leaves one out means; weight has none, a recipe must set it).
WEIGHT = ParamSpec("weight", "expert", bounds=(0.0, 1.0), gene="w", mergekit="weight")
DENSITY = ParamSpec("density", "expert", 1.0, bounds=(0.1, 1.0), gene="d", mergekit="density")
GAMMA = ParamSpec("gamma", "expert", 0.01, bounds=(0.0, 0.1), gene="gamma", mergekit="gamma")
EPSILON = ParamSpec("epsilon", "expert", 0.15, bounds=(0.01, 0.2), gene="eps", mergekit="epsilon")
T = ParamSpec("t", "group", default=0.5, bounds=(0.0, 1.0), gene="t", mergekit="t")


def setting(name: str, default: Any, mergekit: bool = True) -> ParamSpec:
    """A shared parameter (one value per merge), under the same name in mergekit unless told otherwise."""
    return ParamSpec(name, "shared", default=default, mergekit=name if mergekit else None)


@dataclass(frozen=True)
class MergeMethod:
    """A registered method: its tensor function and its declared parameters.

    ``mergekit``: the method's name in mergekit (None: mergekit has none, recipes are materialised by our
    engine). ``randomized``: draws random masks (a seed makes it reproducible in our engine).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    params: tuple[ParamSpec, ...]
    mergekit: str | None = None
    randomized: bool = False
    min_experts: int = 1
    max_experts: int | None = None
    # Takes ``sorted_magnitudes`` (each task vector's |τ| sorted ascending) to skip per-merge sorting.
    uses_magnitude_order: bool = False
    # Optional allocation-free kernel writing the merge straight into ``out`` (same result as ``fn``).
    into: Callable[..., None] | None = None
    # Optional genome-independent precomputation per tensor, from the task vectors and the shared
    # parameters alone; its result goes back to ``fn`` as ``factors`` (the resident engine caches it).
    factorize: Callable[..., Any] | None = None
    # Declared by the method: an expert at weight 0 adds nothing and draws nothing (no per-expert random
    # masks), so leaving it out is the same merge (a gated pool's closed experts; mergekit recipes).
    weightless_absent: bool = False
    # ``into`` is compiled once per number of experts (a fused kernel): merging a varying number would
    # recompile it, so the engine always hands it every expert, weightless or not.
    compiled_per_expert_count: bool = False
    # What the mergekit recipe names as ``base_model``: the base (task-vector methods), the first expert
    # (slerp interpolates from it), or nothing (the method averages the listed models alone).
    mergekit_base: Literal["base", "first_expert", "none"] = "base"
    # The method holds every expert's copy of a tensor at once (stacked, or normalised together): work
    # memory the plan counts on the merge's device, beyond the pool.
    stacks_experts: bool = False

    def scoped(self, *scopes: Scope) -> tuple[ParamSpec, ...]:
        return tuple(p for p in self.params if p.scope in scopes)

    def param(self, name: str) -> ParamSpec:
        found = next((p for p in self.params if p.name == name), None)
        if found is None:
            known = ", ".join(p.name for p in self.params)
            raise UserError(f"merge method {self.name!r} has no parameter {name!r} (its parameters: {known})")
        return found

    @property
    def skips_weightless(self) -> bool:
        """Whether the engine leaves weight-0 experts out of a tensor's merge (less work, same result)."""
        return self.weightless_absent and not self.compiled_per_expert_count

    @property
    def defaults(self) -> dict[str, Any]:
        """Values of the group and shared parameters when a recipe does not set them."""
        return {p.name: p.default for p in self.scoped("group", "shared")}

    def check_experts(self, count: int) -> None:
        if count < self.min_experts or (self.max_experts is not None and count > self.max_experts):
            if self.min_experts == self.max_experts:
                wanted = f"exactly {self.min_experts}"
            elif count < self.min_experts:
                wanted = f"at least {self.min_experts}"
            else:
                wanted = f"at most {self.max_experts}"
            raise UserError(f"merge method {self.name!r} merges {wanted} experts, got {count}")

    def _arguments(
        self, count: int, params: dict[str, Any], generator: torch.Generator | None
    ) -> dict[str, Any]:
        """Defaults filled in, unknown parameters and expert counts refused."""
        optional = (
            *(("sorted_magnitudes",) if self.uses_magnitude_order else ()),
            *(("factors",) if self.factorize else ()),
        )
        unknown = set(params) - {p.name for p in self.params} - set(optional)
        if unknown:
            raise UserError(f"merge method {self.name!r}: unknown parameter(s) {', '.join(sorted(unknown))}")
        self.check_experts(count)
        kwargs = {**self.defaults, **params}
        if self.randomized:
            kwargs["generator"] = generator
        return kwargs

    def __call__(
        self,
        base: torch.Tensor,
        task_vectors: Sequence[torch.Tensor],
        *,
        generator: torch.Generator | None = None,
        **params: Any,
    ) -> torch.Tensor:
        return self.fn(base, task_vectors, **self._arguments(len(task_vectors), params, generator))

    def factors_for(
        self, base: torch.Tensor, task_vectors: Sequence[torch.Tensor], params: dict[str, Any]
    ) -> Any:
        """The genome-independent precomputation for one tensor (None when the method has none)."""
        if self.factorize is None:
            return None
        settings = {p.name: params.get(p.name, p.default) for p in self.scoped("shared")}
        return self.factorize(base, task_vectors, **settings)

    def merge_into(
        self,
        out: torch.Tensor,
        base: torch.Tensor,
        task_vectors: Sequence[torch.Tensor],
        *,
        generator: torch.Generator | None = None,
        **params: Any,
    ) -> None:
        """Write the merge into ``out`` (a model's parameter): in place when the method has a kernel."""
        kwargs = self._arguments(len(task_vectors), params, generator)
        if self.into is not None:
            self.into(out, base, task_vectors, **kwargs)
        else:
            out.copy_(self.fn(base, task_vectors, **kwargs))


def register_method(method: MergeMethod) -> MergeMethod:
    """Make ``method`` known by its name (refused if the name is taken)."""
    return MERGE_METHODS.add(method.name, method)


def get_method(name: str) -> MergeMethod:
    method: MergeMethod = MERGE_METHODS.get(name)
    return method
