"""Resume without unpickling: each session's searcher is rebuilt from the ledger, never restored from Tune.

Tune saves its experiment (searcher included) as pickles, and loading a pickle runs code: a run dir copied
from elsewhere would be a program. So a resumed search makes a fresh searcher with the same seed and
replays the ledger into it in the order the killed session worked: ``in_flight`` proposals first, then,
for each finished trial in ledger order, its result and one more proposal (a ``ConcurrencyLimiter`` asks
only when a trial ends). Searchers are deterministic given their seed and that order, so the rebuilt one
is the one that was killed, and its next proposals are the trials that were in flight when it died.

A replayed proposal that matches no ledgered genome (trials that ended in another order than they were
asked, a searcher that is not deterministic) ends the exact replay: the rest of the ledger is told as
evaluated points, which keeps what was learnt, and the log says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray.tune.search import Searcher

from mergesearch.search.run_dir import TrialResult


@dataclass(frozen=True)
class ReplaySummary:
    exact: int  # ledgered trials replayed as proposed
    told: int  # told as evaluated points after the exact replay ended
    in_flight: int  # proposals made in the replay and not yet evaluated: the next trials

    def line(self, searcher: str) -> str:
        text = f"{self.exact} finished trial(s) replayed into a fresh {searcher} searcher"
        if self.told:
            text += f"; {self.told} more told as evaluated points (the exact replay stopped there)"
        return f"{text}; {self.in_flight} proposal(s) that were in flight come first"


class LedgerReplay(Searcher):
    """A searcher rebuilt from the ledger; it hands out the replay's open proposals before new ones."""

    def __init__(self, inner: Searcher, gene_names: list[str], in_flight: int, budget: int) -> None:
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner, self.gene_names = inner, gene_names
        self.in_flight, self.budget = in_flight, budget
        self.asked = 0
        self.open: dict[str, dict[str, Any]] = {}  # replay id -> proposal, not yet handed to Tune
        self.inner_id: dict[str, str] = {}  # Tune's trial id -> the id the inner searcher knows it by

    # ------------------------------------------------------------------------------------ replay
    def replay(self, trials: list[TrialResult]) -> ReplaySummary:
        for _ in range(self.in_flight):
            self._ask()
        for exact, trial in enumerate(trials):
            match = next((i for i, cfg in self.open.items() if self._genes(cfg) == trial.genes), None)
            if match is None:
                told = self._tell_evaluated(trials[exact:])
                return ReplaySummary(exact, told, len(self.open))
            result = {**trial.report(), "training_iteration": 1}
            self.inner.on_trial_result(match, result)
            self.inner.on_trial_complete(match, result)
            del self.open[match]
            self._ask()
        return ReplaySummary(len(trials), 0, len(self.open))

    def _ask(self) -> None:
        if self.asked >= self.budget:
            return
        replay_id = f"ledger-{self.asked}"
        self.asked += 1
        proposal = self.inner.suggest(replay_id)
        if isinstance(proposal, dict):
            self.open[replay_id] = proposal

    def _genes(self, proposal: dict[str, Any]) -> dict[str, float]:
        return {name: float(proposal[name]) for name in self.gene_names}

    def _tell_evaluated(self, trials: list[TrialResult]) -> int:
        """The rest of the ledger as evaluated points (a searcher that cannot take them starts from what
        the exact replay taught it)."""
        for replay_id in list(self.open):
            self.inner.on_trial_complete(replay_id, None)  # withdrawn: Tune never ran them
        self.open.clear()
        metric = self.inner.metric
        for told, trial in enumerate(trials):
            value = [trial.metric(m) for m in metric] if isinstance(metric, list) else trial.metric(metric)
            try:
                self.inner.add_evaluated_point(trial.genes, value)
            except (NotImplementedError, TypeError, ValueError):  # a searcher that cannot take them
                return told
        return len(trials)

    # ------------------------------------------------------------------------------------ Tune's API
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        if self.open:
            replay_id, proposal = next(iter(self.open.items()))
            del self.open[replay_id]
            self.inner_id[trial_id] = replay_id
            return proposal
        self.inner_id[trial_id] = trial_id
        return self.inner.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.inner.on_trial_result(self.inner_id[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.inner.on_trial_complete(self.inner_id.pop(trial_id), result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        """Tune's experiment checkpoints get no searcher state: the ledger is that state."""

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("a search resumes by replaying its ledger, never from Tune's state")
