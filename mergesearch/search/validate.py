"""Choosing among a search's best trials on the whole search split, not only the rows the fitness read.

A fitness reads the first rows of the search split (``data.max_alignment_prompts``, ``max_task_prompts``):
on a few questions per skill (16 sums, say) the best of a hundred trials is the one luckiest on those
questions, the winner's curse. On the SmolLM2 family the chosen merges answered 69-75% of the 16 sums
their fitness read and 48-55% of the rest of the split (``docs/paper.md``). ``promotion.validate_top``
scores the best trials by fitness again on the whole search split (the rows the fitness read and the
rest of them; never the held-out split, which stays for the final figures) and ranks them by their
fitness there: what promotion promotes, and what a protocol cell chooses, follow that ranking.

Each score is recorded in the run dir as it finishes (``RunDir.validation_file``, with the settings it
was made under), so a resumed or repeated promotion scores only what is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Generator, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mergesearch.io import atomic_write_text
from mergesearch.objectives.data import EvalData
from mergesearch.objectives.evaluate import Scores
from mergesearch.search.run_dir import RunDir, TrialResult

# What a trial's score on the whole split depends on: the trial's merge and how it is scored. Not the
# search's budget, nor its resources, nor how many trials are validated.
SCORED_SECTIONS = ("models", "merge", "data", "backend", "judge", "early_exit", "fitness")

# Scores each genome on the data, yielding its scores as each is done, in the order given: on the search's
# evaluators (promotion) or a protocol's own. A generator, so that it can be closed when validation ends
# early (what it holds, a pool of actors, then stops).
Score = Callable[[list[Mapping[str, float]], EvalData], Generator[Scores, None, None]]


def scored_settings(config: Any) -> str:
    """A digest of what a validation score depends on: a score recorded under another is made again."""
    settings = {s: getattr(config, s).model_dump(mode="json") for s in SCORED_SECTIONS}
    settings["seed"] = config.search.seed  # the random-mask methods' masks
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def best_by_fitness(trials: Iterable[TrialResult], top: int) -> list[TrialResult]:
    """The ``top`` trials scored in full, best search fitness first (a stopped multi-fidelity trial's
    running fitness is not comparable)."""
    return sorted((t for t in trials if t.full), key=lambda t: -t.fitness)[:top]


def validated(
    run: RunDir,
    config: Any,
    chosen: list[TrialResult],
    data: EvalData,
    score: Score,
    log: Callable[[str], None] = print,
) -> list[TrialResult]:
    """The ``chosen`` trials (the best by search fitness, or a front), each with its fitness and
    objectives on ``data`` (the whole search split; its ``search_fitness`` count keeps the search's),
    best fitness on ``data`` first; a trial whose score failed is last, as failed."""
    path = run.validation_file
    settings = scored_settings(config)
    recorded = _recorded(path, settings)
    # a score is the trial's when it scored the same genome (a run dir searched again reuses trial ids)
    missing = [t for t in chosen if t.trial_id not in recorded or recorded[t.trial_id].genes != t.genes]
    if missing:
        log(
            f"validate: {len(missing)} of the best {len(chosen)} trial(s) scored on the whole "
            f"{config.data.split!r} split ({len(data.harmful)} harmful, {len(data.benign)} benign, "
            f"{len(data.short_items)} short-answer, {len(data.choice_items)} choice rows)"
        )
        # closed when done or failed, so that whatever the scorer holds (a pool of actors) stops now
        with contextlib.closing(score([t.genes for t in missing], data)) as scores:
            for trial, scored in zip(missing, scores):
                result = TrialResult.from_scores(scored, dict(trial.genes))
                recorded[trial.trial_id] = result.model_copy(
                    update={
                        "trial_id": trial.trial_id,
                        "index": trial.index,
                        "counts": {**result.counts, "search_fitness": trial.fitness},
                    }
                )
                log(
                    f"validate: {trial.trial_id}: fitness {trial.fitness:.4f} on the rows the search "
                    f"read, {result.fitness:.4f} on the whole split"
                )
                _record(path, settings, recorded)  # each score kept as it finishes
    return sorted((recorded[t.trial_id] for t in chosen), key=lambda t: -t.fitness)


def _recorded(path: Path, settings: str) -> dict[str, TrialResult]:
    """The scores recorded under ``settings`` (none when the file is missing, torn or from others)."""
    try:
        held = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(held, dict) or held.get("settings") != settings:
        return {}
    try:
        return {tid: TrialResult.model_validate(row) for tid, row in held.get("trials", {}).items()}
    except (ValidationError, AttributeError):  # a file of another version: scored again
        return {}


def _record(path: Path, settings: str, recorded: Mapping[str, TrialResult]) -> None:
    trials = {tid: t.model_dump(mode="json") for tid, t in recorded.items()}
    atomic_write_text(path, json.dumps({"settings": settings, "trials": trials}, indent=1) + "\n")
