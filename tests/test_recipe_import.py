"""A mergekit recipe as input: read with mergekit's rules for gradients and filters, merged by the resident
engine to the tensors ``mergekit-yaml`` makes from the same file, refused in one line where mergesearch
cannot express it, and used as a search's centre."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cli_helpers import assert_one_line_error, run
from merge_helpers import worst_relative_difference
from safetensors.torch import load_file

from mergesearch.errors import UserError
from mergesearch.merge.export import run_mergekit_yaml
from mergesearch.merge.genome import GenomeSpace
from mergesearch.merge.recipe_import import fit_to_space, materialize_imported, read_mergekit_recipe


def recipes(zoo: Path) -> dict[str, dict]:
    """Recipes in the style of mergekit's documentation (its examples name hub models; these the zoo)."""
    z = lambda name: str(zoo / name)
    return {
        "ties_gradients": {  # mergekit's README TIES example: gradients per model, a global setting
            "models": [
                {"model": z("math"), "parameters": {"density": [1, 0.7, 0.1], "weight": 1.0}},
                {"model": z("facts"), "parameters": {"density": 0.5, "weight": [0, 0.3, 0.7, 1]}},
                {"model": z("aligned"), "parameters": {"density": 0.33, "weight": 0.5}},
            ],
            "merge_method": "ties",
            "base_model": z("base"),
            "parameters": {"normalize": True, "int8_mask": True},
            "dtype": "float32",
        },
        "slerp_filters": {  # mergekit's SLERP example: t by filter and gradient, the base among the models
            "models": [{"model": z("math")}, {"model": z("facts")}],
            "merge_method": "slerp",
            "base_model": z("math"),
            "parameters": {"t": [{"filter": "layers.1.", "value": 0.9}, {"value": [0, 0.5, 0.3, 0.7, 1]}]},
            "dtype": "float32",
        },
        "task_arithmetic_global_weight": {  # a weight for every model from the global parameters
            "models": [{"model": z("math")}, {"model": z("aligned"), "parameters": {"weight": 0.4}}],
            "merge_method": "task_arithmetic",
            "base_model": z("base"),
            "parameters": {"weight": 0.7},
        },
        "dare_ties": {
            "models": [
                {"model": z("math"), "parameters": {"weight": 0.6, "density": 0.5}},
                {"model": z("facts"), "parameters": {"weight": 0.5, "density": 0.7}},
            ],
            "merge_method": "dare_ties",
            "base_model": z("base"),
        },
        "sce": {
            "models": [{"model": z(e)} for e in ("aligned", "math", "facts")],
            "merge_method": "sce",
            "base_model": z("base"),
            "parameters": {"select_topk": [0.3, 0.8]},
        },
        "model_stock": {
            "models": [{"model": z(e)} for e in ("base", "aligned", "math", "facts")],
            "merge_method": "model_stock",
            "base_model": z("base"),
        },
        "linear_with_base": {  # a method without a base averages the base model in, weighed like the rest
            "models": [{"model": z("math"), "parameters": {"weight": 0.7}}, {"model": z("aligned")}],
            "merge_method": "linear",
            "base_model": z("base"),
            "parameters": {"weight": 0.3},
        },
        "karcher": {
            "models": [{"model": z(e)} for e in ("aligned", "math", "facts")],
            "merge_method": "karcher",
        },
        "multislerp": {
            "models": [
                {"model": z("math"), "parameters": {"weight": 0.7}},
                {"model": z("facts"), "parameters": {"weight": 0.3}},
            ],
            "merge_method": "multislerp",
            "base_model": z("base"),
        },
        "nuslerp": {
            "models": [
                {"model": z("math"), "parameters": {"weight": 0.3}},
                {"model": z("facts"), "parameters": {"weight": 0.6}},
            ],
            "merge_method": "nuslerp",
            "base_model": z("base"),
        },
        "nearswap": {
            "models": [{"model": z("math")}],
            "merge_method": "nearswap",
            "base_model": z("base"),
            "parameters": {"t": 0.004},
        },
        "arcee_fusion": {
            "models": [{"model": z("math")}],
            "merge_method": "arcee_fusion",
            "base_model": z("base"),
        },
        "ram": {
            "models": [{"model": z(e)} for e in ("math", "facts")],
            "merge_method": "ram",
            "base_model": z("base"),
            "parameters": {"epsilon": 1e-3},
        },
        "ramplus_tl": {
            "models": [{"model": z(e)} for e in ("aligned", "math", "facts")],
            "merge_method": "ramplus_tl",
            "base_model": z("base"),
            "parameters": {"r": 0.3, "alpha": 0.5},
        },
    }


def write(recipe: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.parametrize("name", sorted(recipes(Path("zoo"))))
def test_a_recipe_merges_to_the_tensors_mergekit_yaml_makes_from_it(
    name: str, zoo_dir: Path, tmp_path: Path
) -> None:
    recipe = recipes(zoo_dir)[name]
    imported = read_mergekit_recipe(write(recipe, tmp_path))
    mine = load_file(
        str(
            materialize_imported(imported, tmp_path / "ours", seed=3, log=lambda _: None)
            / "model.safetensors"
        )
    )
    theirs = load_file(str(run_mergekit_yaml(recipe, tmp_path / "mk", seed=3) / "model.safetensors"))
    assert worst_relative_difference(mine, theirs) <= 1e-5
    # and the recipe mergesearch would write for it is the same merge
    assert (
        json.loads((tmp_path / "ours" / "mergesearch_recipe.json").read_text())["method"]
        == imported.recipe.method
    )


def test_gradients_become_per_layer_values_with_mergekits_head_rule(zoo_dir: Path, tmp_path: Path) -> None:
    slerp = read_mergekit_recipe(write(recipes(zoo_dir)["slerp_filters"], tmp_path)).recipe
    # t over 4 layers of [0, .5, .3, .7, 1] at l/3, layer 1 by its filter; the head reads the gradient at 0
    assert slerp.groups == ((0,), (1,), (2,), (3,)) and slerp.head_group == "first"
    assert slerp.group_params["t"] == pytest.approx((0.0, 0.9, 0.5666667, 1.0))
    assert slerp.experts == ("math", "facts")  # slerp runs from its base model
    flat = read_mergekit_recipe(
        write(recipes(zoo_dir)["task_arithmetic_global_weight"], tmp_path / "f")
    ).recipe
    assert flat.groups == ((0, 1, 2, 3),) and flat.expert_params["weight"] == ((0.7, 0.4),)


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda r: r.update(slices=[{"sources": []}]), "slices: mergesearch merges whole models"),
        (
            lambda r: r.update(merge_method="passthrough"),
            "merge_method 'passthrough' is not one mergesearch merges",
        ),
        (lambda r: r.update(colour="red"), "colour: not a key mergesearch reads"),
        (lambda r: r["models"][0].update(model=r["models"][0]["model"] + "+adapter"), "models[0].model"),
        (
            lambda r: r["models"][0]["parameters"].update(
                density=[{"filter": "self_attn", "value": 0.3}, {"value": 0.8}]
            ),
            "mergesearch's parameters are one value per layer",
        ),
        (
            lambda r: r["models"][0]["parameters"].update(normalize=False),
            "models[0].parameters.normalize: not a per-model parameter",
        ),
        (lambda r: r["parameters"].update(gamma=0.1), "parameters.gamma: ties has no such parameter"),
        (
            lambda r: r["models"][0]["parameters"].update(
                weight=[{"filter": "embed_tokens", "value": 0.2}, {"value": 1.0}]
            ),
            "the embeddings",
        ),
        (lambda r: r.update(dtype="int4"), "dtype: 'int4'"),
    ],
    ids=[
        "slices",
        "method",
        "key",
        "lora",
        "filter",
        "per-model-shared",
        "unknown-param",
        "embeddings",
        "dtype",
    ],
)
def test_what_mergesearch_cannot_express_is_one_line_naming_the_key(
    change, says, zoo_dir: Path, tmp_path: Path
) -> None:
    recipe = recipes(zoo_dir)["ties_gradients"]
    change(recipe)
    with pytest.raises(UserError, match="recipe.yaml: ") as err:
        read_mergekit_recipe(write(recipe, tmp_path))
    assert says in str(err.value) and "\n" not in str(err.value)


def test_eval_from_recipe_scores_the_merge_and_keeps_what_mergekit_yaml_makes(
    zoo_dir: Path, toy_dataset: Path, tmp_path: Path
) -> None:
    recipe = recipes(zoo_dir)["sce"]
    path = write(recipe, tmp_path)
    done = run(
        "eval",
        "--from-recipe",
        str(path),
        "--out",
        str(tmp_path / "merged"),
        "--data",
        str(toy_dataset),
        "--per-category",
        "1",
        "--max-new-tokens",
        "8",
        "--json",
        str(tmp_path / "scores.json"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "scores.json").read_text())["model"] == str(tmp_path / "merged")
    theirs = load_file(str(run_mergekit_yaml(recipe, tmp_path / "mk") / "model.safetensors"))
    assert (
        worst_relative_difference(load_file(str(tmp_path / "merged" / "model.safetensors")), theirs) <= 1e-5
    )
    # one of MODEL and --from-recipe, never both
    assert_one_line_error(
        run("eval", "zoo:math", "--from-recipe", str(path), "--data", str(toy_dataset)), "one of the two"
    )


def test_a_search_starts_from_the_recipe_within_its_radius(zoo_dir: Path, tmp_path: Path) -> None:
    recipe = recipes(zoo_dir)["ties_gradients"]
    imported = read_mergekit_recipe(
        write(recipe, tmp_path),
        {
            e: zoo_dir / e
            for e in (
                "aligned",
                "math",
                "facts",
            )
        },
        zoo_dir / "base",
    )
    layered = GenomeSpace("ties", ("aligned", "math", "facts"), 4, "layer")
    fitted = fit_to_space(imported, layered, {"normalize": True}, "merge.from_recipe")
    assert fitted.expert_params["weight"][3] == pytest.approx(
        (0.5, 1.0, 1.0)
    )  # pool order; facts' gradient ends at 1
    assert fitted.head_group == "first"  # the gradients' start, as mergekit reads the head
    experts = ("aligned", "math", "facts")
    settings = {"shared": {"normalize": True}, "head_group": "first"}
    start = GenomeSpace("ties", experts, 4, "layer", **settings).encode(fitted)
    space = GenomeSpace("ties", experts, 4, "layer", **settings, centre=start, radius=0.1)
    assert space.decode(start) == fitted
    low, high = space.gene_bounds()["w.facts.g1"]  # facts' weight in layer 1: 0.3, ± 0.1 of 0-1
    assert (low, high) == pytest.approx((0.2, 0.4))
    assert space.gene_bounds()["d.math.g0"] == pytest.approx((0.91, 1.0))  # 1 ± 0.09, clipped
    with pytest.raises(UserError, match="differs between layers 0-3"):
        fit_to_space(
            imported, GenomeSpace("ties", ("aligned", "math", "facts"), 4, "global"), {}, "merge.from_recipe"
        )
    with pytest.raises(UserError, match="the recipe merges with ties, merge.method is dare_ties"):
        fit_to_space(
            imported,
            GenomeSpace("dare_ties", ("aligned", "math", "facts"), 4, "layer"),
            {},
            "merge.from_recipe",
        )


def test_numbers_in_scientific_notation_are_numbers_as_mergekit_reads_them(
    zoo_dir: Path, tmp_path: Path
) -> None:
    """YAML loads ``1e-5`` (no dot) as a string: a gradient of them still interpolates."""
    text = (
        f"merge_method: ram\nbase_model: {zoo_dir / 'base'}\n"
        f"models:\n  - model: {zoo_dir / 'math'}\n  - model: {zoo_dir / 'facts'}\n"
        "parameters:\n  epsilon: [1e-5, 7e-4]\n"
    )
    (tmp_path / "recipe.yaml").write_text(text)
    imported = read_mergekit_recipe(tmp_path / "recipe.yaml")
    assert imported.recipe.group_params["epsilon"] == pytest.approx((1e-5, 2.4e-4, 4.7e-4, 7e-4))
    mine = load_file(
        str(materialize_imported(imported, tmp_path / "ours", log=lambda _: None) / "model.safetensors")
    )
    theirs = load_file(str(run_mergekit_yaml(yaml.safe_load(text), tmp_path / "mk") / "model.safetensors"))
    assert worst_relative_difference(mine, theirs) <= 1e-5


def test_two_folders_here_with_one_name_are_two_models(zoo_dir: Path, tmp_path: Path) -> None:
    import shutil

    for stage, member in (("sft", "base"), ("dpo", "math")):
        shutil.copytree(zoo_dir / member, tmp_path / stage / "final")
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": str(tmp_path / "sft" / "final"),
        "models": [{"model": str(tmp_path / "dpo" / "final"), "parameters": {"weight": 0.5}}],
    }
    imported = read_mergekit_recipe(write(recipe, tmp_path / "r"))
    assert list(imported.experts.values()) == [tmp_path / "dpo" / "final"]


def test_a_search_refuses_a_start_it_cannot_take_as_it_is(zoo_dir: Path, tmp_path: Path) -> None:
    experts = ("aligned", "math", "facts")
    pool = {e: zoo_dir / e for e in experts}
    ties = recipes(zoo_dir)["ties_gradients"]
    imported = read_mergekit_recipe(write(ties, tmp_path), pool, zoo_dir / "base")
    layered = GenomeSpace("ties", experts, 4, "layer")
    with pytest.raises(UserError, match="the recipe's normalize is True, merge.params' False"):
        fit_to_space(imported, layered, {"normalize": False}, "merge.from_recipe")
    mixtures = GenomeSpace("ties", experts, 4, "layer", normalize_weights=True)
    with pytest.raises(UserError, match="its weights sum to 1.5 in layer group 0; merge.weights_sum_to_one"):
        fit_to_space(imported, mixtures, {}, "merge.from_recipe")
    heavy = recipes(zoo_dir)["task_arithmetic_global_weight"]
    heavy["parameters"]["weight"] = 1.2
    start = read_mergekit_recipe(write(heavy, tmp_path / "h"), pool, zoo_dir / "base")
    space = GenomeSpace("task_arithmetic", experts, 4, "global")
    genome = space.encode(fit_to_space(start, space, {}, "merge.from_recipe"))
    with pytest.raises(UserError, match="w.math.g0 starts at 1.2, outside merge.bounds.weight .0 to 1."):
        GenomeSpace("task_arithmetic", experts, 4, "global", centre=genome)
