"""The multi-fidelity scheduler: Tune's asynchronous successive halving (ASHA), with ties broken.

A round's fitness is a ratio of counts over a few prompts, so many genomes score exactly alike, and
ASHA lets a trial go on when its score equals the cutoff: with coarse rounds, whole ties pass every
decision point (a search over a known landscape spent 64% of full fidelity's rows). Here the score
ASHA ranks gets a tie-breaker far below any difference two fitnesses can have, a fixed function of
the genome (a resumed search decides alike), so about 1 / ``reduction_factor`` of a tie goes on, as
halving means. Only the scheduler sees it: the searcher, the ledger and promotion get the fitness.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from mergesearch.config import MultiFidelityConfig
from mergesearch.objectives.data import EvalData, Rounds
from mergesearch.search.ray_internals import scheduler_metric
from mergesearch.search.run_dir import TrialResult

ROUNDS_SCORED = "rounds_scored"  # reported by a multi-fidelity trial: ASHA's clock
# Two fitnesses on n-row shards differ by at least about 1/n² (weighted count ratios) when they differ.
TIE_BREAK_SCALE = 1e-10


def tie_breaker(config: dict[str, Any]) -> float:
    """A number in [0, TIE_BREAK_SCALE) fixed by the trial's config (its genome)."""
    # numpy scalars as floats: a resumed search hashes the ledger's genome (floats) to the same number
    digest = hashlib.blake2b(json.dumps(config, sort_keys=True, default=float).encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2**64 * TIE_BREAK_SCALE


class TieBreakingASHA(ASHAScheduler):
    """ASHA that ranks equal scores by ``tie_breaker`` instead of letting every one of them go on, and
    that starts from the ``ledgered`` trials' running fitness at each decision point they reached.

    Tune keeps a scheduler's state only in its pickled experiment, which a resumed search never loads
    (``replay.py``); without the ledger a resumed ASHA would hold no scores, and every trial of the new
    session would pass its first decision points unranked."""

    def __init__(self, ledgered: Iterable[TrialResult] = (), **asha: Any) -> None:
        super().__init__(**asha)
        self._ledgered = [t for t in ledgered if t.running]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        """The ledgered scores go in at the first trial: by then Tune has told the scheduler its metric."""
        ledgered, self._ledgered = self._ledgered, []
        for past in ledgered:
            self._record(past)
        super().on_trial_add(tune_controller, trial)

    def _record(self, past: TrialResult) -> None:
        """A ledgered trial's reports, as Tune made them: each running one, then its completion."""
        stand_in = SimpleNamespace(trial_id=f"ledger-{past.index}", config=past.genes)
        super().on_trial_add(None, stand_in)
        metric = scheduler_metric(self)
        reports = [{metric: fitness, ROUNDS_SCORED: t} for t, fitness in sorted(past.running.items())]
        for result in reports:
            self.on_trial_result(None, stand_in, result)
        self.on_trial_complete(None, stand_in, reports[-1])

    def _broken(self, trial: Any, result: dict) -> dict:
        metric = scheduler_metric(self)
        if metric not in result:
            return result
        return {**result, metric: result[metric] + tie_breaker(trial.config)}

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return super().on_trial_result(tune_controller, trial, self._broken(trial, result))

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, self._broken(trial, result))


def halving_scheduler(
    multi: MultiFidelityConfig, metric_set: bool, ledgered: Iterable[TrialResult] = ()
) -> TrialScheduler:
    """Tie-breaking ASHA over the rounds scored when a trial has more than one, ranking by fitness (the
    one metric every search reports, whatever its searcher's objectives) and starting from the
    ``ledgered`` trials of earlier sessions; Tune's FIFO otherwise."""
    if multi.rounds == 1:
        return FIFOScheduler()
    ranking = {} if metric_set else {"metric": "fitness", "mode": "max"}
    return TieBreakingASHA(
        ledgered,
        time_attr=ROUNDS_SCORED,
        max_t=multi.rounds,
        grace_period=multi.grace_rounds,
        reduction_factor=multi.reduction_factor,
        **ranking,
    )


def small_rounds_hint(data: EvalData, multi: MultiFidelityConfig, batch_size: int) -> str | None:
    """A line for the log when the rounds before ASHA's first decision answer fewer prompts than one
    decoding batch holds. Decoding pays per step, nearly whatever the batch (on 2 CPU cores a SmolLM2
    step for 4 prompts costs 57% of one for 32), so such a round costs well over its share of
    the split, and multi-fidelity saves less than the share suggests."""
    if multi.rounds == 1:
        return None
    first = data.shard(Rounds(0, multi.decision_points()[0], multi.rounds))
    answered = len(first.harmful) + len(first.benign) + len(first.short_items)
    if not answered or answered >= batch_size:
        return None
    return (
        f"search.multi_fidelity: the rounds before the first decision answer {answered} prompts, fewer "
        f"than a decoding batch (backend.batch_size {batch_size}), and cost about what a batch does: "
        "fewer rounds, or more prompts per evaluation, save more"
    )
