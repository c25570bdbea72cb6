"""Pool files: a many-expert pool named once, in a YAML list a search config points at (``models.pool``).

    # pools/toy16.yaml
    experts:
      - zoo_pool:*                            # every member a scheme's folder holds
      - /models/fine-tunes/*-sft              # every model folder a glob matches
      - {name: law, path: /models/law-expert} # one expert, named

A glob's last path component is matched against the model folders (a ``config.json``) in the folder the
rest names: a path (relative to the pool file), or ``<scheme>:`` (the folder of the scheme's members).
A globbed expert is named after its folder (characters a gene name cannot hold become ``_``). The pool
is expanded where model references are resolved (``SearchSetup.prepare``), so the run dir records the
experts it found, and a resumed search that finds others is refused as a different search.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field

from mergesearch.config import (
    EXPERT_NAME_LENGTH,
    ExpertSpec,
    Frozen,
    ModelsConfig,
    read_yaml,
    validate_mapping,
)
from mergesearch.errors import UserError
from mergesearch.model_refs import Log
from mergesearch.registry import MODEL_SCHEMES

GLOB = re.compile(r"[*?\[]")


class PoolFile(Frozen):
    experts: list[str | ExpertSpec] = Field(min_length=1)


def folder_name(folder: Path) -> str:
    """An expert's name from its folder's (``Llama-3-8B-sft``: genes use its gene id), at most 64
    characters (two folders that agree that far are named as repeating: name them with {name, path})."""
    return folder.name[:EXPERT_NAME_LENGTH]


def _matches(pattern: str, relative_to: Path, field: str, log: Log) -> list[Path]:
    scheme, colon, rest = pattern.partition(":")
    if colon and scheme in MODEL_SCHEMES and "/" not in rest:
        folder, glob = Path(MODEL_SCHEMES.get(scheme)("", field, log)), rest
    else:
        path = Path(pattern).expanduser()
        folder, glob = (path.parent if path.is_absolute() else relative_to / path.parent), path.name
    return sorted(p for p in folder.glob(glob) if (p / "config.json").is_file())


def _located(ref: str, pool_folder: Path) -> str:
    """A reference as the pool file means it: a relative path is relative to the pool file."""
    scheme, colon, _ = ref.partition(":")
    path = Path(ref).expanduser()
    if (colon and scheme in MODEL_SCHEMES) or path.is_absolute() or ref in MODEL_SCHEMES:
        return ref if not path.is_absolute() else str(path)
    return str(pool_folder / path)


def expand_pool(pool: str | Path, log: Log = print) -> list[ExpertSpec]:
    """The experts a pool file lists, globs expanded, in the file's order (a glob's matches sorted)."""
    path = Path(pool).expanduser()
    if not path.is_file():
        raise UserError(f"models.pool: {path}: pool file not found")
    parsed = validate_mapping(PoolFile, read_yaml(path), str(path))
    experts: list[ExpertSpec] = []
    for entry in parsed.experts:
        if isinstance(entry, ExpertSpec):
            experts.append(entry.model_copy(update={"path": _located(entry.path, path.parent)}))
        elif not GLOB.search(entry):
            name = folder_name(Path(entry.rpartition(":")[2] or entry))
            experts.append(ExpertSpec(name=name, path=_located(entry, path.parent)))
        else:
            found = _matches(entry, path.parent, f"{path}: {entry}", log)
            if not found:
                raise UserError(f"{path}: {entry} matches no model folder")
            experts += [ExpertSpec(name=folder_name(folder), path=str(folder)) for folder in found]
    names = [e.name for e in experts]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"{path}: expert names repeat ({', '.join(repeated)}); name them with {{name, path}}")
    return experts


def with_pool(models: ModelsConfig, log: Log = print) -> ModelsConfig:
    """``models`` with its pool file's experts after its own, and no pool left to expand."""
    if models.pool is None:
        return models
    experts = [e.model_dump() for e in (*models.experts, *expand_pool(models.pool, log))]
    data = {**models.model_dump(), "experts": experts, "pool": None}
    return validate_mapping(ModelsConfig, data, f"models.pool ({models.pool})")
