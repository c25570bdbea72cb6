"""Compact task vectors: a sparse or low-rank pool holds what the memory plan counts, merges exactly what the
dense pool merges when the form holds the whole task vector, and loses more the less it keeps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_pools import EXPERTS, write_pool

from mergesearch.config import TaskVectorsConfig
from mergesearch.merge.compact import CompactTaskVectors, stored_bytes
from mergesearch.merge.genome import GenomeSpace
from mergesearch.merge.resident import ResidentMerger

SPARSE = TaskVectorsConfig(form="sparse", density=0.25)
LOW_RANK = TaskVectorsConfig(form="low_rank", rank=2)


def sparse_rank_two(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """A task vector tensor with a fifth of its rows non-zero and rank at most 2 (a vector: a fifth of
    its entries): both compact forms above hold it whole."""
    rows = shape[0]
    live = torch.randperm(rows, generator=generator)[: max(1, rows // 5)]
    if len(shape) == 1:
        tau = torch.zeros(rows)
        tau[live] = torch.randn(len(live), generator=generator)
        return tau
    left = torch.zeros(rows, 2)
    left[live] = torch.randn(len(live), 2, generator=generator)
    return left @ torch.randn(2, shape[1], generator=generator)


@pytest.fixture(scope="module")
def compressible_pool(tmp_path_factory) -> Path:
    return write_pool(tmp_path_factory.mktemp("compressible"), sparse_rank_two)


@pytest.fixture(scope="module")
def dense_pool(tmp_path_factory) -> Path:
    return write_pool(
        tmp_path_factory.mktemp("dense"), lambda shape, g: 0.02 * torch.randn(shape, generator=g)
    )


def merger(
    pool: Path, form: TaskVectorsConfig | None = None, sort: bool = False, dtype: str = "float32"
) -> ResidentMerger:
    experts = {name: pool / name for name in EXPERTS}
    return ResidentMerger(
        pool / "base", experts, dtype, log=lambda _: None, task_vectors=form, sort_magnitudes=sort
    )


def merged(pool_merger: ResidentMerger, method: str, genes: float = 0.6) -> dict[str, torch.Tensor]:
    space = GenomeSpace(method, EXPERTS, num_layers=2)
    recipe = space.decode(dict.fromkeys(space.gene_names(), genes))
    return dict(pool_merger.merged_tensors(recipe, seed=7))


def relative_error(mine: dict[str, torch.Tensor], exact: dict[str, torch.Tensor]) -> float:
    num = sum(float((mine[k] - exact[k]).norm() ** 2) for k in exact)
    return (num / sum(float(t.norm() ** 2) for t in exact.values())) ** 0.5


@pytest.mark.parametrize(
    ("form", "method"),
    # A low-rank expansion holds τ up to rounding: its exact zeros come back as ±1e-9, which TIES counts
    # as votes in its disjoint mean, so TIES on a low-rank pool is exact only in the sum, not per entry.
    [(SPARSE, "task_arithmetic"), (SPARSE, "ties"), (SPARSE, "dare_ties"), (LOW_RANK, "task_arithmetic")],
    ids=lambda v: getattr(v, "form", v),
)
def test_a_form_that_holds_the_whole_task_vector_merges_as_the_dense_pool(
    compressible_pool, form, method
) -> None:
    exact = merged(merger(compressible_pool), method)
    mine = merged(merger(compressible_pool, form), method)
    for key, tensor in exact.items():
        torch.testing.assert_close(mine[key], tensor, rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.parametrize(
    ("form", "dtype"),
    [(TaskVectorsConfig(), "float32"), (SPARSE, "float32"), (LOW_RANK, "float32"), (LOW_RANK, "bfloat16")],
    ids=["dense", "sparse", "low_rank", "low_rank_bf16"],
)
def test_the_pool_holds_the_bytes_it_counts_before_loading(dense_pool, form, dtype) -> None:
    pool = merger(dense_pool, form, dtype=dtype)
    base = sum(stored_bytes(t) for t in pool.base.values())
    held = [  # storage bytes: a view of a bigger tensor counts all it keeps alive
        taus.nbytes if isinstance(taus, CompactTaskVectors) else sum(stored_bytes(t) for t in taus.values())
        for taus in pool.task_vectors.values()
    ]
    assert pool.estimate_bytes == base + sum(held)
    if form.form != "dense":
        assert sum(held) < 3 * base  # smaller than three dense task vectors


def test_merge_error_shrinks_as_the_form_keeps_more(dense_pool) -> None:
    exact = merged(merger(dense_pool), "task_arithmetic")
    forms = {
        "sparse": [TaskVectorsConfig(form="sparse", density=d) for d in (0.1, 0.3, 0.6, 1.0)],
        "low_rank": [TaskVectorsConfig(form="low_rank", rank=r) for r in (1, 4, 8, 32)],
    }
    for name, settings in forms.items():
        errors = [relative_error(merged(merger(dense_pool, s), "task_arithmetic"), exact) for s in settings]
        assert errors == sorted(errors, reverse=True) and errors[0] > 10 * max(errors[-1], 1e-7), name
        assert errors[-1] < 1e-5, name  # all entries kept / full rank: exact


def test_a_compact_pool_keeps_no_sorted_magnitudes(dense_pool) -> None:
    """Sorting a compact form's expansion would keep one dense copy per expert: the saving undone."""
    assert merger(dense_pool, sort=True).sorted_magnitudes
    assert merger(dense_pool, SPARSE, sort=True).sorted_magnitudes == {}
    assert merger(dense_pool, SPARSE, sort=True).estimate_bytes == merger(dense_pool, SPARSE).estimate_bytes
