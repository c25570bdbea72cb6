"""Genome space, recipes, the resident merger and the mergekit export, on the toy zoo."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from merge_helpers import ambiguous_entries, worst_relative_difference
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from mergesearch.errors import UserError
from mergesearch.merge.export import materialize, mergekit_executable, recipe_to_mergekit, run_mergekit_yaml
from mergesearch.merge.genome import GenomeSpace, layer_groups
from mergesearch.merge.recipe import MergeRecipe
from mergesearch.merge.resident import ResidentMerger, sorted_magnitudes
from mergesearch.merge.spec import get_method

EXPERTS = ("aligned", "math", "facts")


@pytest.fixture(scope="module")
def expert_dirs(zoo_dir: Path) -> dict[str, Path]:
    return {name: zoo_dir / name for name in EXPERTS}


@pytest.fixture(scope="module")
def merger(zoo_dir: Path, expert_dirs) -> ResidentMerger:
    return ResidentMerger(zoo_dir / "base", expert_dirs, log=lambda _: None)


def per_layer_ties(num_layers: int = 4) -> tuple[GenomeSpace, dict[str, float]]:
    space = GenomeSpace("ties", EXPERTS, num_layers, granularity="layer", bounds={"weight": (0.0, 1.5)})
    genome = {name: 0.2 + (i * 0.137) % 1.0 for i, name in enumerate(space.gene_names())}
    return space, genome


def test_gene_names_are_stable_and_readable() -> None:
    space = GenomeSpace("dare_ties", ["math", "facts"], num_layers=4, granularity="groups", group_size=2)
    assert space.gene_names() == [
        "w.math.g0",
        "w.math.g1",
        "w.facts.g0",
        "w.facts.g1",
        "d.math.g0",
        "d.math.g1",
        "d.facts.g0",
        "d.facts.g1",
    ]
    assert GenomeSpace("slerp", ["a", "b"], 4, "layer").gene_names() == ["t.g0", "t.g1", "t.g2", "t.g3"]
    assert layer_groups(5, "groups", 2) == ((0, 1), (2, 3), (4,))
    assert layer_groups(3, "global") == ((0, 1, 2),)


def test_decode_then_encode_gives_the_genome_back() -> None:
    space, genome = per_layer_ties()
    recipe = space.decode(genome)
    assert recipe.expert_params["weight"][2][1] == genome["w.math.g2"]
    assert space.encode(recipe) == genome


def test_warm_starts_uniform_and_single_expert() -> None:
    space = GenomeSpace("ties", EXPERTS, 4, "global")
    assert space.uniform() == {
        **{f"w.{e}.g0": pytest.approx(1 / 3) for e in EXPERTS},
        **{f"d.{e}.g0": 1.0 for e in EXPERTS},
    }
    alone = space.expert_alone("math")
    assert [alone[f"w.{e}.g0"] for e in EXPERTS] == [0.0, 1.0, 0.0]
    assert GenomeSpace("slerp", ["a", "b"], 2, "global").expert_alone("b") == {"t.g0": 1.0}
    assert GenomeSpace("slerp", ["a", "b"], 2, "global").uniform() == {"t.g0": 0.5}
    with pytest.raises(UserError, match="merges exactly 2 experts"):
        GenomeSpace("slerp", ["a"], 2)


def test_a_genome_that_does_not_fit_is_one_clear_error() -> None:
    space, genome = per_layer_ties()
    genome.pop("w.math.g1")
    with pytest.raises(UserError, match=r"missing \['w.math.g1'\]"):
        space.decode(genome)


def test_tensors_outside_the_layers_follow_the_group_at_their_end() -> None:
    recipe = GenomeSpace("task_arithmetic", EXPERTS, 4, "groups", 2).decode(
        {f"w.{e}.g{g}": float(g) for e in EXPERTS for g in range(2)}
    )
    assert recipe.group_of("model.embed_tokens.weight") == 0
    assert recipe.group_of("model.layers.3.mlp.up_proj.weight") == 1
    assert recipe.group_of("model.norm.weight") == 1 and recipe.group_of("lm_head.weight") == 1


@pytest.mark.parametrize("method", ["ties", "task_arithmetic", "breadcrumbs_ties"])
def test_per_layer_merge_matches_mergekit_on_the_exported_recipe(
    method, merger, zoo_dir, expert_dirs, tmp_path
) -> None:
    trims = {"density": (0.3, 0.9)} if method != "task_arithmetic" else {}  # bounds name real parameters
    space = GenomeSpace(method, EXPERTS, 4, granularity="layer", bounds={"weight": (0.0, 1.5), **trims})
    genome = {name: 0.3 + (i * 0.113) % 0.6 for i, name in enumerate(space.gene_names())}
    recipe = space.decode(genome)
    config = recipe_to_mergekit(recipe, zoo_dir / "base", expert_dirs)
    theirs = load_file(str(run_mergekit_yaml(config, tmp_path / "mk") / "model.safetensors"))
    live = AutoModelForCausalLM.from_pretrained(zoo_dir / "base")
    merger.merge_into(live, recipe)  # what a search evaluates: the in-place kernels where a method has one
    streamed, in_place = dict(merger.merged_tensors(recipe)), live.state_dict()
    # Exact up to float rounding, except where an expert's magnitudes tie at a trim cut (mergekit's pick
    # among tied entries is its unstable sort's; ours is fixed): no comparison depends on the zoo's bytes.
    ambiguous = {
        k: ambiguous_entries(method, [merger.task_vectors[e][k] for e in EXPERTS], recipe.params_for(k))
        for k in theirs
    }
    assert sum(int(a.sum()) for a in ambiguous.values()) <= 1e-3 * sum(t.numel() for t in theirs.values())
    for mine in (streamed, in_place):
        assert worst_relative_difference({k: mine[k] for k in theirs}, theirs, ambiguous) <= 1e-5


@pytest.mark.parametrize(
    "method", ["ties", "task_arithmetic", "dare_ties"]
)  # two in-place kernels and the generic path
def test_merging_genome_after_genome_in_place_leaks_no_state(method, merger, zoo_dir) -> None:
    space = GenomeSpace(method, EXPERTS, 4, granularity="layer", bounds={"weight": (0.0, 1.5)})
    first = space.decode({name: 0.2 + (i * 0.137) % 1.0 for i, name in enumerate(space.gene_names())})
    second = space.decode(space.uniform())
    live = AutoModelForCausalLM.from_pretrained(zoo_dir / "base")
    storage = {k: p.data_ptr() for k, p in live.named_parameters()}
    merger.merge_into(live, first)
    merger.merge_into(live, second)
    fresh = AutoModelForCausalLM.from_pretrained(zoo_dir / "base")
    merger.merge_into(fresh, second)
    for (name, p), (_, q) in zip(live.named_parameters(), fresh.named_parameters()):
        assert torch.equal(p, q), name
    assert storage == {
        k: p.data_ptr() for k, p in live.named_parameters()
    }  # written in place, not reallocated


def test_expert_alone_reproduces_that_expert(merger, zoo_dir) -> None:
    space = GenomeSpace("task_arithmetic", EXPERTS, 4, "global")
    merged = dict(merger.merged_tensors(space.decode(space.expert_alone("math"))))
    math = load_file(str(zoo_dir / "math" / "model.safetensors"))
    for key in math:
        torch.testing.assert_close(merged[key], math[key], rtol=1e-6, atol=1e-6)


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_an_expert_with_nan_weights_is_named(zoo_dir, tmp_path) -> None:
    bad = _copy_model(zoo_dir / "math", tmp_path / "math")
    weights = load_file(str(bad / "model.safetensors"))
    weights["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(weights, str(bad / "model.safetensors"))
    with pytest.raises(
        UserError, match=r"math: tensor 'model.layers.1.mlp.up_proj.weight' contains NaN or Inf"
    ):
        ResidentMerger(zoo_dir / "base", {"math": bad}, log=lambda _: None)


def test_an_expert_of_another_architecture_is_named(zoo_dir, tmp_path) -> None:
    bad = _copy_model(zoo_dir / "facts", tmp_path / "facts")
    config = json.loads((bad / "config.json").read_text())
    config["num_hidden_layers"] = 6
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"expert 'facts' .*num_hidden_layers is 6, the base has 4"):
        ResidentMerger(zoo_dir / "base", {"facts": bad}, log=lambda _: None)


def test_an_expert_with_another_tokenizer_is_named(zoo_dir, tmp_path) -> None:
    bad = _copy_model(zoo_dir / "facts", tmp_path / "facts")
    tok = json.loads((bad / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = "paris", "rome"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (bad / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(UserError, match="tokenizer differs from the base"):
        ResidentMerger(zoo_dir / "base", {"facts": bad}, log=lambda _: None)


def test_a_missing_shard_is_named(zoo_dir, tmp_path) -> None:
    bad = _copy_model(zoo_dir / "facts", tmp_path / "facts")
    (bad / "model.safetensors").rename(bad / "model-00001-of-00002.safetensors")
    index = {
        "metadata": {},
        "weight_map": {
            "lm_head.weight": "model-00002-of-00002.safetensors",
            "model.norm.weight": "model-00001-of-00002.safetensors",
        },
    }
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="missing shard model-00002-of-00002.safetensors"):
        ResidentMerger(zoo_dir / "base", {"facts": bad}, log=lambda _: None)


def test_a_pool_that_does_not_fit_is_refused_up_front(zoo_dir, expert_dirs) -> None:
    messages: list[str] = []
    with pytest.raises(UserError, match="the pool does not fit"):
        ResidentMerger(zoo_dir / "base", expert_dirs, log=messages.append, memory_limit_bytes=1024)
    assert "need about" in messages[0]


def test_a_recipe_for_another_depth_is_refused(merger) -> None:
    recipe = GenomeSpace("task_arithmetic", EXPERTS, 6).decode({f"w.{e}.g0": 0.5 for e in EXPERTS})
    with pytest.raises(UserError, match="recipe covers 6 layers, the models have 4"):
        next(merger.merged_tensors(recipe))


def test_recipe_rejects_parameters_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match="one value per group and expert"):
        MergeRecipe(method="ties", experts=("a", "b"), groups=((0, 1),), expert_params={"weight": ((1.0,),)})


def test_materialised_recipe_is_a_model_folder_with_mergekits_tensors(
    merger, zoo_dir, expert_dirs, tmp_path
) -> None:
    space = GenomeSpace(
        "task_arithmetic", EXPERTS, 4, granularity="groups", group_size=2, bounds={"weight": (0.0, 1.2)}
    )
    recipe = space.decode({name: 0.25 + 0.1 * i for i, name in enumerate(space.gene_names())})
    ours = materialize(merger, recipe, zoo_dir / "base", tmp_path / "ours")
    theirs = run_mergekit_yaml(recipe_to_mergekit(recipe, zoo_dir / "base", expert_dirs), tmp_path / "theirs")
    model = AutoModelForCausalLM.from_pretrained(ours)
    reference = AutoModelForCausalLM.from_pretrained(theirs)
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert MergeRecipe.model_validate_json((ours / "mergesearch_recipe.json").read_text()) == recipe


def test_methods_mergekit_lacks_are_refused_at_export(zoo_dir, expert_dirs) -> None:
    recipe = GenomeSpace("tsvm", EXPERTS, 4).decode({f"w.{e}.g0": 1.0 for e in EXPERTS})
    with pytest.raises(UserError, match="mergekit has no 'tsvm' merge method"):
        recipe_to_mergekit(recipe, zoo_dir / "base", expert_dirs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sorted_magnitudes_are_torchs_sort_of_the_absolute_values(dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    tau = torch.randn(300, 70, generator=generator).to(dtype)
    tau[0, :10] = 0.25  # ties
    tau[1, :10] = -0.25
    tau[2, :5] = -0.0
    found = sorted_magnitudes(tau)
    assert found.dtype == torch.float32 and found.shape == (tau.numel(),)
    assert torch.equal(found, tau.abs().reshape(-1).float().sort().values)


def test_sorted_magnitude_cache_gives_the_same_ties_merge(zoo_dir, expert_dirs, merger) -> None:
    cached = ResidentMerger(zoo_dir / "base", expert_dirs, log=lambda _: None, sort_magnitudes=True)
    space, genome = per_layer_ties()
    recipe = space.decode(genome)
    plain = dict(merger.merged_tensors(recipe))
    for key, tensor in cached.merged_tensors(recipe):
        assert torch.equal(tensor, plain[key]), key


def test_normalised_weights_decode_to_a_mixture() -> None:
    space = GenomeSpace("task_arithmetic", EXPERTS, 4, "groups", 2, normalize_weights=True)
    genome = {
        "w.aligned.g0": 2.0,
        "w.math.g0": 1.0,
        "w.facts.g0": 1.0,
        "w.aligned.g1": 0.0,
        "w.math.g1": 0.0,
        "w.facts.g1": 0.0,
    }
    recipe = space.decode(genome)
    assert recipe.expert_params["weight"] == ((0.5, 0.25, 0.25), (1 / 3, 1 / 3, 1 / 3))
    assert space.decode(space.encode(recipe)) == recipe


@pytest.mark.parametrize("method", ["tsvm", "rtsvm"])
def test_tsv_factors_are_computed_once_then_each_genome_is_a_product(method, merger, monkeypatch) -> None:
    space = GenomeSpace(method, EXPERTS, 4, granularity="layer", bounds={"weight": (0.0, 1.5)})
    first, second = (
        space.decode(space.uniform()),
        space.decode({n: 0.2 + (i * 0.137) % 1.0 for i, n in enumerate(space.gene_names())}),
    )
    dict(merger.merged_tensors(first))

    def no_more_svds(*_, **__):
        raise AssertionError("a later genome recomputed an SVD")

    monkeypatch.setattr(torch.linalg, "svd", no_more_svds)
    monkeypatch.setattr(torch.linalg, "svdvals", no_more_svds)
    cached = dict(merger.merged_tensors(second))
    monkeypatch.undo()
    for key, tensor in cached.items():
        taus = [merger.task_vectors[e][key] for e in EXPERTS]
        from_scratch = get_method(method)(merger.base[key], taus, **second.params_for(key))
        torch.testing.assert_close(tensor, from_scratch, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("method", "extra"),
    [("dare_ties", {}), ("dare_linear", {}), ("della", {"epsilon": 0.1}), ("della_linear", {"epsilon": 0.1})],
)
def test_randomised_recipe_is_reproduced_by_mergekit_seed(
    method, extra, merger, zoo_dir, expert_dirs, tmp_path
) -> None:
    """A fact about mergekit 0.1.5, not a promise of ours: ``mergekit-yaml --random-seed S`` on the exported
    recipe rebuilds, bit for bit, what ``materialize(..., seed=S)`` writes (on CPU, for a single-file
    checkpoint). Both seed torch's CPU generator once and draw each tensor's masks in the same order:
    tensors by name (mergekit schedules by tensor name; a safetensors file lists its tensors sorted), then
    experts in recipe order, with the same calls (``torch.bernoulli`` over a tensor of keep-probabilities)."""
    groups = ((0,), (1,), (2, 3))  # per layer and a pair: several groups, each with its own genes
    params = {
        "weight": tuple((0.5 + 0.2 * g, 0.9 - 0.1 * g, 0.3 + 0.1 * g) for g in range(len(groups))),
        "density": tuple((0.35 + 0.1 * g, 0.6, 0.5 - 0.1 * g) for g in range(len(groups))),
        **{name: tuple((value,) * len(EXPERTS) for _ in groups) for name, value in extra.items()},
    }
    recipe = MergeRecipe(method=method, experts=EXPERTS, groups=groups, expert_params=params)
    config = recipe_to_mergekit(recipe, zoo_dir / "base", expert_dirs)
    theirs = load_file(str(run_mergekit_yaml(config, tmp_path / "mk", seed=7) / "model.safetensors"))
    ours = load_file(
        str(materialize(merger, recipe, zoo_dir / "base", tmp_path / "ours", seed=7) / "model.safetensors")
    )
    other = dict(merger.merged_tensors(recipe, seed=8))
    assert set(ours) == set(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    assert any(
        not torch.equal(other[key], ours[key]) for key in ours
    )  # the seed matters: not a trivial match


@pytest.mark.parametrize("pool", ["host", "disk"])
@pytest.mark.parametrize("method", ["ties", "tsvm", "dare_ties"])
def test_wherever_the_pool_lives_the_merge_is_the_same(pool, method, merger, zoo_dir, expert_dirs) -> None:
    """``host`` keeps the pool in (pinned) host RAM, ``disk`` reads each tensor per merge (promotion):
    every merged tensor equals the resident pool's, bit for bit."""
    other = ResidentMerger(zoo_dir / "base", expert_dirs, log=lambda _: None, pool=pool)
    if pool == "disk":
        assert other.estimate_bytes == 0 and not isinstance(other.base, dict)  # nothing held
    space = GenomeSpace(method, EXPERTS, 4, granularity="layer")
    recipe = space.decode({name: 0.3 + (i * 0.211) % 0.6 for i, name in enumerate(space.gene_names())})
    ours = dict(merger.merged_tensors(recipe, seed=3))
    for name, tensor in other.merged_tensors(recipe, seed=3):
        assert torch.equal(tensor, ours[name]), name
    assert len(ours) == len(dict(other.merged_tensors(recipe, seed=3)))


def test_a_materialised_model_bigger_than_a_shard_is_written_in_shards(
    merger, zoo_dir, monkeypatch, tmp_path
) -> None:
    """Memory stays one shard: the index maps every tensor; transformers loads the same weights."""
    import mergesearch.merge.export as export

    space = GenomeSpace("task_arithmetic", EXPERTS, 4)
    recipe = space.decode({name: 0.4 for name in space.gene_names()})
    whole = materialize(merger, recipe, zoo_dir / "base", tmp_path / "whole")
    monkeypatch.setattr(export, "SHARD_BYTES", 256 * 1024)
    sharded = materialize(merger, recipe, zoo_dir / "base", tmp_path / "sharded")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 2 and not (sharded / "model.safetensors").exists()
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    assert not list(sharded.glob("*.tmp"))
    assert all(s.stat().st_size <= 256 * 1024 + 2**20 for s in shards)  # a shard + one tensor at most
    reference = load_file(whole / "model.safetensors")
    assert set(index["weight_map"]) == set(reference)
    ours = AutoModelForCausalLM.from_pretrained(sharded).state_dict()
    for name, tensor in reference.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=0, msg=name)


def test_warm_starts_that_bounds_make_coincide_are_evaluated_once_and_the_log_says_so() -> None:
    from mergesearch.search.tuner import warm_starts

    lines: list[str] = []
    inside = GenomeSpace("task_arithmetic", EXPERTS, 4, "global")
    assert len(warm_starts(inside, ["uniform", "experts"], lines.append)) == 4 and not lines
    above_one = GenomeSpace("task_arithmetic", EXPERTS, 4, "global", bounds={"weight": (2.0, 3.0)})
    starts = warm_starts(above_one, ["uniform", "experts"], lines.append)
    assert starts == [{f"w.{e}.g0": 2.0 for e in EXPERTS}]
    assert lines == [
        "search.warm_starts: 4 starts (uniform, experts) are 1 distinct point(s) inside merge.bounds; "
        "each is evaluated once"
    ]


def test_the_forked_mergekit_yaml_the_tests_use_writes_what_a_fresh_one_writes(
    zoo_dir, expert_dirs, tmp_path
) -> None:
    """The parity tests run ``mergekit-yaml`` forked from a process that imported mergekit (conftest): it must
    write, bit for bit, what the console script writes in a fresh interpreter, random masks included."""
    recipe = MergeRecipe(
        method="dare_ties",
        experts=EXPERTS,
        groups=((0, 1, 2, 3),),
        expert_params={"weight": ((0.6, 0.8, 0.4),), "density": ((0.5, 0.7, 0.3),)},
    )
    config = recipe_to_mergekit(recipe, zoo_dir / "base", expert_dirs)
    forked = load_file(str(run_mergekit_yaml(config, tmp_path / "forked", seed=3) / "model.safetensors"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    command = [mergekit_executable(), str(tmp_path / "config.yaml"), str(tmp_path / "fresh"), "--quiet"]
    subprocess.run([*command, "--random-seed", "3"], check=True, capture_output=True)
    fresh = load_file(str(tmp_path / "fresh" / "model.safetensors"))
    assert set(forked) == set(fresh)
    for key in fresh:
        assert torch.equal(forked[key], fresh[key]), key
