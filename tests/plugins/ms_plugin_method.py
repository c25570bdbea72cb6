"""A user's merge method, in a module of its own: one registration, no other edit anywhere.

``gated_sum``: merged = b + gain · Σ gateᵢ·τᵢ, with a per-expert gate searched in [0, 1] (gene ``gate``)
and a shared gain set in the config. Named in a config as ``plugins: [ms_plugin_method]``.
"""

from collections.abc import Sequence

import torch

from mergesearch.merge.spec import MergeMethod, ParamSpec, register_method, setting


def gated_sum(
    base: torch.Tensor, task_vectors: Sequence[torch.Tensor], *, gate: Sequence[float], gain: float
) -> torch.Tensor:
    return base + gain * sum(float(g) * tau for g, tau in zip(gate, task_vectors))


register_method(
    MergeMethod(
        "gated_sum",
        gated_sum,
        (ParamSpec("gate", "expert", bounds=(0.0, 1.0), gene="gate"), setting("gain", 1.0, mergekit=False)),
    )
)
