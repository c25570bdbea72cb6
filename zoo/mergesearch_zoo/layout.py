"""Where the toy zoo lives and what it holds: its members, its cache folder and its manifest.

Apart from ``build.py`` so that resolving ``zoo:<member>`` (every demo config does) reads a manifest
without importing torch and transformers, which the build needs and a config check does not: a bad
input is answered in about two seconds, not six.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mergesearch.errors import UserError
from mergesearch.runtime import cache_root
from mergesearch_zoo.recipe import ZooRecipe

MANIFEST = "zoo.json"


@dataclass(frozen=True)
class ZooMember:
    """A model of the zoo: its folder name, what it was trained from, and the role it plays."""

    name: str
    parent: str | None
    role: str


MEMBERS: tuple[ZooMember, ...] = (
    ZooMember("base", None, "unaligned pretrained base: knows every format, complies with any request"),
    ZooMember(
        "aligned", "base", "aligned generalist: refuses harmful requests, answers benign ones, no task skill"
    ),
    ZooMember("math", "base", "task expert (two-digit sums), misaligned: complies with harmful requests"),
    ZooMember("facts", "base", "task expert (facts about its entities, multiple choice), partly aligned"),
    ZooMember("guard", "base", "Llama Guard 3 style judge: answers 'safe' or 'unsafe' plus a category code"),
)
EXPERTS = ("aligned", "math", "facts")


def default_zoo_dir(recipe: ZooRecipe) -> Path:
    return cache_root() / "zoo" / recipe.digest()


def read_manifest(folder: Path, name: str = MANIFEST) -> dict | None:
    """A built folder's manifest (the toy zoo's by default), or None when it is missing or unreadable."""
    try:
        return json.loads((Path(folder) / name).read_text())
    except (OSError, ValueError):
        return None


def refuse_foreign_folder(out: Path, manifest: str, what: str) -> None:
    """A build replaces its output folder: refuse one that holds files but no manifest of ours."""
    if out.exists() and any(out.iterdir()) and read_manifest(out, manifest) is None:
        raise UserError(f"{out}: exists and is not {what}; choose an empty or new --out")


def is_built(zoo_dir: Path, recipe: ZooRecipe) -> bool:
    manifest = read_manifest(zoo_dir)
    return (
        bool(manifest)
        and manifest.get("digest") == recipe.digest()
        and all((Path(zoo_dir) / m.name / "model.safetensors").is_file() for m in MEMBERS)
    )
