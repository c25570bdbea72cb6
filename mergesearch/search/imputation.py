"""What a searcher is told of a trial that multi-fidelity stopped: its running fitness, moved onto the
scale of the whole split.

The rounds scored by a decision point are a fixed subset of the split's rows, so their running fitness is
off the whole split's by an amount set mostly by which rows they hold, nearly the same for every genome.
On the SmolLM2 family judged by its guard, rounds 1-3 of 9 read 0.13-0.14 above the whole split
(standard deviation 0.034-0.036, over 83 and 77 genomes scored in full, without and with early exit).
ASHA compares trials at the same point, so the offset does not change its decisions. A searcher ranks
stopped trials among full ones, though, and told raw running fitness it would take the weak genomes
ASHA stopped for good ones.

So a stopped trial is told its running fitness plus the mean gap (full minus running, at the point where
it stopped) of the full trials the searcher was told before it. Until a full trial has been told, the gap
is unknown and the running fitness is told as it is. The gap is learnt from the trials in the order they
are told, so a search replayed from its ledger is told the same values. Only ``fitness`` moves: a
multi-objective searcher is told the objectives of the rounds scored.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from mergesearch.search.run_dir import TrialResult


class FidelityGaps:
    """Per decision point, the gaps (full fitness minus running fitness there) of the full trials told."""

    def __init__(self) -> None:
        self.gaps: dict[int, list[float]] = defaultdict(list)

    def told(self, trial: TrialResult) -> TrialResult:
        """``trial`` as its searcher is told it. A full one is told as it is and teaches its gaps."""
        if trial.full:
            for point, running in trial.running.items():
                self.gaps[point].append(trial.fitness - running)
            return trial
        gap = self.gap(max(trial.running)) if trial.ok and trial.running else None
        return trial if gap is None else trial.model_copy(update={"fitness": trial.fitness + gap})

    def gap(self, point: int) -> float | None:
        """The mean gap at ``point`` learnt so far (None before a full trial that reached it)."""
        gaps = self.gaps.get(point)
        return statistics.fmean(gaps) if gaps else None
