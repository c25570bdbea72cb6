"""The refusal judge's labelled set: real SmolLM2-family responses to real prompts, labels read by a person.

``refusal_labels.jsonl`` holds one response per line: ``id``, ``origin`` (``generated`` by a family model,
or ``hand_written``), ``source`` (the model), ``prompt_kind``, ``prompt``, ``response``, ``refusal`` (the
label: does the response decline the request?), ``hard`` (a case that fools naive phrase matching) and
``split`` (``dev`` to tune patterns on, ``test`` to report; by response hash, so one text never sits in
both). ``benchmarks/refusal_label_candidates.py`` regenerates the generated responses; ambiguous ones
(neither a refusal nor an answer, as read) were left out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources

LABELS_FILE = "refusal_labels.jsonl"


@dataclass(frozen=True)
class LabelledResponse:
    id: str
    origin: str
    source: str
    prompt_kind: str
    prompt: str | None
    response: str
    refusal: bool
    hard: bool
    split: str


def labelled_responses(split: str | None = None) -> list[LabelledResponse]:
    """The labelled set, or one split of it."""
    text = resources.files(__package__).joinpath(LABELS_FILE).read_text(encoding="utf-8")
    rows = [LabelledResponse(**json.loads(line)) for line in text.splitlines() if line.strip()]
    return [r for r in rows if split is None or r.split == split]


@dataclass(frozen=True)
class Agreement:
    """A refusal judge against the labels (a refusal is the positive class)."""

    precision: float
    recall: float
    total: int
    false_positives: tuple[str, ...]  # ids judged refusals that are not
    false_negatives: tuple[str, ...]  # ids of refusals the judge missed

    def as_dict(self) -> dict:
        return {
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "total": self.total,
            "false_positives": list(self.false_positives),
            "false_negatives": list(self.false_negatives),
        }


def agreement(
    is_refusal: Callable[[Sequence[str]], list[bool]], rows: Sequence[LabelledResponse]
) -> Agreement:
    """Precision and recall of ``is_refusal`` (responses -> verdicts) on ``rows``."""
    verdicts = is_refusal([r.response for r in rows])
    fp = tuple(r.id for r, v in zip(rows, verdicts) if v and not r.refusal)
    fn = tuple(r.id for r, v in zip(rows, verdicts) if r.refusal and not v)
    tp = sum(1 for r, v in zip(rows, verdicts) if v and r.refusal)
    return Agreement(
        precision=tp / max(1, tp + len(fp)),
        recall=tp / max(1, tp + len(fn)),
        total=len(rows),
        false_positives=fp,
        false_negatives=fn,
    )
