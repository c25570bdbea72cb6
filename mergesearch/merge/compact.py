"""Compact task vectors: a many-expert pool in a fraction of the memory, expanded one tensor at a time.

A 16-expert pool in float32 holds 17 copies of the model, and most of each task vector is small. A form
keeps each task vector τ = expert − base compactly and expands one tensor to dense when a merge reads it,
so a merge still needs only one tensor per expert of work memory. The forms (``merge.task_vectors``):

- ``dense``: τ as it is, in the pool's dtype (``models.dtype: bfloat16`` halves float32's bytes).
- ``sparse``: the ``density`` share of τ's entries largest in magnitude (what TIES and DARE keep of τ
  anyway), as flat positions (int32) and values (the pool's dtype).
- ``low_rank``: per matrix, its best rank-``rank`` approximation (truncated SVD) as two factors; vectors
  (norms, biases) and matrices too small to gain from it stay dense.

The search scores merges of the compact pool; promotion merges the exact task vectors from disk, so the
saved model and the mergekit recipe are exact. ``benchmarks/scaling.py`` measures what each form saves
against the merge error and the fitness change it brings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from mergesearch.config import TaskVectorsConfig
from mergesearch.registry import TASK_VECTOR_FORMS

Shape = tuple[int, ...]


class CompactTensor(Protocol):
    """A task-vector tensor held compactly; ``dense`` rebuilds it (a new tensor, on the parts' device)."""

    @property
    def nbytes(self) -> int: ...

    def dense(self) -> torch.Tensor: ...

    def to(self, device: torch.device) -> CompactTensor:
        """The parts on ``device`` (a copy from pinned host RAM overlaps the previous merge)."""
        ...

    def pin_memory(self) -> CompactTensor: ...


@dataclass(frozen=True)
class TaskVectorForm:
    """``compress``: a float32 τ to what the pool keeps (in ``dtype``); ``stored_bytes``: what that takes
    for a tensor of ``shape`` with ``element``-byte values, from the shape alone (for the memory plan)."""

    name: str
    compress: Callable[[torch.Tensor, torch.dtype, TaskVectorsConfig], torch.Tensor | CompactTensor]
    stored_bytes: Callable[[Shape, int, TaskVectorsConfig], int]


def stored_bytes(tensor: torch.Tensor) -> int:
    """What a tensor keeps alive: its whole storage (a view of a bigger tensor keeps all of it)."""
    return tensor.untyped_storage().nbytes()


def get_form(name: str) -> TaskVectorForm:
    form: TaskVectorForm = TASK_VECTOR_FORMS.get(name)
    return form


def pool_bytes(shapes: Mapping[str, Shape], element: int, settings: TaskVectorsConfig) -> int:
    """One task vector's resident bytes in ``settings``' form (base and dense copies: ``element`` each)."""
    form = get_form(settings.form)
    return sum(form.stored_bytes(shape, element, settings) for shape in shapes.values())


def largest_tensor_bytes(shapes: Mapping[str, Shape], element: int) -> int:
    """One copy of the largest tensor: the unit of a merge's work memory, which goes tensor by tensor."""
    return element * max(math.prod(shape) for shape in shapes.values())


def expansion_bytes(
    shapes: Mapping[str, Shape], element: int, experts: int, settings: TaskVectorsConfig
) -> int:
    """Work memory a merge needs to expand compact task vectors: every expert's copy of the largest
    tensor at once, on the merge's device (nothing for dense ones, which are read in place)."""
    if settings.form == "dense":
        return 0
    return experts * largest_tensor_bytes(shapes, element)


def host_pool_merge_bytes(shapes: Mapping[str, Shape], element: int, experts: int, sorts: bool) -> int:
    """GPU memory a merge from a host pool needs beside the live model: the largest tensor's base and
    every expert's task vector (and sorted magnitudes, for methods that rank by them) copied to the GPU
    at once, in the pool's dtype."""
    copies = 1 + experts * (2 if sorts else 1)
    return copies * largest_tensor_bytes(shapes, element)


def load_bytes(shapes: Mapping[str, Shape], sorted_bytes: int = 0) -> int:
    """Work memory the pool's load needs where the pool is kept: an expert's tensor and the base's in
    float32 (the task vector is their difference, taken in float32), one tensor at a time; beyond the
    ``sorted_bytes`` of sorted magnitudes, which are made after the load, in memory it gave back."""
    return max(0, 2 * largest_tensor_bytes(shapes, 4) - sorted_bytes)


class CompactTaskVectors(Mapping[str, torch.Tensor]):
    """One expert's task vector by tensor name; reading a tensor moves its parts to ``device`` (the
    merge's: a host pool sends the compact parts, not the expansion) and expands it there."""

    def __init__(
        self, tensors: Mapping[str, torch.Tensor | CompactTensor], device: torch.device | None = None
    ) -> None:
        self.tensors, self.device = dict(tensors), device

    def __getitem__(self, key: str) -> torch.Tensor:
        held = self.tensors[key]
        if self.device is not None:
            held = (
                held.to(self.device, non_blocking=True)
                if isinstance(held, torch.Tensor)
                else held.to(self.device)
            )
        return held if isinstance(held, torch.Tensor) else held.dense()

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(
            stored_bytes(t) if isinstance(t, torch.Tensor) else t.nbytes for t in self.tensors.values()
        )


# ------------------------------------------------------------------------------------ dense
def _dense_bytes(shape: Shape, element: int, settings: TaskVectorsConfig) -> int:
    return math.prod(shape) * element


TASK_VECTOR_FORMS.add("dense", TaskVectorForm("dense", lambda tau, dtype, _: tau.to(dtype), _dense_bytes))


# ------------------------------------------------------------------------------------ sparse
def _position_dtype(numel: int) -> torch.dtype:
    return torch.int32 if numel < 2**31 else torch.int64


@dataclass(frozen=True)
class SparseTensor:
    shape: Shape
    positions: torch.Tensor  # flat, ascending
    values: torch.Tensor

    @property
    def nbytes(self) -> int:
        return stored_bytes(self.positions) + stored_bytes(self.values)

    def dense(self) -> torch.Tensor:
        out = torch.zeros(math.prod(self.shape), dtype=self.values.dtype, device=self.values.device)
        out.index_copy_(0, self.positions.long(), self.values)
        return out.view(self.shape)

    def to(self, device: torch.device) -> SparseTensor:
        move = {"device": device, "non_blocking": True}
        return SparseTensor(self.shape, self.positions.to(**move), self.values.to(**move))

    def pin_memory(self) -> SparseTensor:
        return SparseTensor(self.shape, self.positions.pin_memory(), self.values.pin_memory())


def _kept(numel: int, density: float) -> int:
    return max(1, round(density * numel))


def _sparse(tau: torch.Tensor, dtype: torch.dtype, settings: TaskVectorsConfig) -> SparseTensor:
    flat = tau.reshape(-1)
    positions = flat.abs().topk(_kept(flat.numel(), settings.density), sorted=False).indices.sort().values
    return SparseTensor(
        tuple(tau.shape), positions.to(_position_dtype(flat.numel())), flat[positions].to(dtype)
    )


def _sparse_bytes(shape: Shape, element: int, settings: TaskVectorsConfig) -> int:
    numel = math.prod(shape)
    position = torch.empty((), dtype=_position_dtype(numel)).element_size()
    return _kept(numel, settings.density) * (position + element)


TASK_VECTOR_FORMS.add("sparse", TaskVectorForm("sparse", _sparse, _sparse_bytes))


# ------------------------------------------------------------------------------------ low rank
@dataclass(frozen=True)
class LowRankTensor:
    left: torch.Tensor  # (m, r): U scaled by the singular values
    right: torch.Tensor  # (r, n)

    @property
    def nbytes(self) -> int:
        return stored_bytes(self.left) + stored_bytes(self.right)

    def dense(self) -> torch.Tensor:
        # Multiplied in float32: a bfloat16 product of r terms would add its own rounding error.
        return (self.left.float() @ self.right.float()).to(self.left.dtype)

    def to(self, device: torch.device) -> LowRankTensor:
        move = {"device": device, "non_blocking": True}
        return LowRankTensor(self.left.to(**move), self.right.to(**move))

    def pin_memory(self) -> LowRankTensor:
        return LowRankTensor(self.left.pin_memory(), self.right.pin_memory())


def _rank_for(shape: Shape, settings: TaskVectorsConfig) -> int | None:
    """The rank a matrix is kept at; None: keep it dense (not a matrix, or no smaller factored)."""
    if len(shape) != 2:
        return None
    rows, cols = shape
    rank = min(settings.rank, rows, cols)
    return rank if rank * (rows + cols) < rows * cols else None


def _low_rank(
    tau: torch.Tensor, dtype: torch.dtype, settings: TaskVectorsConfig
) -> torch.Tensor | LowRankTensor:
    rank = _rank_for(tuple(tau.shape), settings)
    if rank is None:
        return tau.to(dtype)
    u, s, vh = torch.linalg.svd(tau.float(), full_matrices=False)
    # Copies: a slice of ``vh`` kept as it is would keep all of ``vh`` (a view holds its whole storage).
    return LowRankTensor((u[:, :rank] * s[:rank]).to(dtype), vh[:rank].to(dtype, copy=True))


def _low_rank_bytes(shape: Shape, element: int, settings: TaskVectorsConfig) -> int:
    rank = _rank_for(shape, settings)
    return math.prod(shape) * element if rank is None else rank * (shape[0] + shape[1]) * element


TASK_VECTOR_FORMS.add("low_rank", TaskVectorForm("low_rank", _low_rank, _low_rank_bytes))
