"""MergeRecipe: one merge, fully specified; the single input of both the resident engine and the exporter.

Layers are partitioned into groups; every per-expert parameter (weight, density, ...) has one value per
group and expert, every per-group parameter (slerp's ``t``) one value per group. Tensors outside the
layers follow the group at their end of the network: embeddings the first group, the final norm and
the LM head the last (``head_group: last``), or the first (``head_group: first``: what a mergekit
gradient gives them, as mergekit reads every tensor outside the layers at the gradient's start).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from mergesearch.config import Frozen

LAYER = re.compile(r"\blayers\.(\d+)\.")  # a decoder layer's tensors, and which layer
INPUT_SIDE = ("embed_tokens", "wte", "word_embeddings")  # tensors merged with the first group


class MergeRecipe(Frozen):
    method: str
    experts: tuple[str, ...] = Field(min_length=1)
    groups: tuple[tuple[int, ...], ...] = Field(min_length=1)  # layer indices of each group
    expert_params: dict[str, tuple[tuple[float, ...], ...]] = {}  # name -> [group][expert]
    group_params: dict[str, tuple[float, ...]] = {}  # name -> [group]
    shared: dict[str, Any] = {}
    head_group: Literal["last", "first"] = "last"  # the group the final norm and the LM head follow

    @model_validator(mode="after")
    def _shapes_agree(self) -> MergeRecipe:
        layers = sorted(i for g in self.groups for i in g)
        if layers != list(range(len(layers))):
            raise ValueError("groups must partition the layers 0..n-1")
        for name, per_group in self.expert_params.items():
            if len(per_group) != len(self.groups) or any(len(v) != len(self.experts) for v in per_group):
                raise ValueError(
                    f"{name}: needs one value per group and expert ({len(self.groups)}x{len(self.experts)})"
                )
        for name, per_group in self.group_params.items():
            if len(per_group) != len(self.groups):
                raise ValueError(f"{name}: needs one value per group ({len(self.groups)})")
        return self

    @property
    def num_layers(self) -> int:
        return sum(len(g) for g in self.groups)

    def group_of(self, tensor_name: str) -> int:
        """The group whose parameters merge ``tensor_name``."""
        match = LAYER.search(tensor_name)
        if match:
            layer = int(match.group(1))
            return next(i for i, g in enumerate(self.groups) if layer in g)
        if any(key in tensor_name for key in INPUT_SIDE) or self.head_group == "first":
            return 0
        return len(self.groups) - 1

    def regrouped(self, groups: tuple[tuple[int, ...], ...]) -> MergeRecipe:
        """The same merge over other layer groups: each new group takes the value its layers share; a
        group whose layers differ in a parameter is refused (ValueError naming it)."""
        layer_group = {layer: g for g, layers in enumerate(self.groups) for layer in layers}

        def value_of(values: tuple, layers: tuple[int, ...], name: str) -> Any:
            found = {values[layer_group[layer]] for layer in layers}
            if len(found) > 1:
                raise ValueError(f"{name} differs between layers {layers[0]}-{layers[-1]}, one group there")
            return found.pop()

        def per_group(params: dict[str, tuple]) -> dict[str, tuple]:
            return {p: tuple(value_of(v, layers, p) for layers in groups) for p, v in params.items()}

        update = {
            "groups": groups,
            "expert_params": per_group(self.expert_params),
            "group_params": per_group(self.group_params),
        }
        return self.model_copy(update=update)

    def params_for(self, tensor_name: str) -> dict[str, Any]:
        """Keyword arguments of the merge method for one tensor."""
        g = self.group_of(tensor_name)
        return {
            **self.shared,
            **{name: list(values[g]) for name, values in self.expert_params.items()},
            **{name: values[g] for name, values in self.group_params.items()},
        }
