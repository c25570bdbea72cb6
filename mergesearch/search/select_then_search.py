"""A two-stage search for many-expert pools: select the experts, then search their genes.

A gated 16-expert genome (a gate and a weight per expert) has 32 dimensions, and CMA spends its budget
learning which experts matter (measured in ``benchmarks/many_experts.py``). Stage one is greedy forward
selection over the gates: every expert alone, then the best set so far with each remaining expert added,
one round at a time, each taking-part expert at its reference genes (weight 1, within its bounds). It
stops when no addition raises the fitness, or when the next round would take more than
``SELECTION_SHARE`` of the trial budget (the first round always runs). Stage two hands the rest of the
budget to another searcher (CMA) over the selected experts' own genes only, gates fixed, told stage one's
winner and its fitness (not evaluated again).

Deterministic given the seed and the order results arrive, as every searcher here must be (a resumed
search replays its ledger into a fresh one, ``replay.py``). While a round's results are outstanding it
proposes nothing (``suggest`` returns None; Tune asks again after the next event).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune.search import Searcher

from mergesearch.merge.genome import GATE_PREFIX
from mergesearch.search.problem import ExpertGenes, SearchProblem

SELECTION_SHARE = 0.6
Subset = tuple[str, ...]


class SelectThenSearch(Searcher):
    def __init__(self, problem: SearchProblem, stage_two: Callable[[SearchProblem], Searcher]) -> None:
        super().__init__(metric="fitness", mode="max")
        if problem.experts is None:
            raise ValueError("select-then-search needs a gated pool (merge.gates)")
        self.problem, self.stage_two = problem, stage_two
        self.experts: ExpertGenes = problem.experts
        self.selected: Subset = ()
        self.selected_fitness = float("-inf")
        self.proposed = 0
        self.queue: list[Subset] = []  # this round's sets not yet proposed
        self.pending: dict[str, Subset] = {}  # trial id -> its set, result outstanding
        self.scored: dict[Subset, float] = {}  # this round's results
        self.inner: Searcher | None = None
        self.fixed: dict[str, float] = {}  # stage two: the genes it does not search
        self._next_round(first=True)

    # ------------------------------------------------------------------------------------ stage one
    def _next_round(self, first: bool = False) -> None:
        rest = [e for e in self.experts.owned if e not in self.selected]
        budget = SELECTION_SHARE * self.problem.num_trials
        if rest and (first or self.proposed + len(rest) <= budget):
            order = list(self.experts.owned)
            self.queue = [tuple(sorted((*self.selected, e), key=order.index)) for e in rest]
            self.scored = {}
        else:
            self._start_stage_two()

    def _round_done(self) -> None:
        best = max(self.scored, key=lambda s: (self.scored[s], -list(self.scored).index(s)))
        if self.scored[best] > self.selected_fitness:
            self.selected, self.selected_fitness = best, self.scored[best]
            self._next_round()
        else:
            self._start_stage_two()

    # ------------------------------------------------------------------------------------ stage two
    def _start_stage_two(self) -> None:
        winner = self.experts.together(self.selected)
        owned = [g for e in self.selected for g in self.experts.owned[e]]
        searched = [g for g in owned if not g.startswith(f"{GATE_PREFIX}.")]
        self.fixed = {g: v for g, v in winner.items() if g not in searched}
        left = self.problem.num_trials - self.proposed
        if not searched or left <= 0:
            return
        problem = SearchProblem(
            bounds={g: self.problem.bounds[g] for g in searched},
            num_trials=left,
            concurrency=self.problem.concurrency,
            seed=self.problem.seed,
        )
        self.inner = self.stage_two(problem)
        try:  # stage one's winner is told, not evaluated again
            self.inner.add_evaluated_point({g: winner[g] for g in searched}, self.selected_fitness)
        except (NotImplementedError, TypeError, ValueError):
            pass

    # ------------------------------------------------------------------------------------ Tune's API
    def suggest(self, trial_id: str) -> dict | None:
        if self.queue:
            subset = self.queue.pop(0)
            self.pending[trial_id] = subset
            self.proposed += 1
            return self.experts.together(subset)
        if self.inner is None:
            return None  # a round's results are outstanding
        proposal = self.inner.suggest(trial_id)
        if not isinstance(proposal, dict):
            return proposal
        self.proposed += 1
        return {**self.fixed, **proposal}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.pending:
            subset = self.pending.pop(trial_id)
            fitness = result.get(self.metric) if result and not error else None
            self.scored[subset] = float(fitness) if fitness is not None else float("-inf")
            if not self.queue and not self.pending:
                self._round_done()
        elif self.inner is not None:
            self.inner.on_trial_complete(trial_id, result=result, error=error)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.inner is not None and trial_id not in self.pending:
            self.inner.on_trial_result(trial_id, result)

    @property
    def state(self) -> dict[str, Any]:
        """Where the search is, for the log and tests."""
        return {
            "stage": 2 if self.inner is not None else 1,
            "selected": self.selected,
            "proposed": self.proposed,
        }
