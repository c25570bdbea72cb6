"""Merge methods: same names and parameter meanings as mergekit, and the same tensors (parity tested
against the real ``mergekit-yaml`` on toy-zoo experts); randomised sparsifiers checked statistically."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from merge_helpers import ambiguous_entries, worst_relative_difference
from safetensors.torch import load_file

from mergesearch.errors import UserError
from mergesearch.merge import methods
from mergesearch.merge.export import mergekit_config, run_mergekit_yaml
from mergesearch.merge.methods import della_magprune, magnitude_topk, random_keep
from mergesearch.merge.spec import get_method
from mergesearch.registry import MERGE_METHODS

EXPERTS = ("aligned", "math", "facts")
WEIGHTS = (0.7, 1.1, 0.45)  # distinct, so a mix-up of experts cannot pass


@pytest.fixture(scope="module")
def tensors(zoo_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(str(zoo_dir / name / "model.safetensors")) for name in ("base", *EXPERTS)}


def ours(tensors, method: str, experts=EXPERTS, **params) -> dict[str, torch.Tensor]:
    base = tensors["base"]
    return {k: get_method(method)(b, [tensors[e][k] - b for e in experts], **params) for k, b in base.items()}


def max_relative_difference(mine: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    assert set(mine) == set(theirs)
    return max(
        float((mine[k] - theirs[k]).abs().max() / theirs[k].abs().max().clamp_min(1e-12)) for k in mine
    )


CASES = {
    "task_arithmetic": ({}, {}),
    "linear": ({}, {}),
    "ties": ({"density": 0.4}, {}),
    "ties_unnormalized": ({"density": 0.6}, {"normalize": False}),
    "breadcrumbs": ({"density": 0.5, "gamma": 0.02}, {}),
    "breadcrumbs_ties": ({"density": 0.5, "gamma": 0.02}, {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_tensors_as_mergekit_for_three_experts(
    case: str, tensors, zoo_dir: Path, tmp_path: Path
) -> None:
    method = case.removesuffix("_unnormalized")
    per_expert, shared = CASES[case]
    config = mergekit_config(
        method,
        zoo_dir / "base",
        {zoo_dir / e: {"weight": w, **per_expert} for e, w in zip(EXPERTS, WEIGHTS)},
        extra={"parameters": shared} if shared else None,
    )
    if method == "linear":
        del config["base_model"]  # linear averages the listed models only
    theirs = load_file(str(run_mergekit_yaml(config, tmp_path / "mk") / "model.safetensors"))
    params = {"weight": WEIGHTS, **{k: [v] * len(EXPERTS) for k, v in per_expert.items()}, **shared}
    # Exact up to float rounding, except where an expert's magnitudes tie at a trim cut (which tied entry
    # mergekit keeps is its unstable sort's choice): the zoo's bytes differ between CPUs, so may its ties.
    base = tensors["base"]
    ambiguous = {
        k: ambiguous_entries(method, [tensors[e][k] - b for e in EXPERTS], params) for k, b in base.items()
    }
    assert sum(int(a.sum()) for a in ambiguous.values()) <= 1e-3 * sum(b.numel() for b in base.values())
    assert worst_relative_difference(ours(tensors, method, **params), theirs, ambiguous) <= 1e-5


def test_slerp_matches_mergekit_between_two_experts(tensors, zoo_dir: Path, tmp_path: Path) -> None:
    config = {
        "merge_method": "slerp",
        "base_model": str(zoo_dir / "math"),
        "models": [{"model": str(zoo_dir / "math")}, {"model": str(zoo_dir / "facts")}],
        "parameters": {"t": 0.3},
        "dtype": "float32",
    }
    theirs = load_file(str(run_mergekit_yaml(config, tmp_path / "mk") / "model.safetensors"))
    assert max_relative_difference(ours(tensors, "slerp", experts=("math", "facts"), t=0.3), theirs) <= 1e-5


def test_unknown_method_lists_the_known_ones() -> None:
    with pytest.raises(UserError) as err:
        get_method("frankenmerge")
    assert "unknown merge method 'frankenmerge'; known:" in str(err.value)
    for name in (
        "linear",
        "task_arithmetic",
        "ties",
        "dare_ties",
        "dare_linear",
        "breadcrumbs",
        "della",
        "slerp",
    ):
        assert name in MERGE_METHODS and name in str(err.value)


def test_task_arithmetic_is_base_plus_weighted_task_vectors() -> None:
    base, t1, t2 = torch.randn(3, 5, 7).unbind(0)
    merged = get_method("task_arithmetic")(base, [t1, t2], weight=[0.5, 2.0])
    torch.testing.assert_close(merged, base + 0.5 * t1 + 2.0 * t2)


def test_ties_keeps_only_entries_that_agree_with_the_elected_sign() -> None:
    base = torch.zeros(4)
    t1, t2 = torch.tensor([1.0, -2.0, 3.0, 0.5]), torch.tensor([-3.0, 1.0, 1.0, 0.5])
    merged = get_method("ties")(base, [t1, t2], weight=[1.0, 1.0], density=[1.0, 1.0])
    # sums: [-2, -1, 4, 1] -> signs [-, -, +, +]; kept: [t2, t1, both, both]; normalised by kept weight
    torch.testing.assert_close(merged, torch.tensor([-3.0, -2.0, 2.0, 0.5]))


def test_magnitude_trim_keeps_the_largest_share() -> None:
    delta = torch.tensor([0.1, -5.0, 0.3, 2.0, -0.2, 0.05, 4.0, -1.0, 0.0, 0.01])
    kept = magnitude_topk(delta, density=0.3)
    assert set(torch.nonzero(kept).flatten().tolist()) == {1, 3, 6}


def test_dare_keeps_the_density_share_and_preserves_the_l1_norm() -> None:
    delta = torch.randn(200, 300)
    generator = torch.Generator().manual_seed(0)
    kept = random_keep(delta, density=0.3, rescale=True, generator=generator)
    share = float((kept != 0).float().mean())
    assert abs(share - 0.3) < 0.01
    torch.testing.assert_close(kept.abs().sum(), delta.abs().sum(), rtol=1e-4, atol=0)
    # each kept entry is the original entry scaled by one common factor close to 1/p
    ratio = kept[kept != 0] / delta[kept != 0]
    assert float(ratio.std()) < 1e-4 and abs(float(ratio.mean()) - 1 / 0.3) < 0.1


def test_dare_is_unbiased_over_many_draws() -> None:
    delta = torch.randn(50, 40)
    generator = torch.Generator().manual_seed(1)
    mean = torch.stack([random_keep(delta, 0.5, rescale=True, generator=generator) for _ in range(400)]).mean(
        0
    )
    # each entry's estimate has standard error |δ|·sqrt((1-p)/p)/sqrt(400) = 0.05·|δ|; allow twice its mean
    assert float((mean - delta).abs().mean()) < 0.08 * float(delta.abs().mean())


def test_same_generator_seed_gives_the_same_dare_merge() -> None:
    base, t1, t2 = torch.randn(3, 30, 20).unbind(0)
    method = get_method("dare_ties")
    first = method(
        base, [t1, t2], weight=[1, 1], density=[0.5, 0.5], generator=torch.Generator().manual_seed(7)
    )
    again = method(
        base, [t1, t2], weight=[1, 1], density=[0.5, 0.5], generator=torch.Generator().manual_seed(7)
    )
    other = method(
        base, [t1, t2], weight=[1, 1], density=[0.5, 0.5], generator=torch.Generator().manual_seed(8)
    )
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)


def test_della_keeps_large_entries_more_often_than_small_ones() -> None:
    delta = torch.linspace(0.01, 1.0, 1000).repeat(200, 1)
    kept = della_magprune(
        delta, density=0.5, epsilon=0.4, rescale=False, generator=torch.Generator().manual_seed(0)
    )
    kept_share = (kept != 0).float().mean(0)
    assert float(kept_share[:100].mean()) < 0.2 and float(kept_share[-100:].mean()) > 0.8
    assert abs(float((kept != 0).float().mean()) - 0.5) < 0.01


def test_della_rejects_an_epsilon_that_leaves_the_unit_interval() -> None:
    with pytest.raises(UserError, match="epsilon"):
        della_magprune(torch.randn(4, 4), density=0.9, epsilon=0.2)


@pytest.mark.parametrize("weights", [(0.3, 1.2, -0.4), (0.5, -0.5, 0.0)], ids=["mixed", "summing_to_zero"])
@pytest.mark.parametrize(
    ("method", "shared"),
    [
        ("task_arithmetic", {}),
        ("task_arithmetic", {"normalize": True, "lambda": 0.5}),
        ("linear", {}),
        ("linear", {"normalize": False}),
    ],
)
def test_in_place_kernel_gives_the_same_tensor_as_the_function(
    method: str, shared: dict, weights: tuple
) -> None:
    base, t1, t2, t3 = torch.randn(4, 16, 9).unbind(0)
    spec = get_method(method)
    out = torch.empty_like(base)
    spec.merge_into(out, base, [t1, t2, t3], weight=list(weights), **shared)
    expected = spec(base, [t1, t2, t3], weight=list(weights), **shared)
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "shared", [{}, {"normalize": False, "lambda": 0.7}], ids=["defaults", "unnormalised"]
)
@pytest.mark.parametrize("sorted_cache", [False, True], ids=["selected", "looked_up"])
def test_fused_ties_kernel_gives_the_same_tensor_as_the_function(shared: dict, sorted_cache: bool) -> None:
    base, t1, t2, t3 = torch.randn(4, 64, 33).unbind(0)
    taus, kwargs = [t1, t2, t3], {"weight": [0.8, -0.3, 1.1], "density": [0.4, 1.0, 0.0], **shared}
    if sorted_cache:
        kwargs["sorted_magnitudes"] = [t.abs().reshape(-1).sort().values for t in taus]
    out = torch.empty_like(base)
    get_method("ties").merge_into(out, base, taus, **kwargs)
    assert not methods._ties_fused.failed  # the compiled kernel ran, not its eager fallback
    torch.testing.assert_close(out, get_method("ties")(base, taus, **kwargs), rtol=1e-6, atol=1e-6)


def test_linear_without_normalize_is_the_weighted_sum_of_the_experts() -> None:
    base, t1, t2 = torch.randn(3, 5, 4).unbind(0)
    merged = get_method("linear")(base, [t1, t2], weight=[0.3, 1.2], normalize=False)
    torch.testing.assert_close(merged, 0.3 * (base + t1) + 1.2 * (base + t2))


def test_both_entry_points_refuse_unknown_parameters_and_wrong_expert_counts() -> None:
    base, t1 = torch.randn(2, 4, 4).unbind(0)
    for call in (
        lambda **kw: get_method("task_arithmetic")(base, [t1], **kw),
        lambda **kw: get_method("task_arithmetic").merge_into(torch.empty_like(base), base, [t1], **kw),
    ):
        with pytest.raises(UserError, match="unknown parameter"):
            call(weight=[1.0], lamda=0.5)
    with pytest.raises(UserError, match="merges exactly 2 experts, got 1"):
        get_method("slerp")(base, [t1], t=0.5)


def test_della_handles_single_column_and_scalar_tensors() -> None:
    for shape in ((6, 1), (1,), (7,)):
        kept = della_magprune(
            torch.randn(shape), density=0.5, epsilon=0.1, generator=torch.Generator().manual_seed(0)
        )
        assert kept.shape == torch.Size(shape) and torch.isfinite(kept).all()


def _orthogonal_tasks(rank: int = 2) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Two task matrices with orthogonal row and column spaces, each of rank ``rank``."""
    q_left, _ = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64))
    q_right, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))
    taus = []
    for i in range(2):
        cols = slice(i * rank, (i + 1) * rank)
        taus.append(
            (q_left[:, cols] * torch.tensor([3.0, 1.5][:rank], dtype=torch.float64)) @ q_right[:, cols].T
        )
    return torch.randn(12, 10, dtype=torch.float64), taus


def test_tsvm_on_orthogonal_tasks_is_task_arithmetic() -> None:
    base, taus = _orthogonal_tasks()
    merged = get_method("tsvm")(base, taus, weight=[0.7, 1.3], rank_share=0.2)
    torch.testing.assert_close(merged, base + 0.7 * taus[0] + 1.3 * taus[1])
    # R-TSVM too, once its outlier clipping is off (its ranks come from the spectrum: 2 each here)
    no_clipping = get_method("rtsvm")(base, taus, weight=[0.7, 1.3], outlier_z=float("inf"))
    torch.testing.assert_close(no_clipping, base + 0.7 * taus[0] + 1.3 * taus[1])


def test_tsvm_keeps_each_task_to_its_share_of_the_rank() -> None:
    base = torch.zeros(8, 8, dtype=torch.float64)
    taus = [torch.randn(8, 8, dtype=torch.float64) for _ in range(2)]
    merged = get_method("tsvm")(base, taus, weight=[1.0, 1.0], rank_share=3 / 8)  # 3 triplets each
    assert int(torch.linalg.matrix_rank(merged)) == 6
    # the merged singular vectors are orthonormal, so its singular values are the kept task ones
    kept = torch.cat([torch.linalg.svdvals(t)[:3] for t in taus]).sort(descending=True).values
    torch.testing.assert_close(torch.linalg.svdvals(merged)[:6], kept)
    with pytest.raises(UserError, match="rank_share"):
        get_method("tsvm")(base, taus, weight=[1.0, 1.0], rank_share=0.75)


def test_tsvm_merges_vectors_by_the_weighted_mean() -> None:
    base, t1, t2 = torch.randn(3, 6).unbind(0)
    torch.testing.assert_close(
        get_method("tsvm")(base, [t1, t2], weight=[1.0, 0.5]), base + (t1 + 0.5 * t2) / 2
    )


def test_rtsvm_clips_outliers_and_picks_rank_from_the_spectrum() -> None:
    base = torch.zeros(20, 20, dtype=torch.float64)
    low_rank = torch.randn(20, 1, dtype=torch.float64) @ torch.randn(1, 20, dtype=torch.float64)
    spiky = low_rank.clone()
    spiky[3, 4] += 1e4  # one outlier entry
    merged = get_method("rtsvm")(base, [spiky], weight=[1.0], energy=0.95)
    assert float(merged.abs().max()) < 0.1 * 1e4  # the outlier no longer dominates
    assert int(torch.linalg.matrix_rank(get_method("rtsvm")(base, [low_rank], weight=[1.0]))) == 1
