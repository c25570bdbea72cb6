"""One split of a dataset (``mergesearch data generate``) read into the evaluation data a search scores on.

Rows are taken in id order (ids are content hashes, so this is a fixed pseudo-random order) and capped
per kind, so the same config always scores on the same prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from mergesearch.data.schema import Row, read_rows
from mergesearch.errors import UserError
from mergesearch.objectives.breakdown import CategorisedData
from mergesearch.objectives.data import EvalData
from mergesearch.objectives.task import ChoiceItem, ShortAnswerItem

T = TypeVar("T")


def _cap(items: Sequence[T], n: int | None) -> tuple[T, ...]:
    return tuple(items[:n] if n else items)


def _task_item(row: Row, path: str | Path) -> ChoiceItem | ShortAnswerItem | None:
    """The task item a row asks (None for other rows, and task rows without an answer)."""
    if row.type != "task" or row.answer is None:
        return None
    if not row.choices:
        return ShortAnswerItem(row.prompt, row.answer)
    if row.answer not in row.choices:
        raise UserError(f"{path}: row {row.id}: answer {row.answer!r} is not one of its choices")
    return ChoiceItem(row.prompt, tuple(row.choices), list(row.choices).index(row.answer))


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
    items = [_task_item(r, path) for r in rows]
    choice = [i for i in items if isinstance(i, ChoiceItem)]
    short = [i for i in items if isinstance(i, ShortAnswerItem)]
    tagged = [(r.prompt, r.response, r.type) for r in rows if r.response and r.type in ("alignment", "task")]
    return EvalData(
        harmful=_cap([r.prompt for r in rows if r.type == "alignment"], max_alignment),
        benign=_cap([r.prompt for r in rows if r.type == "benign"], max_alignment),
        choice_items=_cap(choice, max_task),
        short_items=_cap(short, max_task),
        tagged=_cap(tagged, (max_alignment or 0) + (max_task or 0) or None),
        source=f"{path}:{split}",
    )


def load_whole_split(
    path: str | Path, split: str, max_alignment: int | None, max_task: int | None, asked_by: str
) -> EvalData:
    """Every row of ``split``, for a check on more of it than the fitness reads (its first
    ``max_alignment`` / ``max_task`` rows); a split with no row past those is one line naming
    ``asked_by`` (the setting that asked: the check would only repeat the fitness)."""
    whole = load_eval_data(path, split)
    read = load_eval_data(path, split, max_alignment, max_task)
    parts = ("harmful", "benign", "choice_items", "short_items", "tagged")
    if all(len(getattr(whole, p)) == len(getattr(read, p)) for p in parts):
        raise UserError(
            f"{asked_by}: the {split!r} split of {path} holds no row past those the fitness reads "
            "(data.max_alignment_prompts, data.max_task_prompts): lower those caps or leave it at 0"
        )
    return whole


def load_categorised(
    path: str | Path, split: str | None = None, per_category: int | None = None
) -> CategorisedData:
    """A dataset's ``split`` rows (default: heldout), or every row of a prompt set (imported prompts have no
    split and no responses: safety needs only prompts), grouped by category, at most ``per_category`` each."""
    rows = sorted(read_rows(path), key=lambda r: r.id)
    source = f"{path} (every row of a prompt set)"
    if rows and all(r.split is None for r in rows):
        if split is not None:
            raise UserError(f"{path}: a prompt set has no splits; leave out --split to use every row")
    else:
        source = f"{path}:{split or 'heldout'}"
        split = split or "heldout"
        rows = [r for r in rows if r.split == split]
        if not rows:
            raise UserError(f"{path}: no rows in split {split!r}")
    groups: dict[str, dict[str, list]] = {"harmful": {}, "benign": {}, "choice": {}, "short": {}}
    for row in rows:
        item = _task_item(row, path)
        part = {"alignment": "harmful", "benign": "benign"}.get(row.type) or (
            "choice" if isinstance(item, ChoiceItem) else "short" if item else None
        )
        if part:
            group = groups[part].setdefault(row.category, [])
            if per_category is None or len(group) < per_category:
                group.append(row.prompt if item is None else item)
    data = CategorisedData(**groups, source=source)
    if not data.size():
        raise UserError(f"{source}: nothing to score (no harmful, benign or answered task rows)")
    return data
