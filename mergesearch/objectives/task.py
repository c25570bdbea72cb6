"""Task accuracy: multiple choice by log-likelihood with lm-eval's ``acc`` / ``acc_norm`` semantics, and
exact match for short answers.

``acc``: the option with the highest log p(option | context) is the model's answer. ``acc_norm``: the same
after dividing each log-likelihood by the option's length in bytes (lm-eval's ``acc_norm``). The context is
the question rendered with the model's chat template; the option is the assistant's reply.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ChoiceItem:
    prompt: str
    choices: tuple[str, ...]
    answer: int  # index of the correct option


@dataclass(frozen=True)
class ShortAnswerItem:
    prompt: str
    answer: str


def short_answer_correct(response: str, answer: str) -> bool:
    """The answer appears as a whole word in the response (digits split by a word-level tokenizer rejoined)."""
    text = re.sub(r"(?<=\d)\s+(?=\d)", "", response.lower())
    return re.search(rf"(?<!\w){re.escape(answer.lower().strip())}(?!\w)", text) is not None


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # first maximum, as numpy's argmax in lm-eval


def choice_accuracy(backend, items: Sequence[ChoiceItem]) -> dict[str, float]:  # noqa: ANN001 - any backend with render/loglikelihood
    """``acc`` and ``acc_norm`` over ``items`` (NaN when there are none)."""
    if not items:
        return {"acc": float("nan"), "acc_norm": float("nan")}
    requests = [(backend.render(item.prompt), choice) for item in items for choice in item.choices]
    scores = iter(ll for ll, _ in backend.loglikelihood(requests))
    acc = acc_norm = 0
    for item in items:
        lls = [next(scores) for _ in item.choices]
        acc += _argmax(lls) == item.answer
        acc_norm += _argmax([ll / max(1, len(c.encode())) for ll, c in zip(lls, item.choices)]) == item.answer
    return {"acc": acc / len(items), "acc_norm": acc_norm / len(items)}


def exact_match(responses: Sequence[str], items: Sequence[ShortAnswerItem]) -> float:
    if not items:
        return float("nan")
    return sum(short_answer_correct(r, item.answer) for r, item in zip(responses, items)) / len(items)
