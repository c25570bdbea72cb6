"""Where a protocol's rows are scored: in-process evaluators per merge method, and the held-out split.

A row names a merge (a method, its experts, a genome). The search split scores grid points and
LM-Cocktail's losses (what a user tuning on their data would see); the held-out split scores the row's
final merge: safety by the search config's judge, over-refusal by the refusal patterns, task accuracy as
the search measures it (and its short-answer part alone), and lm-eval's ``acc`` on the held-out
multiple-choice questions (``simple_evaluate`` on a local task written from them).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mergesearch.actors import Evaluator, KeptActors
from mergesearch.config import MergeSpaceConfig
from mergesearch.objectives.evaluate import Scores, score_model
from mergesearch.protocol.config import ProtocolConfig
from mergesearch.setup import SearchSetup

Log = Callable[[str], None]
HELDOUT_COUNTS = (
    "harmful",
    "judged_safe",
    "harmful_refused",
    "benign",
    "benign_refused",
    "short_items",
    "choice_items",
)


@dataclass(frozen=True)
class Merge:
    """What a row hands over to be scored on the held-out split: a genome of ``space`` over ``experts``.
    The space travels with the genome because its granularity names the genes and its shared settings
    (TIES's ``normalize``) change what the genes make."""

    space: MergeSpaceConfig
    experts: tuple[str, ...]
    genes: dict[str, float]

    @classmethod
    def of(cls, method: str, experts: tuple[str, ...], genes: dict[str, float]) -> Merge:
        """One set of genes for the whole model, with ``method``'s own settings (the data-free rows)."""
        return cls(MergeSpaceConfig(method=method), experts, genes)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Merge:
        space = MergeSpaceConfig(method=record["method"], **record.get("space", {}))
        return cls(space, tuple(record["experts"]), record["genes"])

    @property
    def method(self) -> str:
        return self.space.method

    def record(self) -> dict[str, Any]:
        """What a cell's JSON keeps of the merge (``from_record`` reads it back)."""
        space = self.space.model_dump(mode="json", include={"granularity", "group_size", "params"})
        return {"method": self.method, "experts": list(self.experts), "genes": self.genes, "space": space}


def file_stem(row: str) -> str:
    """A row's name as part of a file or folder name (a variant's ``:`` is no character for one)."""
    return row.replace(":", "-")


def _share(counts: dict[str, float], hits: str, total: str) -> float:
    return counts[hits] / counts[total] if counts.get(total) else math.nan


class Bench:
    """The protocol's scoring bench: one resident evaluator per (merge space, experts), built on first use,
    and the searches' actors, kept from one search row to the next (they score the same models)."""

    def __init__(
        self,
        protocol: ProtocolConfig,
        setup: SearchSetup,
        folder: Path,
        log: Log,
        trials_digests_of: Callable[[Iterable[str]], tuple[str, ...]],
    ) -> None:
        self.protocol = protocol
        self.setup = setup
        self.folder = folder
        self.log = log
        # of what a search's trials depend on, given the protocol sections its row reads: the digest a
        # run dir is made under, then those earlier code made it under
        self.trials_digests_of = trials_digests_of
        self._evaluators: dict[tuple[str, tuple[str, ...]], Evaluator] = {}  # by (space, experts)
        self._heldout: Any = None
        self.search_actors = KeptActors()

    @property
    def experts(self) -> tuple[str, ...]:
        return tuple(self.setup.experts)

    def evaluator(self, space: MergeSpaceConfig, experts: tuple[str, ...]) -> Evaluator:
        key = (space.model_dump_json(), experts)
        if key not in self._evaluators:
            self._evaluators[key] = Evaluator(self.setup.with_merge(space, experts), log=lambda _: None)
        return self._evaluators[key]

    def search_folder(self, row: str, seed: int, reads: Iterable[str]) -> Path:
        """Where a search row's run dir lives: one folder per version of what its trials depend on
        (``reads``: the protocol sections it reads), so that a changed search starts afresh and keeps the
        old one (a run dir resumes only its own config), while a change to how the winner is chosen among
        the trials (``validate_top``) reuses them. A run dir made under an earlier digest of the same
        trials is linked to from its own path, so that it stays found once that digest no longer
        matches (the earlier digest covered the whole protocol: a later edit elsewhere changes it)."""
        made, *earlier = (
            self.folder / "runs" / digest[:8] / f"{file_stem(row)}-seed{seed}"
            for digest in self.trials_digests_of(reads)
        )
        found = next((f for f in earlier if f.is_dir()), None)
        if made.is_symlink() and not made.exists():
            made.unlink()  # a link to a run dir since removed: searched afresh, or linked anew
        if not made.exists() and found is not None:
            made.parent.mkdir(parents=True, exist_ok=True)
            made.symlink_to(found.resolve(), target_is_directory=True)
        return made

    def close(self) -> None:
        self.search_actors.close()

    def recipe_file(self, merge: Merge, seed: int, header: str) -> str:
        """The mergekit config that rebuilds ``merge`` (``mergekit-yaml``), with how to run it."""
        from mergesearch.merge.export import recipe_file

        setup = self.setup.with_merge(merge.space, merge.experts)
        recipe = setup.space.decode(merge.genes)
        models = setup.config.models
        return recipe_file(recipe, setup.base, setup.experts, models.dtype, header, seed, setup.tokenizer)

    def search_score(self, merge: Merge, seed: int) -> Scores:
        return self.evaluator(merge.space, merge.experts).evaluate(merge.genes, seed)

    def heldout(self, merge: Merge, seed: int) -> dict[str, Any]:
        """The merge's held-out objectives, fitness and lm-eval accuracy."""
        evaluator = self.evaluator(merge.space, merge.experts)
        evaluator.merge(merge.genes, seed)
        return self._score(evaluator.backend, evaluator)

    def rebuilt(self, recipe: Path, merge: Merge, seed: int) -> dict[str, Any]:
        """The merge rebuilt by ``mergekit-yaml`` from its recipe file (with the seed, for the methods that
        drop at random) and scored on the held-out split as the cell was, on an engine of the same
        settings: what a reader who trusts only mergekit would get from the table's row."""
        from mergesearch.backends.registry import make_backend
        from mergesearch.merge.export import run_mergekit_yaml

        evaluator = self.evaluator(merge.space, merge.experts)
        with tempfile.TemporaryDirectory(prefix="mergesearch-rebuild-") as tmp:
            folder = run_mergekit_yaml(yaml.safe_load(recipe.read_text()), Path(tmp) / "model", seed)
            with contextlib.closing(make_backend(folder, evaluator.config.backend, "rebuilt")) as backend:
                return self._score(backend, evaluator)

    def _score(self, backend: Any, evaluator: Evaluator) -> dict[str, Any]:
        """``backend``'s model on the held-out split, judged by ``evaluator``'s judge."""
        from mergesearch.data.eval_split import load_eval_data
        from mergesearch.objectives.lm_eval_tasks import lm_eval_model, run_lm_eval, write_choice_task

        if self._heldout is None:
            cap = self.protocol.heldout_max_prompts
            self._heldout = load_eval_data(str(self.setup.config.data.path), "heldout", cap, cap)
        config = evaluator.config
        scores = score_model(
            backend, self._heldout, evaluator.judge, config.fitness, config.backend.max_new_tokens
        )
        result: dict[str, Any] = {
            "objectives": scores.objectives,
            "fitness": scores.fitness,
            "short_answer": scores.counts.get("contains_answer", math.nan),  # short-answer task items
            # safety as the refusal rules read the same replies: what the refusal-judged tables show
            "safety_refusal_rules": _share(scores.counts, "harmful_refused", "harmful"),
            # what each share is a share of: the table's intervals are drawn from these
            "counts": {k: scores.counts[k] for k in HELDOUT_COUNTS if k in scores.counts},
        }
        if self._heldout.choice_items:
            with tempfile.TemporaryDirectory() as tmp:
                task = write_choice_task(
                    self._heldout.choice_items, backend.render, Path(tmp), "protocol_heldout_choice"
                )
                lm = lm_eval_model(config.backend.kind, backend)
                result["lm_eval_acc"] = run_lm_eval(lm, [task], Path(tmp))[task]["acc"]
        return result
