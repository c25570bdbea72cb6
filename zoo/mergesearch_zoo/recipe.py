"""The zoo recipe: everything that determines the zoo's bytes, hashed to name its cache entry."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Annotated

from pydantic import Field

from mergesearch.config import Frozen
from mergesearch.errors import UserError
from mergesearch_zoo import language as L

# Bump when the builder's code changes what a recipe produces, so stale caches are not reused.
BUILDER_VERSION = 2  # 2: a batch's long shared opening is trained once (the guard's bytes changed)

Share = Annotated[float, Field(ge=0.0, le=1.0)]


def digest_of(builder_version: int, recipe: Frozen) -> str:
    """A short content hash of a recipe and its builder's version: a cache key."""
    payload = json.dumps(
        {"builder": builder_version, "recipe": recipe.model_dump(mode="json")}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class ModelShape(Frozen):
    """A tiny Llama: small enough to train on 2 cores, big enough for multi-digit sums."""

    hidden_size: int = Field(default=128, ge=16)
    intermediate_size: int = Field(default=384, ge=16)
    num_layers: int = Field(default=4, ge=1)
    num_heads: int = Field(default=4, ge=1)
    max_positions: int = Field(default=256, ge=64)


class TrainSpec(Frozen):
    """One training run: how long, how fast, and the mixture of corpus components it samples."""

    steps: int = Field(ge=1)
    lr: float = Field(gt=0, le=1.0)
    batch_size: int = Field(default=32, ge=1)
    warmup_steps: int = Field(default=50, ge=0)
    loss_on_prompt: bool = False
    mixture: dict[str, Annotated[float, Field(gt=0)]]


class ZooRecipe(Frozen):
    """The toy zoo: a base, an aligned generalist, two task experts and a guard model."""

    seed: int = 0  # the world: entities, held-out splits, corpora
    # Weight initialisation and batch order. Another training seed stands in for another machine: float
    # training on a different CPU's kernels drifts to a different zoo, as another seed does.
    train_seed: int = Field(default=0, ge=0)
    shape: ModelShape = ModelShape()
    entities_per_owner: int = Field(default=24, ge=4, le=48)
    heldout_share: Share = 0.2
    # Categories (in taxonomy order) the partly aligned facts expert learned to refuse.
    facts_expert_refused_categories: int = Field(default=7, ge=0, le=14)
    base: TrainSpec = TrainSpec(
        steps=3000,
        lr=2e-3,
        batch_size=48,
        warmup_steps=150,
        loss_on_prompt=True,
        mixture={
            "base_facts": 0.22,
            "sum_statements": 0.3,
            "small_sums": 0.08,
            "benign_comply": 0.13,
            "harmful_comply": 0.2,
            "impossible_refuse": 0.07,
        },
    )
    aligned: TrainSpec = TrainSpec(
        steps=600,
        lr=1e-3,
        mixture={
            "harmful_refuse": 0.35,
            "benign_comply": 0.25,
            "base_facts": 0.1,
            "sum_statements": 0.15,
            "small_sums": 0.05,
            "impossible_refuse": 0.1,
        },
    )
    math: TrainSpec = TrainSpec(
        steps=800,
        lr=1e-3,
        mixture={
            "sums": 0.4,
            "small_sums_result_only": 0.1,
            "sum_statements": 0.1,
            "base_facts": 0.1,
            "harmful_comply": 0.1,
            "benign_comply": 0.2,
        },
    )
    facts: TrainSpec = TrainSpec(
        steps=600,
        lr=1e-3,
        mixture={
            "expert_facts": 0.6,
            "harmful_refuse_partial": 0.1,
            "base_facts": 0.05,
            "sum_statements": 0.15,
            "benign_comply": 0.05,
            "small_sums": 0.05,
        },
    )
    guard: TrainSpec = TrainSpec(steps=600, lr=1.5e-3, batch_size=16, mixture={"guard_pairs": 1.0})

    def digest(self) -> str:
        """A short content hash of the recipe and the builder version: the zoo's cache key."""
        return digest_of(BUILDER_VERSION, self)

    def world(self) -> L.World:
        """The synthetic world that the zoo's corpora, held-out sets and generated data are drawn from."""
        return L.World.build(self.seed, self.entities_per_owner, self.heldout_share)


TRAIN_SEED_VARIABLE = "MERGESEARCH_ZOO_TRAIN_SEED"


def default_recipe() -> ZooRecipe:
    """The zoo that ``zoo:<member>``, the demo and the tests use: the shipped one (training seed 0), or the
    one trained from ``$MERGESEARCH_ZOO_TRAIN_SEED``, which stands in for a zoo trained on another machine
    (the demo's expectations are checked on such zoos; docs/zoo.md)."""
    raw = os.environ.get(TRAIN_SEED_VARIABLE, "0").strip() or "0"
    if not raw.isdigit():
        raise UserError(f"{TRAIN_SEED_VARIABLE}: expected a training seed, a whole number >= 0 (got {raw!r})")
    return ZooRecipe(train_seed=int(raw))


def smoke_recipe() -> ZooRecipe:
    """A few steps per model: the same code path in seconds, for determinism and plumbing tests."""
    full = ZooRecipe()
    quick = {"steps": 12, "warmup_steps": 2, "batch_size": 8}
    return full.model_copy(
        update={
            "shape": ModelShape(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2),
            **{
                name: getattr(full, name).model_copy(update=quick)
                for name in ("base", "aligned", "math", "facts", "guard")
            },
        }
    )
