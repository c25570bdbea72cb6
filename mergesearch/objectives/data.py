"""The evaluation data of a search, held in memory: harmful and benign prompts, task items, and the
(prompt, kept response) pairs of the loss proxy.

Reading it from a dataset split is the data layer's job (``mergesearch.data.eval_split.load_eval_data``);
objectives only score on it.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def shard(self, index: int, count: int) -> EvalData:
        """Every ``count``-th row of each part, from ``index``: the shards of a split are disjoint, cover
        it, and each mixes the split's categories as the split does (multi-fidelity rounds)."""
        return EvalData(
            self.harmful[index::count],
            self.benign[index::count],
            self.choice_items[index::count],
            self.short_items[index::count],
            self.tagged[index::count],
            f"{self.source} (shard {index + 1} of {count})",
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
