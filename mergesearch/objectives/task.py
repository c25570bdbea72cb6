"""Task accuracy: multiple choice by log-likelihood with lm-eval's ``acc`` / ``acc_norm``, and answer
containment for short answers (``contains_answer``: the answer appears as a whole word in the reply).

``acc``: the option with the highest log p(option | context) is the model's answer. ``acc_norm``: the same
after dividing each log-likelihood by the option's length in characters (``len`` of the option string, as
lm-eval's ``acc_norm``; lm-eval's ``acc_bytes`` is the one that divides by UTF-8 bytes). Ties go to the
first option (``numpy.argmax``). The context is the question rendered with the model's chat template; the
option is the assistant's reply, scored by the backend's ``loglikelihood`` with lm-eval's tokenisation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from mergesearch.backends.base import Backend


@dataclass(frozen=True)
class ChoiceItem:
    prompt: str
    choices: tuple[str, ...]
    answer: int  # index of the correct option


@dataclass(frozen=True)
class ShortAnswerItem:
    prompt: str
    answer: str


def _normalized(text: str) -> str:
    """Lower case, digits a word-level tokenizer split apart rejoined ("1 2 3" -> "123"), runs of
    whitespace as one space, no surrounding whitespace."""
    text = re.sub(r"(?<=\d)\s+(?=\d)", "", text.lower())
    return re.sub(r"\s+", " ", text).strip()


def contains_answer(response: str, answer: str) -> bool:
    """Whether the answer appears in the response as a whole word (or words): a containment test, not an
    exact match. Both are compared after ``_normalized`` (case, whitespace and split digits do not count),
    and the answer must not touch a letter, digit or underscore on either side: "the answer is 42 ." contains
    "42", "420" and "x42" do not; punctuation is a boundary, so "42.5" and "-42" do contain "42". An empty
    answer is never contained."""
    key = _normalized(answer)
    return bool(key) and re.search(rf"(?<!\w){re.escape(key)}(?!\w)", _normalized(response)) is not None


@dataclass(frozen=True)
class AnswerStated:
    """Short answers' early exit: ``contains_answer`` is settled once the reply states the answer with a
    character after it that is not part of a word ("= 42." or "42 apples"). No later text can undo that:
    a bare "42" could still grow into "420", and "42 " into "42 0", but the normalised reply has already
    joined split digits and dropped a trailing space. A reply that never states it runs to its length,
    so the verdict equals full-length judging's by construction. ``max_tokens``: the reply also stops
    there, stated or not (a length chosen where verdicts agree with full-length ones: measured by
    ``benchmarks/fitness_efficiency.py``)."""

    answer: str
    max_tokens: int | None = None
    reads_text: ClassVar[bool] = True  # checked as tokens arrive (an HF backend)

    def __call__(self, response: str, tokens: int) -> bool:
        key = _normalized(self.answer)
        return bool(key) and re.search(rf"(?<!\w){re.escape(key)}(?=\W)", _normalized(response)) is not None


def choice_hits(backend: Backend, items: Sequence[ChoiceItem]) -> list[tuple[bool, bool]]:
    """Per item: did ``acc`` pick the right option, and did ``acc_norm``? As lm-eval's
    ``ConfigurableTask.process_results`` decides them for a multiple-choice task."""
    requests = [(backend.render(item.prompt), choice) for item in items for choice in item.choices]
    scores = iter(ll for ll, _ in backend.loglikelihood(requests))
    hits = []
    for item in items:
        lls = np.array([next(scores) for _ in item.choices])
        lengths = np.array([float(len(choice)) for choice in item.choices])  # characters, not bytes
        with np.errstate(divide="ignore", invalid="ignore"):  # an empty option: as lm-eval, -inf or NaN
            normed = int(np.argmax(lls / lengths)) == item.answer
        hits.append((int(np.argmax(lls)) == item.answer, normed))
    return hits


def choice_accuracy(backend: Backend, items: Sequence[ChoiceItem]) -> dict[str, float]:
    """``acc`` and ``acc_norm`` over ``items`` (NaN when there are none)."""
    if not items:
        return {"acc": float("nan"), "acc_norm": float("nan")}
    hits = choice_hits(backend, items)
    return {"acc": sum(a for a, _ in hits) / len(items), "acc_norm": sum(n for _, n in hits) / len(items)}


def contains_answer_rate(responses: Sequence[str], items: Sequence[ShortAnswerItem]) -> float:
    """The share of responses that contain their item's answer (``contains_answer``); NaN without items."""
    if not items:
        return float("nan")
    return sum(contains_answer(r, item.answer) for r, item in zip(responses, items)) / len(items)
