"""One split of a dataset (``mergesearch data generate``) read into the evaluation data a search scores on.

Rows are taken in id order (ids are content hashes, so this is a fixed pseudo-random order) and capped
per kind, so the same config always scores on the same prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from mergesearch.data.schema import read_rows
from mergesearch.errors import UserError
from mergesearch.objectives.data import EvalData
from mergesearch.objectives.task import ChoiceItem, ShortAnswerItem

T = TypeVar("T")


def _cap(items: Sequence[T], n: int | None) -> tuple[T, ...]:
    return tuple(items[:n] if n else items)


def load_eval_data(
    path: str | Path,
    split: str = "search",
    max_alignment: int | None = None,
    max_task: int | None = None,
) -> EvalData:
    """The ``split`` rows of the dataset at ``path``: at most ``max_alignment`` harmful (and benign)
    prompts and ``max_task`` task items of each format (None: all)."""
    rows = sorted((r for r in read_rows(path) if r.split == split), key=lambda r: r.id)
    if not rows:
        raise UserError(
            f"{path}: no rows in split {split!r} "
            "(is it a dataset from `mergesearch data generate`, not a prompt set?)"
        )
    choice, short = [], []
    for r in rows:
        if r.type != "task" or r.answer is None:
            continue
        if r.choices:
            if r.answer not in r.choices:
                raise UserError(f"{path}: row {r.id}: answer {r.answer!r} is not one of its choices")
            choice.append(ChoiceItem(r.prompt, tuple(r.choices), list(r.choices).index(r.answer)))
        else:
            short.append(ShortAnswerItem(r.prompt, r.answer))
    tagged = [(r.prompt, r.response, r.type) for r in rows if r.response and r.type in ("alignment", "task")]
    return EvalData(
        harmful=_cap([r.prompt for r in rows if r.type == "alignment"], max_alignment),
        benign=_cap([r.prompt for r in rows if r.type == "benign"], max_alignment),
        choice_items=_cap(choice, max_task),
        short_items=_cap(short, max_task),
        tagged=_cap(tagged, (max_alignment or 0) + (max_task or 0) or None),
        source=f"{path}:{split}",
    )
