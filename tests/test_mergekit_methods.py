"""mergekit's other merge methods (sce, model_stock, karcher, multislerp, nuslerp, nearswap, arcee_fusion,
ram, ramplus_tl): each merges, in the resident engine, to the tensors ``mergekit-yaml`` makes from the
recipe our exporter writes, per layer group, on the toy zoo's experts; and each behaves as its paper says
on tensors built to show it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from merge_helpers import STEP, worst_relative_difference
from merge_helpers import TIED_EXPERTS as TIED
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from mergesearch.errors import UserError
from mergesearch.merge.export import recipe_to_mergekit, run_mergekit_yaml
from mergesearch.merge.genome import GenomeSpace
from mergesearch.merge.resident import ResidentMerger
from mergesearch.merge.spec import get_method

ALL = ("aligned", "math", "facts")


def spread_genome(space: GenomeSpace) -> dict[str, float]:
    """Every gene at its own value, spread over its bounds (so a gene read for another cannot pass)."""
    bounds = space.gene_bounds()
    return {
        name: low + (high - low) * (0.15 + (i * 0.37) % 0.7)
        for i, (name, (low, high)) in enumerate(bounds.items())
    }


# case -> (method, experts, bounds overriding the declared ones, shared settings)
CASES: dict[str, tuple[str, tuple[str, ...], Mapping[str, tuple[float, float]], Mapping[str, Any]]] = {
    "sce": ("sce", ALL, {}, {}),
    "model_stock": ("model_stock", ALL, {}, {}),
    "model_stock_filter_wise": ("model_stock", ALL, {}, {"filter_wise": True}),
    "karcher": ("karcher", ALL, {}, {}),
    "multislerp": ("multislerp", ALL, {"weight": (-0.4, 1.2)}, {}),  # a negative weight among them
    "nuslerp": ("nuslerp", ("math", "facts"), {"weight": (-0.3, 1.0)}, {}),
    "nuslerp_row_wise": (
        "nuslerp",
        ("math", "facts"),
        {},
        {"nuslerp_flatten": False, "nuslerp_row_wise": True},
    ),
    "nuslerp_rows": ("nuslerp", ("math", "facts"), {}, {"nuslerp_flatten": False}),
    "nearswap": ("nearswap", ("math",), {}, {}),
    "arcee_fusion": ("arcee_fusion", ("math",), {}, {}),
    "ram": ("ram", ALL, {}, {}),
    "ramplus_tl": ("ramplus_tl", ALL, {}, {}),
}


@pytest.fixture(scope="module")
def mergers(zoo_dir: Path) -> dict[tuple[str, ...], ResidentMerger]:
    """One resident pool per expert set the cases use (the pool a search would hold)."""
    return {
        experts: ResidentMerger(zoo_dir / "base", {e: zoo_dir / e for e in experts}, log=lambda _: None)
        for experts in {experts for _, experts, _, _ in CASES.values()}
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_resident_merge_makes_what_mergekit_makes_from_the_exported_recipe(
    case: str, mergers, zoo_dir: Path, tmp_path: Path
) -> None:
    method, experts, bounds, shared = CASES[case]
    space = GenomeSpace(method, experts, 4, granularity="groups", group_size=2, bounds=bounds, shared=shared)
    recipe = space.decode(spread_genome(space))
    config = recipe_to_mergekit(recipe, zoo_dir / "base", {e: zoo_dir / e for e in experts})
    assert config["merge_method"] == method
    theirs = load_file(str(run_mergekit_yaml(config, tmp_path / "mk", seed=7) / "model.safetensors"))
    merger = mergers[experts]
    live = AutoModelForCausalLM.from_pretrained(zoo_dir / "base")
    merger.merge_into(live, recipe, seed=7)  # what a search evaluates
    streamed, in_place = dict(merger.merged_tensors(recipe, seed=7)), live.state_dict()
    for mine in (streamed, in_place):
        assert worst_relative_difference({k: mine[k] for k in theirs}, theirs) <= 1e-5
    base = load_file(str(zoo_dir / "base" / "model.safetensors"))
    assert any(not torch.equal(theirs[k], base[k]) for k in base)  # a merge, not the base handed back


def test_per_group_settings_reach_their_layers(mergers, zoo_dir: Path) -> None:
    """A group gene changes only its group's layers (so the parity above covers the filters)."""
    space = GenomeSpace("nearswap", ("math",), 4, granularity="groups", group_size=2)
    low = space.decode({"t.g0": 0.001, "t.g1": 0.001})
    high = space.decode({"t.g0": 0.001, "t.g1": 0.009})
    a, b = (dict(mergers[("math",)].merged_tensors(r)) for r in (low, high))
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all(".layers.2." in k or ".layers.3." in k or "layers" not in k for k in changed)
    assert not any(".layers.0." in k or ".layers.1." in k for k in changed)


# ------------------------------------------------------------------------------------ behaviour
def test_model_stock_keeps_the_base_when_the_experts_disagree_and_averages_when_they_agree() -> None:
    base = torch.zeros(2, 4)
    direction = torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.5, 0.0, 1.0, 1.0]])
    agree = get_method("model_stock")(base, [direction, 2 * direction, 3 * direction])
    assert torch.allclose(agree, 2 * direction)  # cos 1: t = 1, the experts' average
    orthogonal = get_method("model_stock")(torch.zeros(2, 2), [torch.eye(2), torch.eye(2).flip(0)])
    assert torch.allclose(orthogonal, torch.zeros(2, 2))  # cos 0: t = 0, the base


def test_karcher_mean_of_two_directions_bisects_their_angle_at_their_mean_norm() -> None:
    base = torch.zeros(2)
    merged = get_method("karcher")(base, [torch.tensor([2.0, 0.0]), torch.tensor([0.0, 4.0])])
    assert torch.allclose(merged, 3.0 * torch.tensor([1.0, 1.0]) / 2**0.5, atol=1e-5)


def test_multislerp_keeps_the_mean_norm_where_a_linear_mix_shrinks() -> None:
    base = torch.ones(2)
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    merged = get_method("multislerp")(base, [a, b], weight=[1.0, 1.0]) - base
    assert torch.allclose(merged.norm(), torch.tensor(1.0), atol=1e-5)  # linear: 0.707
    assert torch.allclose(merged[0], merged[1])
    with pytest.raises(UserError, match="weighted mean direction"):
        get_method("multislerp")(base, [a, -a, torch.zeros(2)], weight=[1.0, 1.0, 0.0])


def test_nuslerp_weights_set_where_between_the_two_it_lands() -> None:
    base = torch.zeros(2)
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    nuslerp = get_method("nuslerp")
    assert torch.allclose(nuslerp(base, [a, b], weight=[1.0, 0.0]), a, atol=1e-6)
    assert torch.allclose(nuslerp(base, [a, b], weight=[1.0, 3.0]), torch.tensor([0.3827, 0.9239]), atol=1e-4)


def test_nearswap_moves_no_entry_further_than_t() -> None:
    base, tau = torch.zeros(4), torch.tensor([0.0005, -0.002, 0.01, -0.5])
    merged = get_method("nearswap")(base, [tau], t=0.001)
    assert torch.allclose(merged, torch.tensor([0.0005, -0.001, 0.001, -0.001]))


def test_arcee_fusion_keeps_only_the_outlying_important_changes() -> None:
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(64, 32, generator=generator)
    tau = torch.randn(64, 32, generator=generator) * 1e-3
    tau[5, 7] = 2.0  # one change that matters
    merged = get_method("arcee_fusion")(base, [tau])
    kept = merged != base
    assert kept[5, 7] and kept.sum() < 0.25 * kept.numel()


def test_ram_takes_unique_changes_whole_and_averages_shared_ones() -> None:
    base = torch.zeros(4)
    taus = [torch.tensor([0.4, 0.2, 0.0, 1e-6]), torch.tensor([0.0, 0.6, 0.0, 0.0])]
    assert torch.allclose(get_method("ram")(base, taus), torch.tensor([0.4, 0.4, 0.0, 0.0]))
    boosted = get_method("ramplus_tl")(base, taus, r=0.5, alpha=1.0)
    # expert 0: one shared entry, one unique: ρ = 1, λ = 1.5; expert 1 has no unique entry to boost
    assert torch.allclose(boosted, torch.tensor([0.6, 0.4, 0.0, 0.0]))


def test_sce_weighs_experts_by_their_energy_and_selects_the_most_varied_entries() -> None:
    base = torch.zeros(4)
    small, large = torch.tensor([0.1, 0.1, 0.1, 0.1]), torch.tensor([0.3, 0.3, 0.3, 0.3])
    # weights 0.01 and 0.09 (mean squares), shares 0.1 and 0.9: 0.1·0.1 + 0.9·0.3
    assert torch.allclose(get_method("sce")(base, [small, large]), torch.full((4,), 0.28))
    varied = [torch.tensor([0.1, 0.5, 0.12, 0.1]), torch.tensor([0.1, -0.5, 0.1, 0.12])]
    # a third of the 3 entries that vary: the one that varies most, its elected sign's side
    selected = get_method("sce")(base, varied, select_topk=0.34)
    assert selected.nonzero().flatten().tolist() == [1] and float(selected[1]) == 0.5


@pytest.mark.parametrize(
    "method, count, message",
    [("nuslerp", 3, "exactly 2"), ("nearswap", 2, "exactly 1"), ("model_stock", 1, "at least 2")],
)
def test_each_method_takes_the_models_it_can_merge(method: str, count: int, message: str) -> None:
    with pytest.raises(UserError, match=message):
        GenomeSpace(method, [f"e{i}" for i in range(count)], 4)


@pytest.mark.parametrize(
    "method, genes",
    [
        ("sce", {"topk.g0": 0.5}),  # variances tie by the hundred: topk's pick among them, as mergekit's
        ("ram", {"eps.g0": STEP}),  # magnitudes tie at the threshold itself
        ("ramplus_tl", {"eps.g0": STEP, "r.g0": 0.5, "alpha.g0": 0.8}),
        ("multislerp", {"w.a.g0": 0.6, "w.b.g0": -0.3, "w.c.g0": 0.9}),
    ],
)
def test_quantised_task_vectors_with_tied_magnitudes_merge_like_mergekit(
    method: str, genes: dict[str, float], tied_pool: Path, tmp_path: Path
) -> None:
    space = GenomeSpace(
        method, TIED, 3, "global", bounds={"weight": (-0.5, 1.0)} if method == "multislerp" else {}
    )
    recipe = space.decode(genes)
    experts = {e: tied_pool / e for e in TIED}
    theirs = load_file(
        str(
            run_mergekit_yaml(recipe_to_mergekit(recipe, tied_pool / "base", experts), tmp_path / "mk")
            / "model.safetensors"
        )
    )
    mine = dict(ResidentMerger(tied_pool / "base", experts, log=lambda _: None).merged_tensors(recipe))
    assert worst_relative_difference({k: mine[k] for k in theirs}, theirs) <= 1e-6
