"""MergeRecipe: one merge, fully specified; the single input of both the resident engine and the exporter.

Layers are partitioned into groups; every per-expert parameter (weight, density, ...) has one value per
group and expert, every per-group parameter (slerp's ``t``) one value per group. Tensors outside the
layers follow the group at their end of the network: embeddings the first group, the final norm and
the LM head the last.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, model_validator

from mergesearch.config import Frozen

_LAYER = re.compile(r"\blayers\.(\d+)\.")
INPUT_SIDE = ("embed_tokens", "wte", "word_embeddings")  # tensors merged with the first group


class MergeRecipe(Frozen):
    method: str
    experts: tuple[str, ...] = Field(min_length=1)
    groups: tuple[tuple[int, ...], ...] = Field(min_length=1)  # layer indices of each group
    expert_params: dict[str, tuple[tuple[float, ...], ...]] = {}  # name -> [group][expert]
    group_params: dict[str, tuple[float, ...]] = {}  # name -> [group]
    shared: dict[str, Any] = {}

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
        match = _LAYER.search(tensor_name)
        if match:
            layer = int(match.group(1))
            return next(i for i, g in enumerate(self.groups) if layer in g)
        return 0 if any(key in tensor_name for key in INPUT_SIDE) else len(self.groups) - 1

    def params_for(self, tensor_name: str) -> dict[str, Any]:
        """Keyword arguments of the merge method for one tensor."""
        g = self.group_of(tensor_name)
        return {
            **self.shared,
            **{name: list(values[g]) for name, values in self.expert_params.items()},
            **{name: values[g] for name, values in self.group_params.items()},
        }
