"""Comparing our merges with mergekit's where magnitude trimming is not defined: entries tied at a cut.

mergekit keeps exactly k entries per task vector, picking among entries of equal magnitude by an
unstable sort; we keep exactly k with a fixed rule (lowest flat indices first). So the two agree
everywhere except at entries whose magnitude ties across a cut, and parity tests mask out only those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

MAGNITUDE_TRIMMED = frozenset({"ties"})
OUTLIER_TRIMMED = frozenset({"breadcrumbs", "breadcrumbs_ties"})


def tied_across(tau: torch.Tensor, cuts: Sequence[int]) -> torch.Tensor:
    """Entries of ``tau`` whose magnitude ties across a cut of its descending magnitude ranking: a cut at c
    keeps ranks < c on one side; when ranks c-1 and c share a magnitude, which of the tied entries
    fall on each side is the tie rule's choice. A tie at zero changes nothing (a zero entry adds nothing,
    kept or not, and its sign matches no elected sign): task vectors are often zero in whole rows, such
    as the embeddings of tokens a fine-tune never saw."""
    ranked = tau.abs().reshape(-1).float().sort(descending=True).values
    tied = torch.zeros(tau.shape, dtype=torch.bool)
    for cut in cuts:
        if 0 < cut < ranked.numel() and ranked[cut - 1] == ranked[cut] and ranked[cut] > 0:
            tied |= tau.abs().float() == ranked[cut]
    return tied


def trim_cuts(method: str, n: int, density: float, gamma: float = 0.0) -> list[int]:
    """Where ``method`` cuts a task vector of ``n`` entries in its descending magnitude ranking."""
    if density >= 1 or n == 0:
        return []
    if method in MAGNITUDE_TRIMMED:
        return [max(1, int(density * n))] if density > 0 else []
    if method in OUTLIER_TRIMMED:
        keep = int(density * n)
        top = min(int(gamma * n), n - keep)
        return [top, top + keep]
    return []


def ambiguous_entries(method: str, taus: Sequence[torch.Tensor], params: Mapping[str, Any]) -> torch.Tensor:
    """Entries of a merged tensor that depend on how ties at a trim cut are broken (any expert's)."""
    ambiguous = torch.zeros(taus[0].shape, dtype=torch.bool)
    for i, tau in enumerate(taus):
        density = params["density"][i] if "density" in params else 1.0
        gamma = params["gamma"][i] if "gamma" in params else 0.0
        ambiguous |= tied_across(tau.cpu(), trim_cuts(method, tau.numel(), density, gamma))
    return ambiguous


def worst_relative_difference(
    mine: Mapping[str, torch.Tensor],
    theirs: Mapping[str, torch.Tensor],
    ambiguous: Mapping[str, torch.Tensor] | None = None,
) -> float:
    """Largest |mine − theirs| over each tensor's largest |theirs|, outside the ``ambiguous`` entries."""
    assert set(mine) == set(theirs)
    worst = 0.0
    for key, reference in theirs.items():
        difference = (mine[key].detach().cpu().float() - reference.float()).abs()
        if ambiguous is not None and key in ambiguous:
            difference = difference[~ambiguous[key]]
        if difference.numel():
            worst = max(worst, float(difference.max() / reference.abs().max().clamp_min(1e-12)))
    return worst


def tie_rule_keep(tau: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """The tie rule's mask keeping ranks ``lo``..``hi``-1 of the magnitude ranking in which, of equal
    magnitudes, the lower flat index ranks higher (a stable descending sort)."""
    order = torch.sort(tau.abs().reshape(-1).float(), descending=True, stable=True).indices
    keep = torch.zeros(tau.numel(), dtype=torch.bool)
    keep[order[lo:hi]] = True
    return keep.reshape(tau.shape)


TIED_EXPERTS = ("a", "b", "c")
STEP = 2.0**-10  # tied task vectors are multiples of STEP in [-15, 15]·STEP: exact in float32, 16 magnitudes


def quantised(shape: tuple[int, ...], generator: torch.Generator, levels: int = 15) -> torch.Tensor:
    return torch.randint(-levels, levels + 1, shape, generator=generator).float() * STEP


def write_tied_pool(root: Path) -> Path:
    """A tiny Llama base and three experts whose task vectors are quantised (expert − base is exact), so
    magnitudes, variances and thresholds tie everywhere."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=48,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(v.shape, generator=generator) * 0.05 for k, v in model.state_dict().items()}
    base = {k: (v * 64).round() / 64 for k, v in weights.items()}  # coarse, so b + τ is exact
    for name in ("base", *TIED_EXPERTS):
        model.save_pretrained(root / name)
        tensors = base if name == "base" else {k: b + quantised(b.shape, generator) for k, b in base.items()}
        save_file(tensors, str(root / name / "model.safetensors"), metadata={"format": "pt"})
    return root
