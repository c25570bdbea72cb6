"""Merge methods: pure tensor functions registered by mergekit's names, with mergekit's parameter meanings.

Every method works on one tensor at a time, from the base tensor ``b`` and the experts' task vectors
``τᵢ = xᵢ − b`` (what the resident engine keeps in memory), and returns the merged tensor. Per-expert
parameters (``weight``, ``density``, ``gamma``, ``epsilon``) arrive as sequences aligned with the task
vectors; shared parameters (``normalize``, ``rescale``, ``lambda``, ``t``...) as keywords.

The task-arithmetic family follows one template (mergekit's "generalized task arithmetic"):

    δᵢ = sparsify(τᵢ, densityᵢ)       (none | magnitude top-k | random | magnitude minus outliers | DELLA)
    δᵢ ← wᵢ · δᵢ
    m  = sign-consensus mask over the δᵢ    (TIES: keep entries agreeing with the sign of Σ δᵢ)
    Δ  = Σ m·δᵢ, divided by Σ m·wᵢ if normalize, times λ
    merged = b + Δ
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mergesearch.errors import UserError
from mergesearch.merge.spec import (
    DENSITY,
    EPSILON,
    GAMMA,
    WEIGHT,
    MergeMethod,
    ParamSpec,
    T,
    register_method,
    setting,
)


# ------------------------------------------------------------------------------------ sparsifiers
def _rescaled(delta: torch.Tensor, mask: torch.Tensor, rescale: bool, eps: float = 1e-7) -> torch.Tensor:
    """Apply ``mask``; with ``rescale``, restore the L1 norm the mask removed (DARE's 1/p, in expectation)."""
    kept = delta * mask
    if not rescale:
        return kept
    before, after = delta.abs().sum(), kept.abs().sum()
    if before < eps or after < eps:
        return kept
    return kept * (before / after)


def magnitude_topk(
    delta: torch.Tensor,
    density: float,
    rescale: bool = False,
    sorted_abs: torch.Tensor | None = None,
    **_: Any,
) -> torch.Tensor:
    """Keep the k = max(1, ⌊density·n⌋) entries with the largest magnitude (TIES' trim step), exactly k.

    Tie rule (``magnitude_cut``): among entries of equal magnitude the lower flat index counts as the
    larger, so where several entries tie at the threshold the ones with the lowest flat indices are kept.
    The cut is found by linear-time selection, or looked up in ``sorted_abs`` (|δ| sorted ascending; the
    resident engine sorts each task vector once, as the order does not depend on the genome). mergekit
    argsorts every tensor instead (slower: docs/benchmarks, one-off measurements) and keeps exactly k too,
    but picks among tied entries by an unstable sort, so which tied entry it keeps is not defined: the
    two agree everywhere except at entries tied at the threshold.
    """
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    threshold, last = magnitude_cut(delta, density, sorted_abs)
    magnitudes = delta.abs()
    if last >= delta.numel() - 1:
        mask = magnitudes >= threshold
    else:
        index = torch.arange(delta.numel(), device=delta.device).reshape(delta.shape)
        mask = (magnitudes > threshold) | ((magnitudes == threshold) & (index <= last))
    return _rescaled(delta, mask.to(delta.dtype), rescale)


def magnitude_threshold(
    delta: torch.Tensor, density: float, sorted_abs: torch.Tensor | None = None
) -> torch.Tensor:
    """The k-th largest |δ|, k = max(1, ⌊density·n⌋) (0-d tensor): −inf keeps all, +inf none."""
    if density >= 1 or delta.numel() == 0:
        return torch.tensor(float("-inf"), device=delta.device)
    if density <= 0:
        return torch.tensor(float("inf"), device=delta.device)
    n = delta.numel()
    k = max(1, int(density * n))
    if sorted_abs is not None:
        return sorted_abs[n - k]
    return torch.kthvalue(delta.abs().reshape(-1).float(), n - k + 1).values


def magnitude_cut(
    delta: torch.Tensor, density: float, sorted_abs: torch.Tensor | None = None
) -> tuple[torch.Tensor, int]:
    """The trim rule as (threshold t, last): keep the entries with |δ| > t, and those with |δ| = t whose flat
    index is at most ``last`` — exactly k = max(1, ⌊density·n⌋) entries, ties at t going to the lowest flat
    indices. ``last`` is n when every tied entry fits (the common case, found without a pass when the
    magnitudes are pre-sorted), and also when t = 0: a zero entry adds nothing to a merge kept or trimmed
    (its sign matches no elected sign, and it adds nothing to an L1 norm), so zeros need no tie rule."""
    n = delta.numel()
    threshold = magnitude_threshold(delta, density, sorted_abs)
    if density >= 1 or n == 0:
        return threshold, n
    if density <= 0:
        return threshold, -1
    k = max(1, int(density * n))
    if k == n:
        return threshold, n
    if sorted_abs is not None:
        # one look-up (one device sync): nothing tied with the threshold is left out, or the tie is at zero
        if not bool((sorted_abs[n - k - 1] == threshold) & (threshold != 0)):
            return threshold, n
        above = n - int(torch.searchsorted(sorted_abs, threshold.reshape(1), right=True))
    else:
        if bool(threshold == 0):
            return threshold, n
        magnitudes = delta.abs().reshape(-1)
        tied = magnitudes == threshold
        above = int((magnitudes > threshold).sum())
        if above + int(tied.sum()) == k:
            return threshold, n
    return threshold, _nth_tied(delta.reshape(-1), threshold, k - above - 1)


def _nth_tied(flat: torch.Tensor, threshold: torch.Tensor, nth: int, chunk: int = 1 << 20) -> int:
    """Flat index of the ``nth`` (from 0) entry with |δ| = ``threshold``, scanned chunk by chunk and stopping
    at the chunk that holds it: no tensor-sized temporaries (quantised weights tie by the million)."""
    seen = 0
    for start in range(0, flat.numel(), chunk):
        part = flat[start : start + chunk]
        tied = (part == threshold) | (part == -threshold)
        count = int(tied.sum())
        if seen + count > nth:
            return start + int(tied.nonzero()[nth - seen])
        seen += count
    raise AssertionError(f"fewer than {nth + 1} entries tie at the threshold")  # the caller counted them


def random_keep(
    delta: torch.Tensor,
    density: float,
    rescale: bool = True,
    generator: torch.Generator | None = None,
    **_: Any,
) -> torch.Tensor:
    """DARE: keep each entry with probability ``density`` (then rescale so the expected sum is kept)."""
    if density >= 1:
        return delta
    work = delta.float() if delta.device.type == "cpu" and delta.dtype != torch.bfloat16 else delta
    mask = torch.bernoulli(torch.full_like(work, density), generator=generator)
    return _rescaled(work, mask, rescale).to(delta.dtype)


def magnitude_outliers(
    delta: torch.Tensor, density: float, gamma: float = 0.01, rescale: bool = False, **_: Any
) -> torch.Tensor:
    """Model Breadcrumbs: drop the ``gamma`` share of largest entries (outliers), then the smallest, keeping
    ``density``. Ranked by magnitude with the TIES tie rule (of equal magnitudes, the lower flat index
    counts as the larger: a stable descending sort), so ties at either cut are settled deterministically."""
    if density >= 1:
        return delta
    n = delta.numel()
    keep, top = int(density * n), int(gamma * n)
    top = min(top, n - keep)
    order = torch.sort(delta.abs().reshape(-1).float(), descending=True, stable=True).indices
    mask = torch.zeros(n, dtype=delta.dtype, device=delta.device)
    mask[order[top : top + keep]] = 1
    return _rescaled(delta, mask.reshape_as(delta), rescale)


def della_magprune(
    delta: torch.Tensor,
    density: float,
    epsilon: float = 0.15,
    rescale: bool = True,
    generator: torch.Generator | None = None,
    **_: Any,
) -> torch.Tensor:
    """DELLA: keep-probabilities rise with each entry's magnitude rank within its row, from
    ``density − ε`` (smallest) to ``density + ε`` (largest); kept entries are rescaled."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    if not (0 < density - epsilon and density + epsilon < 1):
        raise UserError(
            f"della: epsilon {epsilon} must keep density ± epsilon inside (0, 1) for density {density}"
        )
    shape = delta.shape
    work = delta.float() if delta.device.type == "cpu" and delta.dtype != torch.bfloat16 else delta
    rows = work if work.dim() >= 2 else work.unsqueeze(0)
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(work.dtype)  # 0 .. columns-1 within each row
    rank_share = ranks / max(rows.shape[1] - 1, 1)
    mask = torch.bernoulli((density - epsilon) + rank_share * 2 * epsilon, generator=generator)
    return _rescaled(rows, mask, rescale).to(delta.dtype).reshape(shape)


SPARSIFIERS: dict[str | None, Callable[..., torch.Tensor] | None] = {
    None: None,
    "magnitude": magnitude_topk,
    "random": random_keep,
    "magnitude_outliers": magnitude_outliers,
    "della_magprune": della_magprune,
}


# How each sparsifier reads in the method reference (docs: reference/methods.md).
SPARSIFIER_NAMES = {
    None: "τᵢ",
    "magnitude": "the density share of τᵢ largest in magnitude",
    "random": "τᵢ with entries dropped at random (1 − density), rescaled",
    "magnitude_outliers": "τᵢ without its gamma share of largest entries and its smallest ones",
    "della_magprune": "τᵢ with entries dropped at random, large ones less often (± epsilon), rescaled",
}


def sign_consensus(deltas: torch.Tensor) -> torch.Tensor:
    """TIES' elect step: an entry is kept where its sign matches the sign of the summed deltas."""
    majority = (deltas.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
    return deltas.sign() == majority


# ------------------------------------------------------------------------------------ the family
def generalized_task_arithmetic(
    base: torch.Tensor,
    task_vectors: Sequence[torch.Tensor],
    *,
    weight: Sequence[float],
    density: Sequence[float] | None = None,
    gamma: Sequence[float] | None = None,
    epsilon: Sequence[float] | None = None,
    sorted_magnitudes: Sequence[torch.Tensor] | None = None,
    sparsify: str | None,
    consensus: bool,
    normalize: bool,
    rescale: bool,
    generator: torch.Generator | None = None,
    **shared: Any,
) -> torch.Tensor:
    """merged = b + λ · Σ mᵢ·wᵢ·sparsify(τᵢ) [/ Σ mᵢ·wᵢ if normalize] (see the module docstring)."""
    if not task_vectors:
        return base
    sparsifier = SPARSIFIERS[sparsify]
    deltas = base.new_empty((len(task_vectors), *base.shape))
    for i, tau in enumerate(task_vectors):
        if sparsifier is None:
            deltas[i] = tau
        else:
            extra = {
                k: v[i]
                for k, v in (("gamma", gamma), ("epsilon", epsilon), ("sorted_abs", sorted_magnitudes))
                if v is not None
            }
            deltas[i] = sparsifier(
                tau,
                density=1.0 if density is None else density[i],
                rescale=rescale,
                generator=generator,
                **extra,
            )
    weights = torch.tensor(list(weight), dtype=deltas.dtype, device=deltas.device).reshape(
        -1, *([1] * base.dim())
    )
    deltas.mul_(weights)
    if consensus:
        mask = sign_consensus(deltas).to(deltas.dtype)
        mixed = (deltas * mask).sum(dim=0)
        divisor = (weights * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed /= divisor
    scale = shared.get("lambda", 1.0)
    if scale != 1:
        mixed *= scale
    return (base + mixed).to(base.dtype)


def _family(
    name: str,
    sparsify: str | None,
    consensus: bool,
    normalize: bool,
    rescale: bool,
    extra: tuple[ParamSpec, ...] = (),
    into: Callable[..., None] | None = None,
    compiled_per_expert_count: bool = False,
) -> MergeMethod:
    """One member of the task-arithmetic family, with mergekit 0.1.5's defaults (normalize, rescale)."""

    def fn(base: torch.Tensor, task_vectors: Sequence[torch.Tensor], **params: Any) -> torch.Tensor:
        return generalized_task_arithmetic(
            base, task_vectors, sparsify=sparsify, consensus=consensus, **params
        )

    fn.__doc__ = (
        f"{name}: task arithmetic, b + λ·Σ wᵢ·δᵢ with δᵢ = {SPARSIFIER_NAMES[sparsify]}"
        f"{', kept where its sign agrees with the elected one (TIES)' if consensus else ''}"
        f"{', divided by the kept weights' if normalize else ''}. {generalized_task_arithmetic.__doc__}"
    )
    return register_method(
        MergeMethod(
            name,
            fn,
            params=(
                WEIGHT,
                *((DENSITY,) if sparsify else ()),
                *extra,
                setting("normalize", normalize),
                setting("rescale", rescale),
                setting("lambda", 1.0),
            ),
            mergekit=name,
            randomized=sparsify in ("random", "della_magprune"),
            uses_magnitude_order=sparsify == "magnitude",
            into=into,
            compiled_per_expert_count=compiled_per_expert_count,
            weightless_absent=sparsify not in ("random", "della_magprune"),
            stacks_experts=into is None,  # the general path stacks every expert's sparsified delta
        )
    )


def _normalizer(weight: Sequence[float], normalize: bool) -> float:
    """Σ wᵢ when normalising (1 when the weights cancel out, as mergekit's divisor rule does), else 1."""
    total = float(sum(weight))
    return total if normalize and abs(total) >= 1e-8 else 1.0


def _task_arithmetic_into(
    out: torch.Tensor,
    base: torch.Tensor,
    task_vectors: Sequence[torch.Tensor],
    *,
    weight: Sequence[float],
    normalize: bool,
    **shared: Any,
) -> None:
    """out = b + λ·Σ wᵢ·τᵢ [/ Σ wᵢ]: one read of each input, no temporaries."""
    scale = shared.get("lambda", 1.0) / _normalizer(weight, normalize)
    out.copy_(base)
    for w, tau in zip(weight, task_vectors):
        out.add_(tau, alpha=float(w) * scale)


def _ties_elementwise(
    out: torch.Tensor,
    base: torch.Tensor,
    task_vectors: Sequence[torch.Tensor],
    thresholds: Sequence[torch.Tensor],
    lasts: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    normalize: bool,
    scale: torch.Tensor,
) -> None:
    """TIES once each task vector's cut (``magnitude_cut``: threshold, and the last kept flat index among
    entries tied at it) is known: every remaining step is elementwise. Inputs are flat, so an entry's flat
    index is its position (an index the compiler generates, not a tensor it reads). Same arithmetic as
    ``generalized_task_arithmetic`` (trim, weight, elect, disjoint mean), written so that a compiler can
    fuse it into one pass that reads each input once and writes ``out`` in place."""
    index = torch.arange(base.numel(), device=base.device)
    deltas = [
        torch.where((tau.abs() > cut) | ((tau.abs() == cut) & (index <= last)), tau * w, 0.0)
        for tau, cut, last, w in zip(task_vectors, thresholds, lasts, weights)
    ]
    majority = torch.where(sum(deltas) >= 0, 1.0, -1.0)
    agrees = [torch.sign(d) == majority for d in deltas]
    mixed = sum(torch.where(keep, d, 0.0) for keep, d in zip(agrees, deltas))
    if normalize:
        divisor = sum(torch.where(keep, w, 0.0) for keep, w in zip(agrees, weights))
        mixed = mixed / torch.where(divisor == 0, 1.0, divisor)
    out.copy_(base + mixed * scale)


class _Fused:
    """``torch.compile`` of an elementwise kernel, compiled on first use (a few seconds, once per process
    and expert count; shapes are dynamic): one pass over the tensors instead of a temporary per step,
    much faster than the same steps as separate torch ops (docs/benchmarks, one-off measurements). Where
    compilation is unavailable (no C++ compiler, no Triton on a GPU) the same function runs eagerly."""

    def __init__(self, fn: Callable[..., None]) -> None:
        self.fn, self.compiled, self.failed = fn, None, False

    def __call__(self, *args: Any) -> None:
        if not self.failed:
            try:
                if self.compiled is None:
                    self.compiled = torch.compile(self.fn, dynamic=True)
                return self.compiled(*args)
            except Exception as error:  # a missing toolchain surfaces only when the kernel is first built
                self.failed = True
                logging.getLogger(__name__).warning(
                    "merge kernel: torch.compile failed (%s); using eager torch ops", type(error).__name__
                )
        self.fn(*args)


_ties_fused = _Fused(_ties_elementwise)


def _ties_into(
    out: torch.Tensor,
    base: torch.Tensor,
    task_vectors: Sequence[torch.Tensor],
    *,
    weight: Sequence[float],
    density: Sequence[float],
    normalize: bool,
    rescale: bool,
    sorted_magnitudes: Sequence[torch.Tensor] | None = None,
    **shared: Any,
) -> None:
    """TIES into ``out``: each task vector's cut (threshold looked up when magnitudes are pre-sorted, and
    the tie rule's last kept index, ``magnitude_cut``), then the fused elementwise kernel. ``rescale``
    needs global sums after trimming, so it takes the general path."""
    if rescale or not task_vectors:
        out.copy_(
            generalized_task_arithmetic(
                base,
                task_vectors,
                weight=weight,
                density=density,
                sorted_magnitudes=sorted_magnitudes,
                sparsify="magnitude",
                consensus=True,
                normalize=normalize,
                rescale=rescale,
                **shared,
            )
        )
        return
    orders = sorted_magnitudes if sorted_magnitudes is not None else [None] * len(task_vectors)
    cuts = [magnitude_cut(tau, d, order) for tau, d, order in zip(task_vectors, density, orders)]
    # Values go in as tensors, so new values never recompile the kernel.
    as_tensor = lambda x: torch.tensor(float(x), dtype=base.dtype, device=base.device)
    # Flat plain-tensor views: one compiled graph serves every shape (a Parameter would pin its shape).
    target = (
        out.detach().view(-1)
        if out.is_contiguous()
        else torch.empty(out.numel(), dtype=out.dtype, device=out.device)
    )
    flat_taus = [tau.reshape(-1) for tau in task_vectors]
    _ties_fused(
        target,
        base.reshape(-1),
        flat_taus,
        [threshold for threshold, _ in cuts],
        [torch.tensor(last, dtype=torch.int64, device=base.device) for _, last in cuts],
        [as_tensor(w) for w in weight],
        bool(normalize),
        as_tensor(shared.get("lambda", 1.0)),
    )
    if not out.is_contiguous():
        out.copy_(target.view(out.shape))


_family("task_arithmetic", None, consensus=False, normalize=False, rescale=False, into=_task_arithmetic_into)
_family(
    "ties",
    "magnitude",
    consensus=True,
    normalize=True,
    rescale=False,
    into=_ties_into,
    compiled_per_expert_count=True,
)
_family("dare_ties", "random", consensus=True, normalize=False, rescale=True)
_family("dare_linear", "random", consensus=False, normalize=False, rescale=True)
_family("breadcrumbs", "magnitude_outliers", consensus=False, normalize=False, rescale=False, extra=(GAMMA,))
_family(
    "breadcrumbs_ties", "magnitude_outliers", consensus=True, normalize=False, rescale=False, extra=(GAMMA,)
)
_family("della", "della_magprune", consensus=True, normalize=True, rescale=True, extra=(EPSILON,))
_family("della_linear", "della_magprune", consensus=False, normalize=False, rescale=True, extra=(EPSILON,))


def linear(
    base: torch.Tensor,
    task_vectors: Sequence[torch.Tensor],
    *,
    weight: Sequence[float],
    normalize: bool = True,
) -> torch.Tensor:
    """Weighted average of the experts: Σ wᵢ·xᵢ / Σ wᵢ = b + Σ wᵢ·τᵢ / Σ wᵢ (without normalize: Σ wᵢ·xᵢ)."""
    out = torch.empty_like(base)
    _linear_into(out, base, task_vectors, weight=weight, normalize=normalize)
    return out


def _linear_into(
    out: torch.Tensor,
    base: torch.Tensor,
    task_vectors: Sequence[torch.Tensor],
    *,
    weight: Sequence[float],
    normalize: bool,
) -> None:
    """out = (Σ wᵢ / s)·b + Σ (wᵢ / s)·τᵢ with s = Σ wᵢ when normalising (xᵢ = b + τᵢ), else s = 1."""
    total = _normalizer(weight, normalize)
    out.copy_(base).mul_(float(sum(weight)) / total)
    for w, tau in zip(weight, task_vectors):
        out.add_(tau, alpha=float(w) / total)


register_method(
    MergeMethod(
        "linear",
        linear,
        (WEIGHT, setting("normalize", True)),
        mergekit="linear",
        mergekit_base="none",
        into=_linear_into,
        weightless_absent=True,
    )
)


def slerp(
    base: torch.Tensor,
    task_vectors: Sequence[torch.Tensor],
    *,
    t: float,
    dot_threshold: float = 0.9995,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Spherical interpolation from expert A (t=0) to expert B (t=1) over the whole flattened tensor:
    sin((1−t)θ)/sin θ · a + sin(tθ)/sin θ · b, θ the angle between them; linear when nearly collinear."""
    a = (base + task_vectors[0]).double().reshape(-1)
    b = (base + task_vectors[1]).double().reshape(-1)
    na, nb = a.norm(), b.norm()
    dot = torch.dot(a / (na if na > eps else 1), b / (nb if nb > eps else 1)).clamp(-1, 1)
    if dot.abs() > dot_threshold:
        merged = (1 - t) * a + t * b
    else:
        theta = torch.acos(dot)
        merged = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    return merged.reshape(base.shape).to(base.dtype)


# mergekit's slerp interpolates from its base model (t=0): the recipe names the first expert there.
register_method(
    MergeMethod(
        "slerp",
        slerp,
        (T, setting("dot_threshold", 0.9995, mergekit=False)),
        mergekit="slerp",
        mergekit_base="first_expert",
        min_experts=2,
        max_experts=2,
    )
)


# ------------------------------------------------------------------------------------ task singular vectors
def _orthogonalize(m: torch.Tensor) -> torch.Tensor:
    """The closest matrix with orthonormal columns (polar factor): P Qᵀ from m = P S Qᵀ."""
    p, _, qh = torch.linalg.svd(m, full_matrices=False)
    return p @ qh


@dataclass(frozen=True)
class TSVFactors:
    """What TSV-M needs from one 2-D tensor before it sees a genome: the orthogonalised concatenated
    singular bases and each task's kept singular values. The SVDs are the whole cost of the method and
    do not depend on the weights, so the resident engine computes them once; a genome is then one
    matrix product, ``combine``."""

    left: torch.Tensor  # U⊥, m × Σkᵢ
    singular_values: tuple[torch.Tensor, ...]  # σ of task i, kᵢ entries
    right: torch.Tensor  # V⊥, n × Σkᵢ

    def combine(self, weight: Sequence[float]) -> torch.Tensor:
        scaled = torch.cat([float(w) * s for w, s in zip(weight, self.singular_values)])
        return (self.left * scaled) @ self.right.T

    def to(self, dtype: torch.dtype) -> TSVFactors:
        return TSVFactors(
            self.left.to(dtype), tuple(s.to(dtype) for s in self.singular_values), self.right.to(dtype)
        )


def _tsv_factors(taus: Sequence[torch.Tensor], ranks: Sequence[int]) -> TSVFactors:
    us, ss, vs = [], [], []
    for tau, k in zip(taus, ranks):
        u, s, vh = torch.linalg.svd(tau.double(), full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vh[:k, :].T)
    return TSVFactors(_orthogonalize(torch.cat(us, dim=1)), tuple(ss), _orthogonalize(torch.cat(vs, dim=1)))


def _mean_of_weighted(
    base: torch.Tensor, task_vectors: Sequence[torch.Tensor], weight: Sequence[float], alpha: float
) -> torch.Tensor:
    """TSV-M's rule for tensors that are not matrices (norms, biases): b + α·mean(wᵢτᵢ)."""
    return (base + alpha * sum(float(w) * t for w, t in zip(weight, task_vectors)) / len(task_vectors)).to(
        base.dtype
    )


def tsvm_factors(
    base: torch.Tensor, task_vectors: Sequence[torch.Tensor], *, rank_share: float | None = None, **_: Any
) -> TSVFactors | None:
    """TSV-M's genome-independent part: each τᵢ truncated to k = ⌊share·min(m, n)⌋ triplets (share: 1/T)."""
    if base.dim() != 2:
        return None
    n = len(task_vectors)
    share = rank_share if rank_share is not None else 1 / n
    if not 0 < share * n <= 1:
        raise UserError(
            f"tsvm: rank_share {share} x {n} experts must be in (0, 1] so the kept bases fit the tensor"
        )
    return _tsv_factors(task_vectors, [max(1, int(share * min(base.shape)))] * n)


def tsvm(
    base: torch.Tensor,
    task_vectors: Sequence[torch.Tensor],
    *,
    weight: Sequence[float],
    rank_share: float | None = None,
    alpha: float = 1.0,
    factors: TSVFactors | None = None,
) -> torch.Tensor:
    """Task Singular Vector merging (TSV-M). Per 2-D tensor: truncated SVD of each task matrix τᵢ = UᵢΣᵢVᵢᵀ
    keeping k = ⌊share·min(m, n)⌋ triplets (share = 1/T by default), concatenation U = [U₁..U_T],
    Σ = diag(w₁Σ₁..w_TΣ_T), V = [V₁..V_T], orthogonalisation of U and V (polar factor), and
    merged = b + α·U⊥ΣV⊥ᵀ. Other tensors take b + α·mean(wᵢτᵢ). Orthogonal tasks reduce to task arithmetic.
    ``factors``: the precomputed U⊥, σᵢ, V⊥ (see ``TSVFactors``)."""
    if base.dim() != 2:
        return _mean_of_weighted(base, task_vectors, weight, alpha)
    factors = factors or tsvm_factors(base, task_vectors, rank_share=rank_share)
    return (base.to(factors.left.dtype) + alpha * factors.combine(weight)).to(base.dtype)


def rtsvm_factors(
    base: torch.Tensor,
    task_vectors: Sequence[torch.Tensor],
    *,
    energy: float = 0.9,
    outlier_z: float = 6.0,
    **_: Any,
) -> TSVFactors | None:
    """R-TSVM's genome-independent part: outlier clipping, per-task ranks from the spectrum (``rtsvm``)."""
    if base.dim() != 2:
        return None
    cleaned, ranks = [], []
    for tau in task_vectors:
        t = tau.double()
        centre = t.median()
        bound = outlier_z * 1.4826 * (t - centre).abs().median()
        t = (
            t.clamp(centre - bound, centre + bound) if bound > 0 else t
        )  # an all-sparse τ (MAD 0) is left as it is
        s = torch.linalg.svdvals(t)
        share = torch.cumsum(s**2, 0) / (s**2).sum().clamp_min(1e-30)
        cleaned.append(t)
        ranks.append(
            min(len(s), int(torch.searchsorted(share, torch.tensor(energy, dtype=share.dtype)).item()) + 1)
        )
    budget = min(base.shape)
    while sum(ranks) > budget:
        ranks[ranks.index(max(ranks))] -= 1
    return _tsv_factors(cleaned, ranks)


def rtsvm(
    base: torch.Tensor,
    task_vectors: Sequence[torch.Tensor],
    *,
    weight: Sequence[float],
    energy: float = 0.9,
    outlier_z: float = 6.0,
    alpha: float = 1.0,
    factors: TSVFactors | None = None,
) -> torch.Tensor:
    """Our reading of R-TSVM (robust TSV-M). Two changes to TSV-M per 2-D tensor: (1) outlier-aware
    reweighting: entries of τᵢ beyond ``outlier_z`` robust standard deviations (1.4826·MAD, which the
    outliers themselves cannot inflate) are clipped to that bound, so a few huge entries cannot dominate
    the spectrum; (2) per-task rank from the spectrum: the smallest kᵢ
    whose singular values hold ``energy`` of Σσ², with Σkᵢ capped at min(m, n) (largest first)."""
    if base.dim() != 2:
        return _mean_of_weighted(base, task_vectors, weight, alpha)
    factors = factors or rtsvm_factors(base, task_vectors, energy=energy, outlier_z=outlier_z)
    return (base.to(factors.left.dtype) + alpha * factors.combine(weight)).to(base.dtype)


# mergekit 0.1.5 has neither: their recipes are materialised by our engine only.
register_method(
    MergeMethod(
        "tsvm",
        tsvm,
        (WEIGHT, setting("rank_share", None, mergekit=False), setting("alpha", 1.0, mergekit=False)),
        factorize=tsvm_factors,
    )
)
register_method(
    MergeMethod(
        "rtsvm",
        rtsvm,
        (
            WEIGHT,
            setting("energy", 0.9, mergekit=False),
            setting("outlier_z", 6.0, mergekit=False),
            setting("alpha", 1.0, mergekit=False),
        ),
        factorize=rtsvm_factors,
    )
)
