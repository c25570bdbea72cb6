"""One model's safety, over-refusal and task accuracy, overall and per category (``mergesearch eval``).

The same measures the search's fitness uses (``evaluate.score_model``): safety is the judge's share of safe
answers to harmful prompts, over-refusal the refusal patterns' share of refused benign prompts (whoever
judges safety), task accuracy lm-eval's ``acc`` per multiple-choice item and answer containment for short
answers. Here they are kept per category, so a user sees *which* harms a merge lets through.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mergesearch.backends.base import Backend
from mergesearch.judges.base import Judge, refusal_detector
from mergesearch.objectives.evaluate import answer_parts
from mergesearch.objectives.task import ChoiceItem, ShortAnswerItem, choice_hits, contains_answer


@dataclass(frozen=True)
class CategorisedData:
    """Evaluation prompts grouped by category (harm category, task domain); any part may be empty."""

    harmful: Mapping[str, Sequence[str]] = field(default_factory=dict)
    benign: Mapping[str, Sequence[str]] = field(default_factory=dict)
    choice: Mapping[str, Sequence[ChoiceItem]] = field(default_factory=dict)
    short: Mapping[str, Sequence[ShortAnswerItem]] = field(default_factory=dict)
    source: str = ""  # where the rows came from (a dataset and its split, or a prompt set)

    def size(self) -> int:
        return sum(
            len(v) for part in (self.harmful, self.benign, self.choice, self.short) for v in part.values()
        )


def _flat(groups: Mapping[str, Sequence[Any]]) -> tuple[list[str], list[Any]]:
    """Categories and items, one entry per item, in a fixed order."""
    pairs = [(category, item) for category in sorted(groups) for item in groups[category]]
    return [c for c, _ in pairs], [i for _, i in pairs]


def _rates(categories: Sequence[str], hits: Sequence[bool]) -> dict[str, Any]:
    """The overall share of hits and each category's, with counts."""
    by: dict[str, list[bool]] = {}
    for category, hit in zip(categories, hits):
        by.setdefault(category, []).append(bool(hit))
    per = {c: {"rate": sum(v) / len(v), "n": len(v)} for c, v in sorted(by.items())}
    return {"rate": sum(hits) / len(hits) if hits else float("nan"), "n": len(hits), "by_category": per}


def evaluate_model(
    backend: Backend,
    judge: Judge,
    data: CategorisedData,
    max_new_tokens: int = 32,
    refusals: str = "refusal",
) -> dict[str, Any]:
    """Every measure ``data`` supports, overall and per category, with where the time went; benign
    replies read as refusals by the detector ``refusals`` names (``fitness.refusal_detector``)."""
    report: dict[str, Any] = {}
    timings: dict[str, float] = {}
    started = time.perf_counter()
    harm_categories, harmful = _flat(data.harmful)
    benign_categories, benign = _flat(data.benign)
    short_categories, short = _flat(data.short)
    harmful_replies, benign_replies, short_replies = answer_parts(
        backend, [harmful, benign, [item.prompt for item in short]], max_new_tokens
    )
    timings["generate"] = time.perf_counter() - started

    started = time.perf_counter()
    if harmful:
        verdicts = judge.assess(list(zip(harmful, harmful_replies)))
        report["safety"] = _rates(harm_categories, verdicts.safe) | {"judge_unparsed": verdicts.unparsed}
    if benign:
        report["over_refusal"] = _rates(
            benign_categories, refusal_detector(refusals).refusals(benign_replies)
        )
    timings["judge"] = time.perf_counter() - started

    started = time.perf_counter()
    choice_categories, choice = _flat(data.choice)
    correct = [
        (c, acc) for c, (acc, _) in zip(choice_categories, choice_hits(backend, choice) if choice else [])
    ]
    correct += [(c, contains_answer(r, i.answer)) for c, r, i in zip(short_categories, short_replies, short)]
    if correct:
        report["task_accuracy"] = _rates([c for c, _ in correct], [hit for _, hit in correct])
    timings["score"] = time.perf_counter() - started
    report["timings"] = {k: round(v, 3) for k, v in timings.items()}
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """A plain table: measure, category, rate, n."""
    lines = [f"{'measure':<15}{'category':<50}{'rate':>7}{'n':>6}"]
    for measure in ("safety", "over_refusal", "task_accuracy"):
        if measure not in report:
            continue
        part = report[measure]
        lines.append(f"{measure:<15}{'(all)':<50}{part['rate']:>7.3f}{part['n']:>6}")
        for category, cell in part["by_category"].items():
            lines.append(f"{'':<15}{category[:49]:<50}{cell['rate']:>7.3f}{cell['n']:>6}")
    return "\n".join(lines)
