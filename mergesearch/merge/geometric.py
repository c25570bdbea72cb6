"""Merge methods that average on the sphere or by the angle between task vectors (mergekit 0.1.5's
``model_stock``, ``karcher``, ``multislerp``, ``nuslerp``), in the engine's terms: the base tensor ``b``
and the experts' task vectors ``τᵢ = xᵢ − b``.

Each is a pure function of one tensor's base and task vectors, so each runs in the resident engine
(written into the live model, one tensor at a time, no second model). Their work memory is every
expert's copy of the tensor at once (they stack or normalise all experts together): declared as
``stacks_experts`` for the memory plan. Parameters and defaults are mergekit's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergesearch.errors import UserError
from mergesearch.merge.spec import WEIGHT, MergeMethod, register_method, setting


# ------------------------------------------------------------------------------------ Model Stock
def model_stock(
    base: torch.Tensor, task_vectors: Sequence[torch.Tensor], *, filter_wise: bool = False
) -> torch.Tensor:
    """Model Stock (Jang et al. 2024): the experts' average, pulled towards the base by how much their task
    vectors agree. With θ the mean pairwise angle between task vectors, t = n·cos θ / (1 + (n−1)·cos θ)
    and merged = t·mean(xᵢ) + (1−t)·b. ``filter_wise``: one t per row (output filter) instead of one per
    tensor. Where 1 + (n−1)·cos θ vanishes there is no finite estimate: the base is kept (t = 0)."""
    count = len(task_vectors)
    rows = (lambda x: x.reshape(1, -1) if x.dim() == 1 else x) if filter_wise else (lambda x: x.reshape(-1))
    offsets = [rows(tau) for tau in task_vectors]
    cosines = [
        ((a * b).sum(dim=-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-6)).clamp(-1, 1)
        for i, a in enumerate(offsets)
        for b in offsets[i + 1 :]
    ]
    cos_theta = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    denominator = 1 + (count - 1) * cos_theta
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, 0.0, count * cos_theta / torch.where(singular, 1.0, denominator))
    flat_base = rows(base)
    average = sum(flat_base + offset for offset in offsets) / count
    return (t * average + (1 - t) * flat_base).reshape(base.shape).to(base.dtype)


register_method(
    MergeMethod(
        "model_stock",
        model_stock,
        (setting("filter_wise", False),),
        mergekit="model_stock",
        min_experts=2,
        stacks_experts=True,
    )
)


# ------------------------------------------------------------------------------------ Karcher mean
def _norm(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.linalg.vector_norm(x.to(dtype))


def karcher(
    base: torch.Tensor, task_vectors: Sequence[torch.Tensor], *, max_iter: int = 10, tol: float = 1e-5
) -> torch.Tensor:
    """The Karcher (Riemannian) mean of the experts' whole tensors xᵢ = b + τᵢ (not of their task vectors:
    mergekit's karcher takes no base model), equally weighted: their directions are averaged on the unit
    sphere by gradient steps along its geodesics (at most ``max_iter``, until the step is below ``tol``),
    and the mean direction is scaled by the experts' mean norm. Directions of (near-)zero tensors are
    left out of the average; their norms still count in the scale."""
    experts = [base + tau for tau in task_vectors]
    if len(experts) == 1:
        return experts[0].to(base.dtype)
    share = 1.0 / len(experts)
    exact = torch.float64 if base.dtype == torch.float64 else torch.float32
    norms = [_norm(x, exact) for x in experts]
    units = [torch.zeros_like(x) if float(n) == 0.0 else (x / n).to(x.dtype) for x, n in zip(experts, norms)]
    kept = [u for u, n in zip(units, norms) if float(n) > tol]
    if not kept:
        return torch.zeros_like(base)
    mean = sum(u / len(kept) for u in kept)
    length = _norm(mean, exact)
    mean = kept[0].clone() if float(length) < tol else (mean / length).to(mean.dtype)
    for _ in range(max_iter):
        step = torch.zeros_like(mean)
        for unit in kept:
            cos = torch.dot(mean.reshape(-1), unit.reshape(-1)).clamp(-1.0, 1.0)
            angle = torch.arccos(cos)
            if float(angle) >= tol:  # the log map's direction towards ``unit``, scaled by its angle
                step += (angle / torch.sin(angle) / len(kept)) * (unit - cos * mean)
        size = _norm(step, exact)
        if float(size) < tol:
            break
        mean = (torch.cos(size) * mean + torch.sin(size) * (step / size)).to(mean.dtype)
        length = _norm(mean, exact)
        if float(length) > tol:
            mean = (mean / length).to(mean.dtype)
    return (sum(share * n for n in norms) * mean).to(base.dtype)


register_method(
    MergeMethod(
        "karcher",
        karcher,
        (setting("max_iter", 10), setting("tol", 1e-5)),
        mergekit="karcher",
        mergekit_base="none",
        stacks_experts=True,
    )
)


# ------------------------------------------------------------------------------------ Multi-SLERP
def multislerp(
    base: torch.Tensor,
    task_vectors: Sequence[torch.Tensor],
    *,
    weight: Sequence[float],
    normalize_weights: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Barycentric interpolation of the task vectors on the hypersphere (mergekit's ``multislerp`` with a
    base model): their directions are projected to the tangent space at their weighted mean direction,
    mixed there by ``weight``, mapped back by the exponential map and scaled by the weighted mean norm;
    merged = b + that. One expert: its own tensor. The weighted mean direction must not vanish: with two
    experts the mix falls back to linear, with more it is refused (as mergekit does)."""
    if len(task_vectors) == 1:
        return (base + task_vectors[0]).to(base.dtype)
    flat = torch.stack([tau.reshape(-1) for tau in task_vectors])
    weights = torch.tensor(list(weight), dtype=flat.dtype, device=flat.device)
    if normalize_weights:
        weights = weights / weights.sum()
    norms = flat.norm(dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * weights[:, None]).sum(0)
    length = mean.norm()
    if length < eps:
        if len(task_vectors) == 2:
            return (base + (flat * weights[:, None]).sum(0).reshape(base.shape)).to(base.dtype)
        raise UserError(
            "multislerp: the weighted mean direction of the task vectors is zero (antipodal experts whose "
            "weights cancel out); use other weights"
        )
    mean = mean / length
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    mixed = (tangents * weights[:, None]).sum(0)
    angle = mixed.norm() + eps
    on_sphere = mean * torch.cos(angle) + mixed * (torch.sin(angle) / angle)
    delta = on_sphere * (norms.squeeze(-1) * weights).sum()
    return (base + delta.reshape(base.shape)).to(base.dtype)


register_method(
    MergeMethod(
        "multislerp",
        multislerp,
        (WEIGHT, setting("normalize_weights", True), setting("eps", 1e-8)),
        mergekit="multislerp",
        stacks_experts=True,
    )
)


# ------------------------------------------------------------------------------------ NuSLERP
def _slerp_rows(t: float, v0: torch.Tensor, v1: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation from ``v0`` (t=0) to ``v1`` (t=1) along the last dimension, row by row;
    linear where the two are colinear."""
    u0 = v0 / v0.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / v1.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (u0 * u1).sum(dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, 0, cos))
    spherical = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    return torch.where(colinear, (1 - t) * v0 + t * v1, spherical)


def nuslerp(
    base: torch.Tensor,
    task_vectors: Sequence[torch.Tensor],
    *,
    weight: Sequence[float],
    nuslerp_flatten: bool = True,
    nuslerp_row_wise: bool = False,
) -> torch.Tensor:
    """SLERP between two experts' task vectors (mergekit's ``nuslerp`` with a base model), at
    t = w₂ / (w₁ + w₂) (halfway when the weights cancel): merged = b + slerp(τ₁, τ₂; t). Over the whole
    flattened tensor (``nuslerp_flatten``), else row by row, or column by column (``nuslerp_row_wise``)."""
    total = float(sum(weight))
    t = 0.5 if abs(total) < 1e-6 else float(weight[1]) / total
    v0, v1 = task_vectors
    if nuslerp_flatten:
        mixed = _slerp_rows(t, v0.reshape(-1), v1.reshape(-1))
    elif nuslerp_row_wise:
        mixed = _slerp_rows(t, v0.transpose(0, -1), v1.transpose(0, -1)).transpose(0, -1)
    else:
        mixed = _slerp_rows(t, v0, v1)
    return (base + mixed.reshape(base.shape)).to(base.dtype)


register_method(
    MergeMethod(
        "nuslerp",
        nuslerp,
        (WEIGHT, setting("nuslerp_flatten", True), setting("nuslerp_row_wise", False)),
        mergekit="nuslerp",
        min_experts=2,
        max_experts=2,
    )
)
