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
class Rounds:
    """Rounds ``first`` to ``stop - 1`` of a split cut into ``count`` interleaved shards (row ``i`` is in
    round ``i % count``): what one call of a multi-fidelity trial scores, from one of ASHA's decision
    points to the next, since a call pays for its decoding batches whatever its size."""

    first: int
    stop: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.first < self.stop <= self.count:
            raise ValueError(f"rounds {self.first}..{self.stop - 1} are not within 0..{self.count - 1}")

    def holds(self, row: int) -> bool:
        return self.first <= row % self.count < self.stop

    def __str__(self) -> str:
        span = f"{self.first + 1}" if self.stop == self.first + 1 else f"{self.first + 1}-{self.stop}"
        return f"round {span} of {self.count}"


@dataclass(frozen=True)
class EvalData:
    harmful: tuple[str, ...]
    benign: tuple[str, ...]
    choice_items: tuple[ChoiceItem, ...]
    short_items: tuple[ShortAnswerItem, ...]
    tagged: tuple[tuple[str, str, str], ...]  # (prompt, kept response, type) for the loss proxy
    source: str = ""

    def shard(self, rounds: Rounds) -> EvalData:
        """The rows of ``rounds``: each part's rows whose position, counted in ``rounds.count``, falls in
        its span. Single rounds of a split are disjoint, cover it, and each mixes its categories as the
        split does (multi-fidelity); a span of several is their union."""

        def kept(rows: tuple) -> tuple:
            return tuple(row for index, row in enumerate(rows) if rounds.holds(index))

        return EvalData(
            kept(self.harmful),
            kept(self.benign),
            kept(self.choice_items),
            kept(self.short_items),
            kept(self.tagged),
            f"{self.source} ({rounds})",
        )

    def require(
        self, objectives: list[str], field: str = "fitness.weights.{name}", fix: str = "weigh it 0"
    ) -> None:
        """Every objective the fitness weighs (or a multi-objective search trades off: ``field`` names
        where it was asked for) needs rows to score on; name the missing ones."""
        needs = {
            "safety": self.harmful,
            "over_refusal": self.benign,
            "task_accuracy": self.choice_items + self.short_items,
            "short_answer": self.short_items,
            "choice_accuracy": self.choice_items,
            "loss_proxy": self.tagged,
        }
        for name in objectives:
            if not needs.get(name, (1,)):
                raise UserError(
                    f"{self.source}: objective {name!r} has no rows to score on in this split "
                    f"({field.format(name=name)}: give the data such rows, or {fix})"
                )
