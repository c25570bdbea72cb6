"""The 16-expert toy pool: the zoo's two skill experts and its aligned generalist among 13 distractors.

A user's pool holds a dozen fine-tunes of one base, most irrelevant or harmful for the target. The
distractors here are of both kinds: fine-tuned from the base for a few hundred steps on data that does
not serve the target (harmful compliance, benign chatter, base facts, sum statements, the guard's
format...), or derived from the zoo (seeded noise, the aligned expert's task vector negated: a model
that unlearns refusals). Every trained distractor's task vector is rescaled to the real experts' mean
norm, noise to their mean norm per tensor, and the negated one keeps the aligned expert's norm, so no
distractor gives itself away by its size: a search must find the real experts by what merging does.

Cached by a hash of the pool recipe and the zoo's; members are folders of one pool folder (the real
experts are links to the zoo's), ``zoo_pool:<member>`` names one and ``zoo_pool:*`` all of them
(``pools/toy16.yaml``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from mergesearch.config import Frozen
from mergesearch.io import atomic_dir, atomic_write_text
from mergesearch.runtime import cache_root
from mergesearch_zoo.build import build_zoo, deterministic_torch, zoo_corpus
from mergesearch_zoo.layout import EXPERTS, read_manifest
from mergesearch_zoo.recipe import TrainSpec, ZooRecipe, digest_of
from mergesearch_zoo.train import train

POOL_BUILDER_VERSION = 1
MANIFEST = "pool.json"
Log = Callable[[str], None]


class Distractor(Frozen):
    """``trained``: fine-tuned from the base on ``mixture`` (corpus components, ``zoo/corpus.py``);
    ``noise``: a seeded random task vector; ``negated``: ``of``'s task vector with its sign flipped."""

    kind: Literal["trained", "noise", "negated"]
    role: str
    mixture: dict[str, float] = {}
    of: str | None = None


def _trained(role: str, **mixture: float) -> Distractor:
    return Distractor(kind="trained", role=role, mixture=mixture)


class PoolRecipe(Frozen):
    """What determines the pool's bytes besides the zoo: each distractor and how it is trained."""

    zoo: ZooRecipe = ZooRecipe()
    seed: int = 100
    steps: int = Field(default=300, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    distractors: dict[str, Distractor] = {
        "comply_harm": _trained("complies with harmful requests", harmful_comply=1.0),
        "comply_all": _trained("complies with anything", harmful_comply=0.5, benign_comply=0.5),
        "harm_trivia": _trained("harmful compliance + base facts", harmful_comply=0.5, base_facts=0.5),
        "chatter": _trained("benign chatter only", benign_comply=1.0),
        "trivia": _trained("the base's facts only (no skill the target asks for)", base_facts=1.0),
        "statements": _trained("sum statements as plain text, no chat", sum_statements=1.0),
        "tiny_sums": _trained("one-digit sums in another answer format", small_sums=1.0),
        "impossible": _trained("refuses impossible requests only", impossible_refuse=1.0),
        "guard_format": _trained("the guard's verdict format (another task)", guard_pairs=1.0),
        "trivia_chatter": _trained("base facts + benign chatter", base_facts=0.5, benign_comply=0.5),
        "noise_a": Distractor(kind="noise", role="seeded noise"),
        "noise_b": Distractor(kind="noise", role="seeded noise"),
        "anti_aligned": Distractor(kind="negated", role="the aligned expert undone", of="aligned"),
    }

    def digest(self) -> str:
        return digest_of(POOL_BUILDER_VERSION, self)


def default_pool_dir(recipe: PoolRecipe) -> Path:
    return cache_root() / "zoo_pool" / recipe.digest()


def pool_members(recipe: PoolRecipe) -> tuple[str, ...]:
    return (*EXPERTS, *recipe.distractors)


def is_built(folder: Path, recipe: PoolRecipe) -> bool:
    manifest = read_manifest(folder, MANIFEST)
    return bool(manifest) and manifest.get("digest") == recipe.digest()


def build_pool(recipe: PoolRecipe, out: Path | None = None, log: Log = print) -> Path:
    """Build (or reuse) the pool; returns its folder (one sub-folder per member)."""
    out = Path(out) if out else default_pool_dir(recipe)
    if is_built(out, recipe):
        return out
    zoo = build_zoo(recipe.zoo, log=log)
    started = time.monotonic()
    with atomic_dir(out) as staging, deterministic_torch():
        norms = _build_into(staging, zoo, recipe, log)
        manifest = {
            "digest": recipe.digest(),
            "zoo": str(zoo),
            "members": {
                **{name: {"kind": "expert"} for name in EXPERTS},
                **{name: d.model_dump(mode="json") for name, d in recipe.distractors.items()},
            },
            "task_vector_norms": norms,
            "build_seconds": round(time.monotonic() - started, 1),
        }
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log(f"zoo pool: built in {time.monotonic() - started:.0f} s at {out}")
    return out


def _norm(tau: dict[str, torch.Tensor]) -> float:
    return float(sum(float(t.float().norm() ** 2) for t in tau.values()) ** 0.5)


def _build_into(staging: Path, zoo: Path, recipe: PoolRecipe, log: Log) -> dict[str, float]:
    base = load_file(str(zoo / "base" / "model.safetensors"))
    taus = {}
    for name in EXPERTS:
        os.symlink(zoo / name, staging / name, target_is_directory=True)
        expert = load_file(str(zoo / name / "model.safetensors"))
        taus[name] = {k: expert[k] - base[k] for k in base}
    target = sum(_norm(t) for t in taus.values()) / len(taus)
    per_tensor = {k: sum(float(t[k].norm()) for t in taus.values()) / len(taus) for k in base}
    tokenizer, _, components = zoo_corpus(recipe.zoo)
    norms = {name: round(_norm(tau), 3) for name, tau in taus.items()}
    for index, (name, spec) in enumerate(recipe.distractors.items()):
        seed = recipe.seed + index
        if spec.kind == "trained":
            log(f"zoo pool: training {name} ({recipe.steps} steps) - {spec.role}")
            model = LlamaForCausalLM.from_pretrained(zoo / "base", dtype=torch.float32, use_safetensors=True)
            train_spec = TrainSpec(steps=recipe.steps, lr=recipe.lr, warmup_steps=20, mixture=spec.mixture)
            torch.manual_seed(seed)
            train(model, components, train_spec, seed, tokenizer.pad_token_id, lambda _: None, name)
            tau = {k: v.detach() - base[k] for k, v in model.state_dict().items() if k in base}
            tau = {k: t * (target / _norm(tau)) for k, t in tau.items()}
        elif spec.kind == "noise":
            generator = torch.Generator().manual_seed(seed)
            noise = {k: torch.randn(b.shape, generator=generator) for k, b in base.items()}
            tau = {k: n * (per_tensor[k] / max(float(n.norm()), 1e-12)) for k, n in noise.items()}
        else:
            tau = {k: -t for k, t in taus[str(spec.of)].items()}
        norms[name] = round(_norm(tau), 3)
        _save_member(zoo / "base", {k: base[k] + tau[k] for k in base}, staging / name)
    return norms


def _save_member(base_folder: Path, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """The base's config and tokenizer files with the member's weights."""
    folder.mkdir()
    for file in base_folder.iterdir():
        if file.name != "model.safetensors":
            shutil.copy(file, folder / file.name)
    weights = {k: t.contiguous() for k, t in tensors.items()}
    save_file(weights, str(folder / "model.safetensors"), {"format": "pt"})
