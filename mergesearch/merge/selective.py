"""Merge methods that choose, entry by entry, what each expert contributes (mergekit 0.1.5's ``sce``,
``ram``, ``ramplus_tl``, ``nearswap``, ``arcee_fusion``), in the engine's terms: the base tensor ``b`` and
the experts' task vectors ``τᵢ = xᵢ − b``.

None of them takes a per-expert weight: what a search varies is their selection settings (SCE's
``select_topk``, RAM's ``epsilon``, RAM+'s ``r`` and ``alpha``, NearSwap's ``t``), declared as genes per
layer group. Each is a pure function of one tensor's base and task vectors, so each runs in the resident
engine, written into the live model tensor by tensor. Parameters and defaults are mergekit's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mergesearch.merge.methods import sign_consensus
from mergesearch.merge.spec import MergeMethod, ParamSpec, register_method


# ------------------------------------------------------------------------------------ SCE
def _variance_topk(stacked: torch.Tensor, share: float) -> torch.Tensor:
    """SCE's select step: keep the ⌊share·(entries whose variance across experts is non-zero)⌋ entries
    that vary most across the experts (``torch.topk``'s choice among equal variances, as mergekit's)."""
    if share >= 1:
        return torch.ones_like(stacked[0])
    variance = torch.var(stacked, dim=0, unbiased=False)
    k = int(torch.count_nonzero(variance) * share) if share > 0 else 0
    mask = torch.zeros_like(variance)
    if k:
        mask.view(-1)[torch.topk(variance.abs().view(-1), k=k, largest=True).indices] = 1
    return mask


def sce(
    base: torch.Tensor, task_vectors: Sequence[torch.Tensor], *, select_topk: float = 1.0
) -> torch.Tensor:
    """SCE (Wan et al. 2024, FuseChat): Select the entries that vary most across the experts
    (``select_topk`` of them), Calculate each expert's weight as its task vector's mean square (a share
    of their sum; equal when the sum is below 1e-6), Erase entries whose sign disagrees with the
    elected one (TIES' sign consensus), then take the weighted mean of what is left:
    merged = b + Σ wᵢmᵢτᵢ / Σ wᵢmᵢ."""
    stacked = torch.stack(list(task_vectors))
    if select_topk < 1:
        stacked = stacked * _variance_topk(stacked, select_topk)
    agrees = sign_consensus(stacked).to(stacked.dtype)
    energy = stacked.square().reshape(len(task_vectors), -1).mean(dim=1)
    total = float(energy.sum())
    weights = torch.full_like(energy, 1 / len(energy)) if abs(total) < 1e-6 else energy / total
    kept = weights.reshape(-1, *([1] * base.dim())) * agrees
    return (base + (stacked * kept).sum(dim=0) / kept.sum(dim=0).clamp(min=1e-6)).to(base.dtype)


register_method(
    MergeMethod(
        "sce",
        sce,
        (ParamSpec("select_topk", "group", 1.0, (0.05, 1.0), gene="topk", mergekit="select_topk"),),
        mergekit="sce",
        stacks_experts=True,
    )
)


# ------------------------------------------------------------------------------------ RAM, RAM+
def _contributions(
    task_vectors: Sequence[torch.Tensor], epsilon: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat task vectors with entries at most ``epsilon`` in magnitude zeroed, which entries each expert
    contributes (|τ| > ε), and how many experts contribute to each entry."""
    flat = torch.stack([tau.reshape(-1) for tau in task_vectors])
    contributes = flat.abs() > epsilon
    return flat * contributes, contributes, contributes.sum(dim=0, keepdim=True)


def ram(base: torch.Tensor, task_vectors: Sequence[torch.Tensor], *, epsilon: float = 1e-5) -> torch.Tensor:
    """RAM (Reinforced Agent Merging): an entry one expert alone changes (|τ| > ``epsilon``) takes that
    expert's change whole; an entry several change takes the mean of their changes (not diluted by the
    experts that leave it alone, as a plain average would); an entry none changes keeps the base."""
    flat, _, counts = _contributions(task_vectors, epsilon)
    merged = (flat / counts.clamp(min=1)).sum(dim=0)
    return (base + merged.reshape(base.shape)).to(base.dtype)


def ramplus_tl(
    base: torch.Tensor,
    task_vectors: Sequence[torch.Tensor],
    *,
    r: float = 0.1,
    alpha: float = 0.2,
    epsilon: float = 1e-5,
) -> torch.Tensor:
    """RAM+ (tensor-local): RAM, with each expert's unique changes scaled up by λᵢ = 1 + r·min(ρᵢ, α),
    ρᵢ = (its shared entries) / (its unique entries) in this tensor: an expert whose changes are mostly
    shared (and so averaged down) gets its few unique ones amplified."""
    flat, contributes, counts = _contributions(task_vectors, epsilon)
    unique, shared = counts == 1, counts > 1
    ratio = (contributes & shared).sum(dim=1) / (contributes & unique).sum(dim=1).clamp(min=epsilon)
    boost = 1 + r * ratio.clamp(min=0, max=alpha)
    merged = (flat * unique * boost.unsqueeze(-1) + flat * shared / counts.clamp(min=1)).sum(dim=0)
    return (base + merged.reshape(base.shape)).to(base.dtype)


# RAM's threshold of a change: a gene (per layer group), up to a thousandth; above zero, as RAM+ divides by
# it where an expert changes nothing of a tensor on its own (mergekit's clamp: 0/0 there at zero).
RAM_EPSILON = ParamSpec("epsilon", "group", 1e-5, (1e-8, 1e-3), gene="eps", mergekit="epsilon")
register_method(MergeMethod("ram", ram, (RAM_EPSILON,), mergekit="ram", stacks_experts=True))
register_method(
    MergeMethod(
        "ramplus_tl",
        ramplus_tl,
        (
            ParamSpec("r", "group", 0.1, (0.0, 1.0), gene="r", mergekit="r"),
            ParamSpec("alpha", "group", 0.2, (0.0, 1.0), gene="alpha", mergekit="alpha"),
            RAM_EPSILON,
        ),
        mergekit="ramplus_tl",
        stacks_experts=True,
    )
)


# ------------------------------------------------------------------------------------ NearSwap
def nearswap(base: torch.Tensor, task_vectors: Sequence[torch.Tensor], *, t: float) -> torch.Tensor:
    """NearSwap: take the expert's value where it is near the base's and keep the base's where it is far.
    Entry by entry the expert's share is min(1, t / |τ|): changes up to ``t`` are taken whole, larger ones
    in proportion t / |τ| (so no entry moves by more than t): merged = b + min(1, t/|τ|)·τ."""
    (tau,) = task_vectors
    share = (t / tau.abs().clamp(min=1e-6)).clamp(min=0, max=1)
    return (base + share * tau).to(base.dtype)


register_method(
    MergeMethod(
        "nearswap",
        nearswap,
        (ParamSpec("t", "group", 1e-3, (0.0, 1e-2), gene="t", mergekit="t"),),
        mergekit="nearswap",
        max_experts=1,
    )
)


# ------------------------------------------------------------------------------------ Arcee Fusion
QUANTILE_SAMPLE = 1_000_000  # mergekit's: larger tensors estimate their quartiles from this many draws


def _quartiles(scores: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, ...]:
    """The quartiles of ``scores`` as mergekit reads them (the sorted value at ⌊q·(n−1)⌋), from a sample
    drawn with replacement when there are more than ``QUANTILE_SAMPLE`` entries."""
    flat = scores.reshape(-1)
    if flat.numel() > QUANTILE_SAMPLE:
        device = generator.device if generator is not None else None
        drawn = torch.randint(flat.numel(), (QUANTILE_SAMPLE,), generator=generator, device=device)
        flat = flat[drawn]
    ordered = flat.sort().values
    at = (torch.tensor([0.25, 0.5, 0.75]) * (ordered.numel() - 1)).long().to(ordered.device)
    return tuple(ordered[at])


def arcee_fusion(
    base: torch.Tensor, task_vectors: Sequence[torch.Tensor], *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Arcee Fusion: take the expert's change only where it matters. Each entry's importance is |τ| times
    the KL divergence of the expert's row from the base's (softmax over the last dimension); the change
    is kept where the importance reaches the outlier fence median + 1.5·IQR, elsewhere the base is kept."""
    (tau,) = task_vectors
    expert = base + tau
    p = F.softmax(expert, dim=-1) + 1e-8
    q = F.softmax(base, dim=-1) + 1e-8
    importance = tau.abs() * (p * torch.log(p / q)).sum(dim=-1, keepdim=True)
    q1, median, q3 = _quartiles(importance, generator)
    return (base + tau * (importance >= median + 1.5 * (q3 - q1))).to(base.dtype)


register_method(
    MergeMethod(
        "arcee_fusion",
        arcee_fusion,
        (),
        mergekit="arcee_fusion",
        max_experts=1,
        # Only tensors over QUANTILE_SAMPLE entries draw (their quartiles' sample), from the seeded generator.
        randomized=True,
    )
)
