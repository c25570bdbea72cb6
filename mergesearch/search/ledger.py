"""The trial ledger: ``trials.parquet`` (one row per finished trial, rewritten atomically as trials finish),
TensorBoard scalars, a console progress line per trial with the best so far, and a best-fitness gauge.

It is a Tune callback, and also the source of truth on resume: a trial Tune re-runs after a killed
driver finds its finished row here and reports it again instead of evaluating twice.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from ray.tune import Callback
from ray.tune.stopper import Stopper


TRIALS_FILE = "trials.parquet"
PENALTY = -1.0  # the fitness of a failed trial: finite, below every real fitness (which lies in [0, 1])
RESULT_KEYS = (
    "fitness",
    "safety",
    "over_refusal",
    "task_accuracy",
    "loss_proxy",
    "status",
    "error",
    "evaluator_s",
    "merge_s",
    "generate_s",
    "judge_s",
    "score_s",
    "load_s",
    "files_opened",
    "genes_json",
    "counts_json",
)


def read_trials(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / TRIALS_FILE
    return pq.read_table(path).to_pylist() if path.is_file() else []


def write_trials(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Atomic rewrite (the file is small: one row per trial)."""
    path = Path(run_dir) / TRIALS_FILE
    tmp = path.with_name(f".{TRIALS_FILE}.tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    tmp.replace(path)


class TrialLedger(Callback):
    def __init__(self, run_dir: str, total: int, gene_names: list[str]) -> None:
        self.run_dir, self.total, self.gene_names = run_dir, total, gene_names
        self._rows: dict[str, dict[str, Any]] | None = None
        self._writer = None
        self._gauge = None

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles callbacks into its experiment state: keep the settings, not the open writer."""
        return {"run_dir": self.run_dir, "total": self.total, "gene_names": self.gene_names}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def setup(self, **info: Any) -> None:
        self._rows = {r["trial_id"]: r for r in read_trials(Path(self.run_dir))}

    def _tensorboard(self):  # noqa: ANN202
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(Path(self.run_dir) / "tensorboard"))
        return self._writer

    def _metric(self, best: float) -> None:
        try:
            if self._gauge is None:
                from ray.util.metrics import Gauge

                self._gauge = Gauge(
                    "mergesearch_best_fitness", description="best fitness so far in this search"
                )
            self._gauge.set(best)
        except Exception:  # metrics need a Ray cluster with the metrics agent; a plain local run may lack it
            pass

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self._rows is None:
            self.setup()
        if trial.trial_id in self._rows or "fitness" not in result or self.full:
            return
        if result.get("genes_json") in {r["genes_json"] for r in self._rows.values()}:
            return  # a replay of a ledgered trial that Tune lost with the driver (see Router.finished_result)
        row = {
            "trial_id": trial.trial_id,
            "index": len(self._rows),
            "finished_at": time.time(),
            **{k: float(trial.config[k]) for k in self.gene_names},
            **{k: result.get(k) for k in RESULT_KEYS},
        }
        self._rows[trial.trial_id] = row
        rows = sorted(self._rows.values(), key=lambda r: r["index"])
        write_trials(Path(self.run_dir), rows)
        ok = [
            r["fitness"]
            for r in rows
            if r["status"] == "ok" and r["fitness"] is not None and not math.isnan(r["fitness"])
        ]
        best = max(ok) if ok else float("nan")
        writer = self._tensorboard()
        step = row["index"]
        for key in ("fitness", "safety", "over_refusal", "task_accuracy", "loss_proxy"):
            if isinstance(row.get(key), float) and not math.isnan(row[key]):
                writer.add_scalar(f"trial/{key}", row[key], step)
        writer.add_scalar("search/best_fitness", best, step)
        writer.flush()
        self._metric(best)
        status = "" if row["status"] == "ok" else f"  FAILED: {row['error']}"
        shown = " ".join(
            f"{k}={row[k]:.3f}"
            for k in ("safety", "task_accuracy", "over_refusal")
            if isinstance(row.get(k), float)
        )
        print(
            f"[trial {len(rows)}/{self.total}] fitness={row['fitness']:.4f} {shown} best={best:.4f} ({row['evaluator_s']:.1f}s){status}",
            flush=True,
        )

    @property
    def full(self) -> bool:
        """The trial budget is spent (by the ledger's count, which survives a killed driver)."""
        if self._rows is None:
            self.setup()
        return len(self._rows) >= self.total

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._writer is not None:
            self._writer.close()


def finished_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    """trial_id -> the metrics it reported, for trials Tune re-runs after a resume."""
    return {r["trial_id"]: {k: r[k] for k in RESULT_KEYS} for r in read_trials(run_dir)}


def genes_of(row: dict[str, Any]) -> dict[str, float]:
    return json.loads(row["genes_json"])


class BudgetStopper(Stopper):
    """Ends the experiment once the ledger holds the budget: after a driver crash Tune may have lost a
    finished trial from its own count; the ledger did not. (Reads only the Parquet footer.)"""

    def __init__(self, run_dir: str, total: int) -> None:
        self.path, self.total = Path(run_dir) / TRIALS_FILE, total

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.path.is_file() and pq.read_metadata(self.path).num_rows >= self.total
