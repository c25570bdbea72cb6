"""A Llama Guard 3 style judge at SmolLM2 scale: SmolLM2-135M-Instruct fine-tuned to give the verdict.

There is no guard model reachable offline at this scale, and early exit with a guard judge has to be
measured on the answers a search actually judges (``benchmarks/fitness_efficiency.py``'s agreement part).
So the guard learns from those answers: every model of the SmolLM2 family (``answering``) answers the
family's *training* prompts (AdvBench behaviours, benign and risky-but-benign requests) at full length
(``answer_tokens``, longer than a search generates), and each (prompt, answer) pair is labelled as Llama
Guard 3 would be asked to: a harmful request that the answer does not refuse is ``unsafe`` with its
category's code, anything else ``safe``. The refusal rules (``judges/refusal.py``) read whether an answer
refuses, so the guard learns what they see on whole answers, in Llama Guard's format and prompt (its chat
template writes the policy, as Meta's do). Search and held-out prompts are never trained on.

Training follows the family's recipe (``smollm2_family``): top layers only, the frozen stack's output and
the policy's long shared opening computed once. Cached by a hash of this recipe and the family's.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Collection
from pathlib import Path

import torch
from pydantic import Field
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from mergesearch.config import Frozen
from mergesearch.errors import UserError
from mergesearch.io import atomic_dir, atomic_write_text
from mergesearch.runtime import cache_root
from mergesearch.taxonomy import primary_code
from mergesearch_zoo import family_data as D
from mergesearch_zoo.build import torch_threads
from mergesearch_zoo.corpus import Example, guard_example
from mergesearch_zoo.layout import read_manifest, refuse_foreign_folder
from mergesearch_zoo.recipe import TrainSpec, digest_of
from mergesearch_zoo.smollm2_family import (
    FamilyRecipe,
    Log,
    build_smollm2_family,
    family_data,
    freeze_below,
    read_family_recipe,
)
from mergesearch_zoo.tokenizer import CHATML_TURN, guard_chat_template
from mergesearch_zoo.train import FrozenStackLoss, train

GUARD_BUILDER_VERSION = 1
MANIFEST = "guard.json"
Pair = tuple[str, str, str]  # prompt, answer, verdict


class GuardRecipe(Frozen):
    """Everything besides the family that determines the guard's bytes (with the family's: its cache key)."""

    seed: int = 0
    answering: tuple[str, ...] = ("base", "aligned", "arithmetic", "knowledge")
    answer_tokens: int = Field(default=48, ge=4)
    trainable_top_layers: int = Field(default=8, ge=1)
    # Components by verdict: compliant answers to harmful requests, refusals of them, benign exchanges.
    train: TrainSpec = TrainSpec(
        steps=160,
        lr=1e-4,
        batch_size=16,
        warmup_steps=10,
        mixture={"unsafe": 0.4, "refused": 0.3, "benign": 0.3},
    )

    def digest(self, family: FamilyRecipe) -> str:
        return digest_of(GUARD_BUILDER_VERSION, _Keyed(guard=self, family=family.digest()))


class _Keyed(Frozen):
    guard: GuardRecipe
    family: str


def smoke_guard_recipe() -> GuardRecipe:
    """Two steps on short answers of two models: the whole build path in a minute, for tests."""
    full = GuardRecipe()
    quick = {"steps": 2, "warmup_steps": 1, "batch_size": 4}
    return full.model_copy(
        update={
            "answering": ("base", "aligned"),
            "answer_tokens": 6,
            "trainable_top_layers": 2,
            "train": full.train.model_copy(update=quick),
        }
    )


def guard_dir(recipe: GuardRecipe, family: FamilyRecipe) -> Path:
    return cache_root() / "smollm2_guard" / recipe.digest(family)


def verdict(category: str | None, refused: bool) -> str:
    """Llama Guard 3's verdict on an answer to a request of harm ``category`` (None: a benign request)."""
    return f"unsafe\n{primary_code(category)}" if category and not refused else "safe"


def labelled_answers(family: Path, data: D.FamilyData, recipe: GuardRecipe, log: Log) -> list[Pair]:
    """Each answering model's answers to the family's training prompts, labelled; each pair once."""
    from mergesearch.backends.hf import HFBackend
    from mergesearch.judges.refusal import RefusalJudge

    prompts = [*data.harmful_train, *data.benign_train]
    judge = RefusalJudge()
    pairs: dict[tuple[str, str], str] = {}
    for name in recipe.answering:
        log(f"smollm2 guard: {name} answers {len(prompts)} training prompts")
        answers = HFBackend.from_pretrained(family / name, device="cpu").generate(
            prompts, max_new_tokens=recipe.answer_tokens
        )
        for prompt, answer, refused in zip(prompts, answers, judge.refusals(answers), strict=True):
            pairs.setdefault((prompt, answer), verdict(data.harmful_categories.get(prompt), refused))
    return [(prompt, answer, label) for (prompt, answer), label in pairs.items()]


def components(pairs: list[Pair], tokenizer, harmful: Collection[str]) -> dict[str, list[Example]]:
    """The training components ``GuardRecipe.train``'s mixture names, as tokenised guard prompts
    (``harmful``: the harmful requests, whose safe answers are refusals)."""
    parts: dict[str, list[Example]] = {"unsafe": [], "refused": [], "benign": []}
    for prompt, answer, label in pairs:
        part = "unsafe" if label != "safe" else "refused" if prompt in harmful else "benign"
        parts[part].append(guard_example(tokenizer, prompt, answer, label))
    return parts


def trainable_mixture(spec: TrainSpec, parts: dict[str, list[Example]], log: Log) -> TrainSpec:
    """``spec`` without the components no answer fell into (a smoke build's barely trained models may
    refuse nothing); a guard needs both verdicts to learn from."""
    kept = {name: share for name, share in spec.mixture.items() if parts.get(name)}
    if "unsafe" not in kept or set(kept) == {"unsafe"}:
        raise UserError(
            f"smollm2 guard: no {'unsafe' if 'unsafe' not in kept else 'safe'} answer to learn from"
        )
    for name in sorted(set(spec.mixture) - set(kept)):
        log(f"smollm2 guard: no {name} answers; trained without them")
    return spec.model_copy(update={"mixture": kept})


def is_built(folder: Path, recipe: GuardRecipe, family: FamilyRecipe) -> bool:
    manifest = read_manifest(folder, MANIFEST)
    return bool(manifest) and manifest.get("digest") == recipe.digest(family)


def build_smollm2_guard(
    recipe: GuardRecipe,
    family: Path | None = None,
    out: Path | None = None,
    log: Log = print,
) -> Path:
    """Build (or find cached) the guard on ``family`` (a built family folder; by default the default
    recipe's, built first when it is not)."""
    family = Path(family) if family else build_smollm2_family(FamilyRecipe(), log=log)
    family_recipe = read_family_recipe(family)
    out = Path(out or guard_dir(recipe, family_recipe))
    if is_built(out, recipe, family_recipe):
        log(f"smollm2 guard: cached at {out} (recipe {recipe.digest(family_recipe)})")
        return out
    refuse_foreign_folder(out, MANIFEST, "a SmolLM2 guard folder")
    started = time.monotonic()
    data = family_data(family_recipe)
    pairs = labelled_answers(family, data, recipe, log)
    base = family / "base"
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = guard_chat_template(CHATML_TURN)
    parts = components(pairs, tokenizer, data.harmful_categories.keys())
    spec = trainable_mixture(recipe.train, parts, log)
    layers = AutoConfig.from_pretrained(base).num_hidden_layers
    with torch_threads(2), atomic_dir(out) as staging:
        log(f"smollm2 guard: training ({recipe.train.steps} steps)")
        torch.manual_seed(recipe.seed)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        freeze_below(model, recipe.trainable_top_layers)
        loss = FrozenStackLoss(frozen=layers - recipe.trainable_top_layers)
        final_loss = train(model, parts, spec, recipe.seed, tokenizer.pad_token_id, log, "guard", loss)
        model.generation_config.do_sample = False
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        manifest = {
            "recipe": recipe.model_dump(mode="json"),
            "family": family_recipe.digest(),
            "digest": recipe.digest(family_recipe),
            "pairs": dict(Counter(label.split()[0] for _, _, label in pairs)),
            "components": {name: len(examples) for name, examples in parts.items()},
            "final_loss": final_loss,
            "build_seconds": round(time.monotonic() - started, 1),
        }
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    log(f"smollm2 guard: built in {time.monotonic() - started:.0f} s at {out}")
    return out
