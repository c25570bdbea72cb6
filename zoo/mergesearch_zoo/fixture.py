"""The shipped toy zoo: the default recipe's five models in half precision, in ``toy_zoo/`` beside
this module (package data: a wheel of mergesearch-zoo carries it).

Why shipped and not trained on each machine: float training is deterministic on one machine but not
across CPUs (another CPU's kernels round differently, and 5,000 steps of training turn that into another
zoo), so a zoo trained here differs from the one the tests and the README were measured on: once by
enough to turn a test red, and to change the demo's story. Every machine unpacks these bytes instead and
gets the same weights, and the build is seconds, not 9 minutes. Inference still rounds differently across
CPUs, so no test hangs on an exact greedy tie (docs/zoo.md).

Half precision keeps the fixture at about 10 MB. A zoo unpacked from it is stored as float32, like a
trained one, so every loader and merge sees the dtype it always saw (``dithered`` says how it is
widened). The
fixture names its recipe's digest; a recipe that no longer matches it is trained (``zoo build --train``)
and packed again (``zoo pack``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from mergesearch.errors import UserError
from mergesearch.io import atomic_dir, atomic_write_text
from mergesearch_zoo.layout import EXPERTS, MANIFEST, MEMBERS, read_manifest
from mergesearch_zoo.recipe import ZooRecipe

# Package data of mergesearch-zoo, so an installed wheel unpacks it as an editable install does.
FIXTURE_DIR = Path(__file__).resolve().parent / "toy_zoo"
FIXTURE_MANIFEST = "fixture.json"
WEIGHTS = "model.safetensors"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fixture_for(recipe: ZooRecipe, fixture: Path = FIXTURE_DIR) -> Path | None:
    """The fixture folder when it holds ``recipe``'s zoo, else None (no fixture, or another recipe's)."""
    manifest = read_manifest(fixture, FIXTURE_MANIFEST)
    return fixture if manifest and manifest.get("digest") == recipe.digest() else None


def pack_zoo(zoo_dir: Path, out: Path = FIXTURE_DIR, log: Callable[[str], None] = print) -> Path:
    """Write a built zoo as the fixture: every member's files, its weights in float16, and a manifest
    with the recipe, its digest and each file's SHA-256 (checked when unpacked)."""
    from safetensors.torch import load_file, save_file

    zoo_dir = Path(zoo_dir)
    manifest = read_manifest(zoo_dir)
    if manifest is None:
        raise UserError(f"{zoo_dir}: not a built zoo (no readable {MANIFEST})")
    with atomic_dir(Path(out)) as tmp:
        for member in MEMBERS:
            source, target = zoo_dir / member.name, tmp / member.name
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(WEIGHTS))
            tensors = load_file(source / WEIGHTS)
            half = {name: t.to(torch.float16).contiguous() for name, t in tensors.items()}
            save_file(half, target / WEIGHTS, metadata={"format": "pt"})
        files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        fixture_manifest = {
            "digest": manifest["digest"],
            "recipe": manifest["recipe"],
            "members": manifest["members"],
            "experts": manifest["experts"],
            "weights_dtype": "float16",
            "files": files,
            "rebuild": "mergesearch zoo build --train --out DIR && mergesearch zoo pack --zoo DIR",
        }
        atomic_write_text(tmp / FIXTURE_MANIFEST, json.dumps(fixture_manifest, indent=2) + "\n")
    log(f"zoo: packed {zoo_dir} into {out} (recipe {manifest['digest']})")
    return Path(out)


def unpack_zoo(fixture: Path, staging: Path) -> dict:
    """Write the fixture's zoo into ``staging`` with float32 weights; returns the fixture's manifest.
    A file that does not match its recorded hash (a damaged checkout) is named, and nothing is kept."""
    from safetensors.torch import load_file, save_file

    manifest = read_manifest(fixture, FIXTURE_MANIFEST)
    assert manifest is not None  # fixture_for found it
    for relative, digest in manifest["files"].items():
        path = fixture / relative
        if not path.is_file() or _sha256(path) != digest:
            raise UserError(
                f"{path}: missing or not the file the fixture recorded; restore it (git checkout -- "
                f"{fixture}) or train the zoo (mergesearch zoo build --train)"
            )
    for member in MEMBERS:
        target = staging / member.name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(fixture / member.name, target, ignore=shutil.ignore_patterns(WEIGHTS))
        tensors = load_file(fixture / member.name / WEIGHTS)
        widened = {name: dithered(t, f"{member.name}/{name}") for name, t in sorted(tensors.items())}
        save_file(widened, target / WEIGHTS, metadata={"format": "pt"})
    assert set(manifest["experts"]) == set(EXPERTS)
    return manifest


# A weight moves by at most this share of itself: under half of float16's smallest relative step
# (2^-11), so the unpacked weight still rounds to the stored one.
DITHER = 2.0**-13


def dithered(half: torch.Tensor, name: str) -> torch.Tensor:
    """A float16 tensor widened to float32, each value moved by a seeded share of itself, under half a
    float16 step. Why: float16 keeps 11 bits, so an expert's task vector (expert - base) is quantised and
    many of its entries tie in magnitude, where a trained zoo has almost none; TIES and Breadcrumbs trim
    by magnitude, and at a tie which entry survives is a sort's choice (mergekit's is unstable). The
    shift restores distinct magnitudes. It is the same on every machine: numpy's PCG64 stream from a seed
    made of the tensor's name, and one float32 multiply per value (exactly rounded, no sums)."""
    import numpy as np

    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    shares = np.random.default_rng(seed).random(half.numel(), dtype=np.float32) * 2 - 1
    scale = torch.from_numpy(1 + np.float32(DITHER) * shares).reshape(half.shape)
    return half.to(torch.float32) * scale
