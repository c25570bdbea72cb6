"""The run dir and its files, owned by one class; and ``TrialResult``, one finished trial.

Every path of a run dir is named here and nowhere else; every file is written atomically (temp file,
then rename), so a killed driver leaves the previous version, never a torn one. ``trials.parquet`` is
the ledger: the source of truth for finished trials on resume.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from mergesearch.config import SearchConfig, describe_validation_error, load_config
from mergesearch.errors import UserError
from mergesearch.io import atomic_write_bytes, atomic_write_text
from mergesearch.objectives.evaluate import Scores
from mergesearch.registry import OBJECTIVES

PENALTY = -1.0  # the fitness of a failed trial: finite, below every real fitness (which lies in [0, 1])
TIMINGS = ("load", "merge", "generate", "judge", "score", "evaluator")  # seconds, as `<name>_s` columns
REPORTED = "trial_json"  # the key of a trial's one report to Tune: the whole TrialResult


def genes_of(config: Mapping[str, Any], gene_names: Sequence[str]) -> dict[str, float]:
    """A proposal's genome as floats, in gene order (Tune's configs may hold numpy scalars)."""
    return {name: float(config[name]) for name in gene_names}


class TrialResult(BaseModel):
    """One evaluated genome: ok with its objectives, or failed with its error (and the penalty fitness)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    genes: dict[str, float]
    status: Literal["ok", "failed"] = "ok"
    fitness: float = PENALTY
    objectives: dict[str, float] = {}
    counts: dict[str, float] = {}
    timings: dict[str, float] = {}
    error: str = ""
    # The share of the search split it was scored on: below 1, a multi-fidelity trial stopped early
    # (its fitness is a running one); promotion and the best trial use full-fidelity trials only.
    fidelity: float = 1.0
    # Its running fitness at each of ASHA's decision points it reached, by rounds scored (multi-fidelity):
    # a resumed search's scheduler is rebuilt from these, as its searcher is from the rest.
    running: dict[int, float] = {}
    trial_id: str = ""
    index: int = -1
    finished_at: float = 0.0

    @classmethod
    def from_scores(
        cls, scores: Scores, genes: dict[str, float], fidelity: float = 1.0, **timings: float
    ) -> TrialResult:
        if math.isnan(scores.fitness):
            return cls.failed("fitness is NaN (an objective could not be computed)", genes)
        return cls(
            genes=genes,
            fitness=scores.fitness,
            objectives=scores.objectives,
            counts=scores.counts,
            timings={**scores.timings, **timings},
            fidelity=fidelity,
        )

    @classmethod
    def failed(cls, error: str, genes: dict[str, float], **timings: float) -> TrialResult:
        return cls(genes=genes, status="failed", error=error[:300], timings=timings)

    @classmethod
    def crashed(cls, genes: dict[str, float]) -> TrialResult:
        """A trial whose trainable itself failed (past Tune's retries), so it never reported."""
        return cls.failed("the trial crashed (Tune gave up retrying it)", genes)

    @property
    def ok(self) -> bool:
        return self.status == "ok" and not math.isnan(self.fitness)

    @property
    def final(self) -> bool:
        """No round of it is left: scored in full, or failed."""
        return self.fidelity >= 1 or not self.ok

    @property
    def full(self) -> bool:
        """A genome evaluated on the whole search split: what may be promoted and reported best."""
        return self.ok and self.fidelity >= 1

    def metric(self, name: str) -> float:
        """``fitness`` or an objective; a missing one is its worst value (0, or 1 where lower is better),
        so that a multi-objective searcher ranks a failure last."""
        if name == "fitness":
            return self.fitness
        return self.objectives.get(name, 1.0 if OBJECTIVES.get(name).lower_is_better else 0.0)

    def report(self) -> dict[str, Any]:
        """What a trial reports to Tune: the metrics searchers read, and the whole result as JSON."""
        metrics = {name: self.metric(name) for name in ("fitness", *OBJECTIVES)}
        return {**metrics, "status": self.status, REPORTED: self.model_dump_json()}

    @classmethod
    def from_report(cls, reported: dict[str, Any]) -> TrialResult:
        return cls.model_validate_json(reported[REPORTED])

    def to_row(self) -> dict[str, Any]:
        """The ledger row: fixed columns, one per objective, timing and gene, and the counts as JSON."""
        return {
            "trial_id": self.trial_id,
            "index": self.index,
            "finished_at": self.finished_at,
            "status": self.status,
            "error": self.error,
            "fitness": self.fitness,
            "fidelity": self.fidelity,
            **{name: self.objectives.get(name) for name in OBJECTIVES},
            **{f"{name}_s": self.timings.get(name) for name in TIMINGS},
            **self.genes,
            "genes_json": json.dumps(self.genes),
            "counts_json": json.dumps(self.counts),
            "running_json": json.dumps(self.running),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TrialResult:
        return cls(
            trial_id=row["trial_id"],
            index=row["index"],
            finished_at=row["finished_at"],
            status=row["status"],
            error=row["error"],
            fitness=row["fitness"],
            fidelity=row.get("fidelity", 1.0),  # ledgers written before multi-fidelity: all full
            objectives={k: row[k] for k in OBJECTIVES if row.get(k) is not None},
            timings={k: row[f"{k}_s"] for k in TIMINGS if row.get(f"{k}_s") is not None},
            genes=json.loads(row["genes_json"]),
            counts=json.loads(row["counts_json"]),
            running=json.loads(row.get("running_json") or "{}"),  # ledgers written before: none
        )


def row_schema(gene_names: list[str]) -> pa.Schema:
    """The ledger's Parquet schema, following ``TrialResult.to_row``."""
    fixed = [("trial_id", pa.string()), ("index", pa.int64()), ("finished_at", pa.float64())]
    fixed += [("status", pa.string()), ("error", pa.string()), ("fitness", pa.float64())]
    fixed += [("fidelity", pa.float64())]
    numbers = [*OBJECTIVES, *(f"{name}_s" for name in TIMINGS), *gene_names]
    return pa.schema(
        [
            *fixed,
            *((name, pa.float64()) for name in numbers),
            ("genes_json", pa.string()),
            ("counts_json", pa.string()),
            ("running_json", pa.string()),
        ]
    )


# What a resumed search may change: how much it searches and on what, never what a trial is (the models,
# the space, the data, the scoring, the searcher and its seed). Ray's actors are started per session, so
# the evaluator count and shares apply from the next one; promotion runs after the search.
RESUMABLE_CHANGES = (
    "search.num_trials",
    "search.time_budget_s",
    "search.queued_per_evaluator",
    "resources",
    "promotion",
)
_ABSENT = "<absent>"


def resumable_change(key: str) -> bool:
    """Whether the setting at dotted ``key`` is one a resumed search may change."""
    return any(key == field or key.startswith(f"{field}.") for field in RESUMABLE_CHANGES)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A config's settings by dotted path (``search.num_trials``); lists are compared whole."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat |= _flat(item, f"{prefix}.{key}" if prefix else str(key))
    return flat


@dataclass(frozen=True)
class RunDir:
    """A search's folder: every path in it, and the reading and writing of its files."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def name(self) -> str:
        return self.root.name

    config_file = property(lambda self: self.root / "config.yaml")
    data = property(lambda self: self.root / "data")
    tune = property(lambda self: self.root / "tune")
    trials_file = property(lambda self: self.root / "trials.parquet")
    tensorboard = property(lambda self: self.root / "tensorboard")
    promotion = property(lambda self: self.root / "promotion")
    leaderboard_file = property(lambda self: self.root / "promotion" / "leaderboard.json")
    # the best trials scored again on the whole search split (promotion.validate_top)
    validation_file = property(lambda self: self.root / "promotion" / "validation.json")
    best = property(lambda self: self.root / "best")
    baselines_file = property(lambda self: self.root / "baselines.json")
    efficiency_file = property(lambda self: self.root / "efficiency.json")
    report_file = property(lambda self: self.root / "report.md")
    report_html = property(lambda self: self.root / "report.html")  # the same, pictures inline
    pareto_file = property(lambda self: self.root / "pareto.png")
    genome_file = property(lambda self: self.root / "genome.png")  # the winner's genome as a heat map
    progress_file = property(lambda self: self.root / "progress.png")  # fitness by trial, best so far

    def new_tune_session(self) -> str:
        """A fresh folder name under ``tune/`` for this session's Tune experiment (never restored from)."""
        sessions = list(self.tune.glob("session-*")) if self.tune.is_dir() else []
        return f"session-{len(sessions)}"

    def candidate(self, trial_id: str) -> Path:
        """A promoted candidate's folder (its model, lm-eval tasks and result)."""
        return self.promotion / trial_id

    def reference(self, expert: str) -> Path:
        """An expert scored alone on the held-out split, beside the candidates (its result only)."""
        return self.promotion / "experts" / expert

    def references(self) -> dict[str, dict[str, Any]]:
        """The experts' held-out results, by expert, as promotion wrote them."""
        folder = self.promotion / "experts"
        found = sorted(folder.glob("*/result.json")) if folder.is_dir() else []
        return {path.parent.name: _read_json(path) for path in found}

    # -------------------------------------------------------------------------------- config
    def read_config(self) -> SearchConfig:
        if not self.config_file.is_file():
            raise UserError(f"{self.root}: not a search run dir (no {self.config_file.name})")
        return load_config(self.config_file)

    def check_config(self, config: SearchConfig) -> None:
        """Refuse, before anything starts, a run dir that is not a folder or holds another search: one
        whose config differs in a setting outside ``RESUMABLE_CHANGES`` (named, with both values)."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root}: is a file, not a run dir")
        if not self.config_file.is_file():
            return
        recorded, wanted = _flat(self._recorded_config()), _flat(config.model_dump(mode="json"))
        changed = [
            key
            for key in sorted(recorded.keys() | wanted.keys())
            if recorded.get(key, _ABSENT) != wanted.get(key, _ABSENT) and not resumable_change(key)
        ]
        if changed:
            key = changed[0]
            was, now = recorded.get(key, _ABSENT), wanted.get(key, _ABSENT)
            raise UserError(
                f"{self.root}: already holds a search with a different config ({key}: {was!r} -> {now!r}, "
                f"{self.config_file}); a resumed search may change only {', '.join(RESUMABLE_CHANGES)}: "
                "pick another run name for another search"
            )

    def _recorded_config(self) -> Any:
        """The recorded config as this version reads it: a setting added since (with its default) does not
        make a run dir written before it a different search."""
        recorded = yaml.safe_load(self.config_file.read_text())
        try:
            return SearchConfig.model_validate(recorded).model_dump(mode="json")
        except ValueError:  # not a config this version can read: compared as written, so refused
            return recorded

    def write_config(self, config: SearchConfig) -> None:
        """Record the config a search runs; a run dir holding another search's config is refused."""
        self.check_config(config)
        atomic_write_text(self.config_file, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

    # -------------------------------------------------------------------------------- trials
    def trials(self) -> list[TrialResult]:
        """The ledger's trials; a torn or foreign ledger is named (it is never rewritten from a guess)."""
        if not self.trials_file.is_file():
            return []
        try:
            return [TrialResult.from_row(row) for row in pq.read_table(self.trials_file).to_pylist()]
        except (pa.ArrowException, OSError) as err:
            reason = str(err).splitlines()[0]
            raise UserError(f"{self.trials_file}: not a readable trial ledger ({reason})") from None
        except ValidationError as err:  # a column that does not hold what its field does
            reason = describe_validation_error(err)
            raise UserError(f"{self.trials_file}: not a trial ledger of this version ({reason})") from None
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{self.trials_file}: not a trial ledger of this version ({err!r})") from None

    def trial_count(self) -> int:
        """Finished trials, from the Parquet footer alone (cheap enough to ask after every trial)."""
        return pq.read_metadata(self.trials_file).num_rows if self.trials_file.is_file() else 0

    def write_trials(self, trials: list[TrialResult], gene_names: list[str]) -> None:
        table = pa.Table.from_pylist([t.to_row() for t in trials], schema=row_schema(gene_names))
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        atomic_write_bytes(self.trials_file, sink.getvalue().to_pybytes())

    # -------------------------------------------------------------------------------- JSON files
    def leaderboard(self) -> list[dict[str, Any]] | None:
        return _read_json(self.leaderboard_file)

    def write_leaderboard(self, board: list[dict[str, Any]]) -> None:
        _write_json(self.leaderboard_file, board)

    def baselines(self) -> list[dict[str, Any]] | None:
        return _read_json(self.baselines_file)

    def write_baselines(self, baselines: list[dict[str, Any]]) -> None:
        _write_json(self.baselines_file, baselines)

    def efficiency(self) -> list[dict[str, Any]]:
        return _read_json(self.efficiency_file) or []

    def add_efficiency(
        self, busy_s: float, wall_s: float, evaluators: int, judge_cache: dict[str, float] | None = None
    ) -> None:
        """Evaluator busy share over one session (idle = waiting for the searcher or Tune), and the judge
        actor's verdict cache (verdicts asked, cached, hit rate) when there is one."""
        idle = 1 - busy_s / max(wall_s * evaluators, 1e-9)
        session = {
            "wall_s": round(wall_s, 2),
            "evaluator_busy_s": round(busy_s, 2),
            "evaluators": evaluators,
            "idle_share": round(idle, 4),
            **({"judge_cache": judge_cache} if judge_cache else {}),
        }
        _write_json(self.efficiency_file, [*self.efficiency(), session])


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")
