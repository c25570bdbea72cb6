"""The trial ledger, as a Tune callback: every finished trial into ``trials.parquet`` (atomically),
TensorBoard scalars, a console progress line with the best so far, and a best-fitness gauge.

It is also the source of truth on resume: the searcher is rebuilt by replaying it (``replay.py``).
"""

from __future__ import annotations

import math
import time
from typing import Any

from ray.tune import Callback
from ray.tune.stopper import Stopper

from mergesearch.registry import OBJECTIVES
from mergesearch.search.imputation import FidelityGaps
from mergesearch.search.run_dir import REPORTED, RunDir, TrialResult, genes_of


class TrialLedger(Callback):
    def __init__(self, run: RunDir, total: int, gene_names: list[str]) -> None:
        self.run, self.total, self.gene_names = run, total, gene_names
        self._trials: dict[str, TrialResult] | None = None
        self._writer: Any = None
        self._gauge: Any = None

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles callbacks into its experiment state: keep the settings, not the open writer."""
        return {"run": self.run, "total": self.total, "gene_names": self.gene_names}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    @property
    def trials(self) -> dict[str, TrialResult]:
        if self._trials is None:
            self._trials = {t.trial_id: t for t in self.run.trials()}
        return self._trials

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """A trial's last report is recorded at once (a running one of a multi-fidelity trial waits)."""
        if REPORTED in result:
            reported = TrialResult.from_report(result)
            if reported.final:
                self._record(trial.trial_id, reported)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial the scheduler stopped between rounds: recorded with its running scores."""
        last = trial.last_result or {}
        if REPORTED in last:
            self._record(trial.trial_id, TrialResult.from_report(last))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial that crashed past Tune's retries is a failed trial, as the searcher is told."""
        self._record(trial.trial_id, TrialResult.crashed(genes_of(trial.config, self.gene_names)))

    def _record(self, trial_id: str, reported: TrialResult) -> None:
        if trial_id in self.trials or self.full:
            return
        finished = reported.model_copy(
            update={"trial_id": trial_id, "index": len(self.trials), "finished_at": time.time()}
        )
        self.trials[trial_id] = finished
        ordered = sorted(self.trials.values(), key=lambda t: t.index)
        self.run.write_trials(ordered, self.gene_names)
        full = [t.fitness for t in ordered if t.full]
        best = max(full) if full else float("nan")
        self._log(finished, best)
        status = "" if finished.ok else f"  FAILED: {finished.error}"
        if finished.ok and not finished.full:
            gaps = FidelityGaps()
            told = [gaps.told(t) for t in ordered][-1]  # as the searcher learnt, trial by trial
            status = f"  stopped at {finished.fidelity:.0%} of the split (searcher told {told.fitness:.4f})"
        shown = " ".join(f"{k}={v:.3f}" for k, v in finished.objectives.items() if k != "loss_proxy")
        seconds = finished.timings.get("evaluator", 0.0)
        print(
            f"[trial {len(ordered)}/{self.total}] fitness={finished.fitness:.4f} {shown} best={best:.4f} "
            f"({seconds:.1f}s){status}",
            flush=True,
        )

    def _log(self, trial: TrialResult, best: float) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run.tensorboard))
        for key, value in {"fitness": trial.fitness, **trial.objectives}.items():
            if key in ("fitness", *OBJECTIVES) and not math.isnan(value):
                self._writer.add_scalar(f"trial/{key}", value, trial.index)
        self._writer.add_scalar("trial/fidelity", trial.fidelity, trial.index)
        self._writer.add_scalar("search/best_fitness", best, trial.index)
        self._writer.flush()
        try:
            if self._gauge is None:
                from ray.util.metrics import Gauge

                self._gauge = Gauge(
                    "mergesearch_best_fitness", description="best fitness so far in this search"
                )
            self._gauge.set(best)
        except Exception:  # metrics need a Ray cluster with the metrics agent; a plain local run may lack it
            pass

    @property
    def full(self) -> bool:
        """The trial budget is spent (by the ledger's count, which survives a killed driver)."""
        return len(self.trials) >= self.total

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._writer is not None:
            self._writer.close()


class BudgetStopper(Stopper):
    """Ends the experiment once the ledger holds the budget: after a driver crash Tune may have lost a
    finished trial from its own count; the ledger did not. (Reads only the Parquet footer.)"""

    def __init__(self, run: RunDir, total: int) -> None:
        self.run, self.total = run, total

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.run.trial_count() >= self.total
