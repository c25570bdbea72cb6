"""Resume without unpickling: each session's searcher is rebuilt from the ledger, never restored from Tune.

Tune saves its experiment (searcher included) as pickles, and loading a pickle runs code: a run dir copied
from elsewhere would be a program. So a resumed search makes a fresh searcher with the same seed and
replays the ledger into it in the order the killed session worked. That order is fixed by how
``LedgerReplay`` drives the searcher in every session: ``in_flight`` proposals first; then a trial's
result is told at the event in which the ledger records it (its last report, its stop between rounds,
or its crash, which the ledger records as failed), and that frees its slot, so Tune's next step asks
for proposals until the slots are full (or the searcher has none for now) before it handles the next
event. Searchers are deterministic given their seed and that order, so the rebuilt one is the one that
was killed, and its next proposals are the trials that were in flight.

A replayed proposal that matches no ledgered genome (a ledger from elsewhere, a searcher that is not
deterministic) ends the exact replay: the rest of the ledger is told as evaluated points where the
searcher takes them, and the log says how many it could not take.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray.tune.search import ConcurrencyLimiter, Searcher

from mergesearch.search.imputation import FidelityGaps
from mergesearch.search.ray_internals import live_trials
from mergesearch.search.run_dir import REPORTED, TrialResult, genes_of


@dataclass(frozen=True)
class ReplaySummary:
    exact: int  # ledgered trials replayed as proposed
    told: int  # told as evaluated points after the exact replay ended
    untold: int  # after it, and not taken by the searcher
    in_flight: int  # proposals made in the replay and not yet evaluated: the next trials

    def line(self, searcher: str) -> str:
        text = f"{self.exact} finished trial(s) replayed into a fresh {searcher} searcher"
        if self.told or self.untold:
            text += f"; the exact replay stopped there: {self.told} more told as evaluated points"
        if self.untold:
            text += f", {self.untold} not (this searcher takes no evaluated points)"
        return f"{text}; {self.in_flight} proposal(s) that were in flight come first"


class LedgerReplay(ConcurrencyLimiter):
    """Tune's concurrency limit over ``inner``, told at the ledger's events and rebuilt from the ledger.

    A ``ConcurrencyLimiter`` subclass, so that Tune asks for ``in_flight`` proposals at once (it sizes its
    queue of pending trials from the limiter)."""

    def __init__(self, inner: Searcher, gene_names: list[str], in_flight: int, budget: int) -> None:
        super().__init__(inner, max_concurrent=in_flight)
        self.gene_names, self.budget = gene_names, budget
        self.asked = 0  # proposals made while replaying
        self.open: dict[str, dict[str, Any]] = {}  # replay id -> proposal, not yet handed to Tune
        self.inner_id: dict[str, str] = {}  # Tune's trial id -> the id the inner searcher knows it by
        self.genes: dict[str, dict[str, float]] = {}  # Tune's trial id -> its genome, while live
        self.gaps = FidelityGaps()  # what a stopped trial is told: its running fitness, on full's scale

    # ------------------------------------------------------------------------------------ replay
    def replay(self, trials: list[TrialResult]) -> ReplaySummary:
        self._fill()
        for exact, trial in enumerate(trials):
            match = self._proposed(trial.genes)
            if match is None:
                told = self._tell_evaluated(trials[exact:])
                return ReplaySummary(exact, told, len(trials) - exact - told, len(self.open))
            self._tell_inner(match, trial.report())
            del self.open[match]
            self._fill()
        return ReplaySummary(len(trials), 0, 0, len(self.open))

    def _fill(self) -> None:
        """Ask until ``in_flight`` proposals are open, the searcher has none for now (a searcher waiting
        for results returns None), or the budget is spent: what Tune does at the start of each step."""
        while len(self.open) < self.max_concurrent and self.asked < self.budget:
            replay_id = f"ledger-{self.asked}"
            proposal = self.searcher.suggest(replay_id)
            if not isinstance(proposal, dict):
                return
            self.asked += 1
            self.open[replay_id] = proposal

    def _proposed(self, genes: dict[str, float]) -> str | None:
        """The open replay proposal with this genome, if there is one."""
        return next((i for i, cfg in self.open.items() if genes_of(cfg, self.gene_names) == genes), None)

    def _tell_inner(self, inner_id: str, report: dict[str, Any]) -> None:
        result = {**self.gaps.told(TrialResult.from_report(report)).report(), "training_iteration": 1}
        self.searcher.on_trial_result(inner_id, result)
        self.searcher.on_trial_complete(inner_id, result=result)

    def _tell_evaluated(self, trials: list[TrialResult]) -> int:
        """The rest of the ledger as evaluated points; returns how many the searcher took."""
        for replay_id in list(self.open):
            self.searcher.on_trial_complete(replay_id, None)  # withdrawn: Tune never ran them
        self.open.clear()
        metric = self.searcher.metric
        for told, trial in enumerate(map(self.gaps.told, trials)):
            value = [trial.metric(m) for m in metric] if isinstance(metric, list) else trial.metric(metric)
            try:
                self.searcher.add_evaluated_point(trial.genes, value)
            except (NotImplementedError, TypeError, ValueError):  # e.g. a multi-objective Optuna search
                return told
        return len(trials)

    # ------------------------------------------------------------------------------------ Tune's API
    def suggest(self, trial_id: str) -> dict | None:
        if len(live_trials(self)) >= self.max_concurrent:
            return None
        if self.open:
            replay_id = next(iter(self.open))
            proposal: Any = self.open.pop(replay_id)
        else:
            replay_id, proposal = trial_id, self.searcher.suggest(trial_id)
            if not isinstance(proposal, dict):
                return proposal  # None (not yet) or FINISHED
        live_trials(self).add(trial_id)
        self.inner_id[trial_id] = replay_id
        self.genes[trial_id] = genes_of(proposal, self.gene_names)
        return proposal

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """The trial's last report, recorded by the ledger in this event: told now, and its slot freed
        (a running report of a multi-fidelity trial is not its last)."""
        if trial_id in live_trials(self) and REPORTED in result and TrialResult.from_report(result).final:
            self._finish(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in live_trials(self):
            return  # told at its report
        if error:  # crashed with no report: the ledger records it failed, and so is the searcher told
            self._finish(trial_id, TrialResult.crashed(self.genes[trial_id]).report())
        elif result and REPORTED in result:  # stopped between rounds: told its running scores
            self._finish(trial_id, result)
        else:  # stopped before it reported (the experiment ended): never evaluated
            self.searcher.on_trial_complete(self.inner_id[trial_id], None)
            self._forget(trial_id)

    def _finish(self, trial_id: str, report: dict[str, Any]) -> None:
        self._tell_inner(self.inner_id[trial_id], report)
        self._forget(trial_id)

    def _forget(self, trial_id: str) -> None:
        live_trials(self).discard(trial_id)
        self.inner_id.pop(trial_id)
        self.genes.pop(trial_id)

    def save(self, checkpoint_path: str) -> None:
        """Tune's experiment checkpoints get no searcher state: the ledger is that state."""

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("a search resumes by replaying its ledger, never from Tune's state")
