"""Magnitude trimming where magnitudes tie: exactly k kept, by a fixed rule, on every path.

Task vectors quantised to a few levels tie at every cut. mergekit keeps exactly k = max(1, ⌊density·n⌋)
entries, choosing among tied ones by an unstable sort; we keep exactly k too, the tied entries with the
lowest flat indices (``methods.magnitude_cut``). Both must agree with mergekit everywhere else.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from merge_helpers import (
    TIED_EXPERTS,
    ambiguous_entries,
    quantised,
    tie_rule_keep,
    trim_cuts,
    worst_relative_difference,
)
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from mergesearch.merge import methods
from mergesearch.merge.export import mergekit_config, recipe_to_mergekit, run_mergekit_yaml
from mergesearch.merge.methods import magnitude_outliers, magnitude_topk
from mergesearch.merge.recipe import MergeRecipe
from mergesearch.merge.resident import ResidentMerger
from mergesearch.merge.spec import get_method

EXPERTS = TIED_EXPERTS
WEIGHTS = (0.7, 1.1, 0.45)
DENSITIES = (0.3, 0.5, 0.62)


@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.77, 0.99])
def test_trim_keeps_exactly_k_and_the_lowest_indices_among_ties(density: float) -> None:
    generator = torch.Generator().manual_seed(3)
    for shape in ((40, 37), (1000,), (3,)):
        tau = quantised(shape, generator, levels=4)
        k = max(1, int(density * tau.numel()))
        expected = torch.where(tie_rule_keep(tau, 0, k), tau, 0.0)
        for sorted_abs in (None, tau.abs().reshape(-1).sort().values):
            kept = magnitude_topk(tau, density, sorted_abs=sorted_abs)
            assert torch.equal(kept, expected)
            if float(tau.abs().reshape(-1).sort(descending=True).values[k - 1]) > 0:  # a cut above zero
                assert int((kept != 0).sum()) == k


def test_trim_of_a_large_tie_finds_the_cut_chunk_by_chunk() -> None:
    tau = torch.zeros(300_001)
    tau[::3] = 1.0  # 100001 entries tied at 1, across many chunks of the index search
    tau[7] = 2.0
    kept = magnitude_topk(tau, 0.25)  # k = 75000: 2.0, then 74999 of the tied 1.0s
    assert int((kept != 0).sum()) == 75000
    assert torch.equal(kept != 0, tie_rule_keep(tau, 0, 75000))


@pytest.mark.parametrize("sorted_cache", [False, True], ids=["selected", "looked_up"])
def test_fused_ties_kernel_keeps_exactly_k_among_tied_magnitudes(sorted_cache: bool) -> None:
    generator = torch.Generator().manual_seed(4)
    base, taus = quantised((64, 33), generator), [quantised((64, 33), generator, levels=3) for _ in range(3)]
    for density in (0.1, 0.45, 0.8):
        kwargs = (
            {"sorted_magnitudes": [t.abs().reshape(-1).sort().values for t in taus]} if sorted_cache else {}
        )
        # one expert, weight 1: the merge is b + trimmed τ, so the kept entries can be counted
        alone = torch.empty_like(base)
        get_method("ties").merge_into(
            alone, base, taus[:1], weight=[1.0], density=[density], **{k: v[:1] for k, v in kwargs.items()}
        )
        assert not methods._ties_fused.failed  # the compiled kernel ran, not its eager fallback
        k = max(1, int(density * base.numel()))
        assert torch.equal(alone != base, tie_rule_keep(taus[0], 0, k))  # levels ≠ 0 fill every k here
        assert int((alone != base).sum()) == k
        # three experts: the kernel and the eager function agree, tied entries included
        params = {"weight": [0.8, -0.3, 1.1], "density": [density, 0.5, 0.3]}
        out = torch.empty_like(base)
        get_method("ties").merge_into(out, base, taus, **params, **kwargs)
        torch.testing.assert_close(out, get_method("ties")(base, taus, **params), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("density", "gamma"), [(0.5, 0.1), (0.3, 0.25), (0.9, 0.2)])
def test_breadcrumbs_settles_ties_at_both_cuts_by_flat_index(density: float, gamma: float) -> None:
    tau = quantised((30, 41), torch.Generator().manual_seed(5), levels=5)
    lo, hi = trim_cuts("breadcrumbs", tau.numel(), density, gamma)
    assert hi - lo == int(density * tau.numel())
    kept = magnitude_outliers(tau, density, gamma=gamma)
    assert torch.equal(kept, torch.where(tie_rule_keep(tau, lo, hi), tau, 0.0))


def test_tied_task_vectors_keep_exactly_k_as_mergekit_does(tied_pool: Path, tmp_path: Path) -> None:
    """One expert, weight 1: b + trimmed τ, from mergekit-yaml, the eager function and the fused kernel."""
    density = 0.37
    config = mergekit_config(
        "ties", tied_pool / "base", {tied_pool / "a": {"weight": 1.0, "density": density}}
    )
    theirs = load_file(str(run_mergekit_yaml(config, tmp_path / "mk") / "model.safetensors"))
    base, expert = (load_file(str(tied_pool / n / "model.safetensors")) for n in ("base", "a"))
    merger = ResidentMerger(tied_pool / "base", {"a": tied_pool / "a"}, log=lambda _: None)
    recipe = MergeRecipe(
        method="ties",
        experts=("a",),
        groups=((0, 1, 2),),
        expert_params={"weight": ((1.0,),), "density": ((density,),)},
    )
    live = AutoModelForCausalLM.from_pretrained(tied_pool / "base")
    merger.merge_into(live, recipe)
    streamed, in_place = dict(merger.merged_tensors(recipe)), live.state_dict()
    crossed = set()
    for key, b in base.items():
        tau = expert[key] - b
        k = max(1, int(density * tau.numel()))
        kept_by_rule = tie_rule_keep(tau, 0, k) & (tau != 0)
        if (tau.abs() >= tau.abs().reshape(-1).sort(descending=True).values[k - 1]).sum() > k:
            crossed.add(key)  # entries tie across the cut: the tie rule decides which are kept
        assert int((theirs[key] != b).sum()) == int(kept_by_rule.sum()), key  # mergekit: exactly k
        for mine in (streamed[key], in_place[key]):
            assert torch.equal(mine != b, kept_by_rule), key  # ours: exactly k, by the tie rule
    assert {k for k, b in base.items() if b.dim() == 2} <= crossed  # every matrix's cut is inside a tie


@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties"])
def test_tied_task_vectors_merge_like_mergekit_outside_the_ties(
    method: str, tied_pool: Path, tmp_path: Path
) -> None:
    outliers = {"gamma": ((0.05, 0.1, 0.02),)} if method == "breadcrumbs_ties" else {}
    recipe = MergeRecipe(
        method=method,
        experts=EXPERTS,
        groups=((0, 1, 2),),
        expert_params={"weight": (WEIGHTS,), "density": (DENSITIES,), **outliers},
    )
    experts = {e: tied_pool / e for e in EXPERTS}
    config = recipe_to_mergekit(recipe, tied_pool / "base", experts)
    theirs = load_file(str(run_mergekit_yaml(config, tmp_path / "mk") / "model.safetensors"))
    tensors = {n: load_file(str(tied_pool / n / "model.safetensors")) for n in ("base", *EXPERTS)}
    eager = {
        k: get_method(method)(b, [tensors[e][k] - b for e in EXPERTS], **recipe.params_for(k))
        for k, b in tensors["base"].items()
    }
    ambiguous = {
        k: ambiguous_entries(method, [tensors[e][k] - b for e in EXPERTS], recipe.params_for(k))
        for k, b in tensors["base"].items()
    }
    assert all(a.any() for a in ambiguous.values() if a.dim() == 2)  # ties at the cuts of every matrix...
    assert sum(int(a.sum()) for a in ambiguous.values()) < 0.5 * sum(a.numel() for a in ambiguous.values())
    assert worst_relative_difference(eager, theirs, ambiguous) <= 1e-6  # ...and mergekit's bytes elsewhere
    for sort_magnitudes in (False, True):
        merger = ResidentMerger(
            tied_pool / "base", experts, log=lambda _: None, sort_magnitudes=sort_magnitudes
        )
        live = AutoModelForCausalLM.from_pretrained(tied_pool / "base")
        merger.merge_into(live, recipe)  # the fused kernel for ties
        state = live.state_dict()
        for mine in (dict(merger.merged_tensors(recipe)), {k: state[k] for k in theirs}):
            assert worst_relative_difference(mine, theirs, ambiguous) <= 1e-6
            for key, tensor in mine.items():  # tied entries included, every path takes the same ones
                torch.testing.assert_close(tensor, eager[key], rtol=1e-6, atol=1e-7, msg=key)
