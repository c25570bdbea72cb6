"""The evaluation data of a search: one split of a dataset (``mergesearch data generate``), held in memory.

Rows are taken in id order (ids are content hashes, so this is a fixed pseudo-random order) and capped
per kind, so the same config always scores on the same prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mergesearch.data.schema import read_rows
from mergesearch.errors import UserError
from mergesearch.objectives.task import ChoiceItem, ShortAnswerItem


@dataclass(frozen=True)
class EvalData:
    harmful: tuple[str, ...]
    benign: tuple[str, ...]
    choice_items: tuple[ChoiceItem, ...]
    short_items: tuple[ShortAnswerItem, ...]
    tagged: tuple[tuple[str, str, str], ...]  # (prompt, kept response, type) for the loss proxy
    source: str = ""

    @classmethod
    def from_dataset(
        cls,
        path: str | Path,
        split: str = "search",
        max_alignment: int | None = None,
        max_task: int | None = None,
    ) -> EvalData:
        rows = sorted((r for r in read_rows(path) if r.split == split), key=lambda r: r.id)
        if not rows:
            raise UserError(
                f"{path}: no rows in split {split!r} (is it a dataset from `mergesearch data generate`, not a prompt set?)"
            )
        cap = lambda xs, n: tuple(xs[:n] if n else xs)  # noqa: E731
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
        tagged = [
            (r.prompt, r.response, r.type) for r in rows if r.response and r.type in ("alignment", "task")
        ]
        return cls(
            harmful=cap([r.prompt for r in rows if r.type == "alignment"], max_alignment),
            benign=cap([r.prompt for r in rows if r.type == "benign"], max_alignment),
            choice_items=cap(choice, max_task),
            short_items=cap(short, max_task),
            tagged=cap(tagged, (max_alignment or 0) + (max_task or 0) or None),
            source=f"{path}:{split}",
        )

    def require(self, objectives: list[str]) -> None:
        """Every objective the fitness weighs needs rows to score on; name the missing ones."""
        needs = {
            "safety": self.harmful,
            "over_refusal": self.benign,
            "task_accuracy": self.choice_items + self.short_items,
            "loss_proxy": self.tagged,
        }
        for name in objectives:
            if not needs.get(name, (1,)):
                raise UserError(f"{self.source}: objective {name!r} has no rows to score on in this split")
