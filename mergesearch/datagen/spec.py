"""DataSpec: what a data-generation run makes, validated once at the edge (``data_specs/*.yaml``).

Model references in a spec (a folder, ``zoo:<member>``, ``smollm2``) are resolved at the edge too: the
CLI and the Ray entrypoint call ``spec.with_models(resolve)`` before building, so the data layer only
ever loads folders.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from mergesearch.config import (
    ExpertName,
    ExpertSpec,
    Frozen,
    JudgeConfig,
    Name,
    RunnerConfig,
    Unit,
    registered,
)
from mergesearch.data.near_dup import GROUPING_VERSION
from mergesearch.errors import UserError
from mergesearch.registry import GENERATORS, REFUSAL_DETECTORS
from mergesearch.taxonomy import CATEGORY_BY_NAME, check_category

QUESTION_FORMATS = ("multiple_choice", "short_answer")


class SeedExample(Frozen):
    """A few-shot example for the LLM generator: a question, and for multiple choice its options and key."""

    question: str = Field(min_length=1)
    choices: list[str] | None = None
    answer: str = Field(min_length=1)


class ModelRunner(Frozen):
    """What runs a data-generation model: a backend from the registry with its device and engine settings,
    and, with `--ray`, each actor's GPU share (an actor holds one model)."""

    backend: RunnerConfig = Field(default_factory=RunnerConfig)
    """The backend (`hf`, `vllm`, a plug-in's), its device and engine settings; an unset `dtype` is
    bfloat16 on a GPU, float32 on the CPU."""
    gpus: Unit = 0.0
    """With `--ray`: the GPU share of each actor that holds a model."""

    @property
    def on_gpu(self) -> bool:
        return self.gpus > 0 or self.backend.device == "cuda"

    def default_dtype(self) -> str:
        return "bfloat16" if self.on_gpu else "float32"

    def engine(self) -> RunnerConfig:
        """``backend`` with its dtype settled."""
        return self.backend.model_copy(update={"dtype": self.backend.dtype or self.default_dtype()})


class GeneratorSpec(ModelRunner):
    """Who writes the prompts: ``llm`` (a chat model: the product's own generator) or another registered
    generator, such as the zoo's ``template`` (the toy zoo's language, offline)."""

    kind: str = "llm"
    model: str | None = None  # llm: a model folder, zoo:<member> or smollm2 (resolved by with_models)
    temperature: float = Field(default=0.9, ge=0.0, le=2.0)
    items_per_request: int = Field(default=8, ge=1, le=50)
    requests_per_attempt: int = Field(default=4, ge=1)
    max_attempts: int = Field(default=6, ge=1, description="per quota: the retry budget")
    max_new_tokens: int = Field(default=512, ge=16)

    _known_kind = field_validator("kind")(lambda cls, kind: registered(GENERATORS, kind))


class AlignmentSpec(Frozen):
    """Harmful requests: how many per harm category (taxonomy names; ``all`` for every category)."""

    categories: list[str] | Literal["all"] = "all"
    per_category: int = Field(default=10, ge=1)

    @field_validator("categories")
    @classmethod
    def _known(cls, categories: list[str] | str) -> list[str] | str:
        if categories == "all":
            return categories
        if not categories:
            raise ValueError("empty category list (name harm categories, or `all`)")
        for name in categories:
            try:
                check_category(name)
            except UserError as err:  # pydantic reports ValueErrors with the field's path
                raise ValueError(str(err)) from None
        return categories

    def category_names(self) -> list[str]:
        return list(CATEGORY_BY_NAME) if self.categories == "all" else list(self.categories)


class TaskSpec(Frozen):
    """Questions of one expert's domain, and the expert that answers them."""

    domain: Name
    format: Literal[QUESTION_FORMATS] = "multiple_choice"  # type: ignore[valid-type]
    count: int = Field(default=20, ge=1)
    expert: ExpertName
    description: str = ""  # llm generator: what the domain covers
    examples: list[SeedExample] = []  # llm generator: few-shot seeds


class AnswerSpec(ModelRunner):
    """Experts answer every prompt; the judge decides which alignment answers count as refusals. The
    experts run as `backend` says, each alone, the guard as `judge` says."""

    experts: list[ExpertSpec] = Field(min_length=1)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    task_correct_only: bool = True
    batch_size: int = Field(default=32, ge=1)
    max_new_tokens: int = Field(default=24, ge=1)
    refusal_detector: str = "refusal"
    """What reads an expert's reply to a benign request as a refusal (such replies are not kept):
    `refusal` (the refusal patterns) or a plug-in's detector."""

    _known_detector = field_validator("refusal_detector")(
        lambda cls, name: registered(REFUSAL_DETECTORS, name)
    )

    def judge_engine(self) -> JudgeConfig:
        """The judge's settings, its guard model's dtype settled as the experts' is."""
        return self.judge.model_copy(update={"dtype": self.judge.dtype or self.default_dtype()})


class SplitSpec(Frozen):
    heldout_share: Unit = 0.2
    near_duplicate_threshold: float = Field(default=0.7, gt=0.0, le=1.0, description="word-bigram Jaccard")


class DataSpec(Frozen):
    name: Name
    seed: int = 0
    generator: GeneratorSpec = Field(default_factory=GeneratorSpec)
    alignment: AlignmentSpec | None = AlignmentSpec()
    benign: int = Field(default=0, ge=0, description="harmless requests, for the over-refusal objective")
    tasks: list[TaskSpec] = []
    answer: AnswerSpec | None = None
    split: SplitSpec = SplitSpec()

    def digest(self) -> str:
        """Content hash of everything that determines the rows (the spec, and the version of the
        near-duplicate grouping that assigns splits): recorded in the dataset card."""
        payload = {"spec": self.model_dump(mode="json"), "grouping": GROUPING_VERSION}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def with_models(
        self, resolve: Callable[[str, str], Path], generating: bool = True, answering: bool = True
    ) -> DataSpec:
        """A copy whose model references are folders, ``resolve(ref, field)`` giving each folder:
        ``generator.model`` (when ``generating``), ``answer.experts.<name>`` and ``answer.judge.model``
        (when ``answering``). ``field`` names the reference in a one-line error; the sections not asked
        for are left as they are (a prompt set never loads the experts)."""
        update: dict[str, object] = {}
        if generating and self.generator.model:
            folder = resolve(self.generator.model, "generator.model")
            update["generator"] = self.generator.model_copy(update={"model": str(folder)})
        if answering and self.answer is not None:
            experts = [
                e.model_copy(update={"path": str(resolve(e.path, f"answer.experts.{e.name}"))})
                for e in self.answer.experts
            ]
            judge = self.answer.judge
            if judge.model:
                judge = judge.model_copy(update={"model": str(resolve(judge.model, "answer.judge.model"))})
            update["answer"] = self.answer.model_copy(update={"experts": experts, "judge": judge})
        return self.model_copy(update=update)
