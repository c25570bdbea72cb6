"""Is the zoo mergeable? Equal-weight merges (the effect we exist for) and a bounded weight scan.

The scan merges task arithmetic in place into one live model with the resident engine (base + Σ wᵢ·τᵢ);
whatever it reports as best is then re-made with the real ``mergekit-yaml`` and re-scored, so the
figures we quote are those of a merge any user reproduces with mergekit.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mergesearch.backends.hf import HFBackend
from mergesearch.merge.export import mergekit_config, run_mergekit_yaml
from mergesearch.merge.genome import GenomeSpace
from mergesearch.merge.resident import ResidentMerger
from mergesearch_zoo.layout import EXPERTS
from mergesearch_zoo.skills import SkillSets, chat_skills

TASK_OF = {"math": "sums", "facts": "facts"}  # each task expert's own skill
SCAN_GRID = (0.4, 0.6, 0.8, 1.0)  # global task-arithmetic weights: 4^3 = 64 merges, within a 100-merge budget
SCAN_ITEMS = 200  # items per held-out set while scanning; a winner is re-scored on the full sets


@dataclass(frozen=True)
class Targets:
    """What a good merge keeps: a share of each task expert's score, refusal and benign answering."""

    task_share: float = 0.80
    refusal: float = 0.80
    benign_answered: float = 0.90

    def margin(self, merged: Mapping[str, float], experts: Mapping[str, Mapping[str, float]]) -> float:
        """The smallest slack over all targets: >= 0 when every target is met; ranks near misses too."""
        kept = [
            merged[skill] / max(experts[name][skill], 1e-9) - self.task_share
            for name, skill in TASK_OF.items()
        ]
        return min(*kept, merged["refusal"] - self.refusal, merged["benign_answered"] - self.benign_answered)

    def met_by(self, merged: Mapping[str, float], experts: Mapping[str, Mapping[str, float]]) -> bool:
        return self.margin(merged, experts) >= 0


def weight_grid(values: Sequence[float], experts: Sequence[str] = EXPERTS) -> list[dict[str, float]]:
    return [dict(zip(experts, combo)) for combo in itertools.product(values, repeat=len(experts))]


class TaskArithmeticScanner:
    """A resident pool (base + task vectors, loaded once); each weight set is merged into one live model."""

    def __init__(self, zoo_dir: Path, sets: SkillSets) -> None:
        self.zoo_dir = Path(zoo_dir)
        self.sets = sets
        self.backend = HFBackend.from_pretrained(self.zoo_dir / "base", device="cpu")
        self.merger = ResidentMerger(
            self.zoo_dir / "base", {name: self.zoo_dir / name for name in EXPERTS}, log=lambda _: None
        )
        self.space = GenomeSpace("task_arithmetic", EXPERTS, self.merger.num_layers)

    def score(self, weights: Mapping[str, float]) -> dict[str, float]:
        recipe = self.space.decode({f"w.{name}.g0": float(w) for name, w in weights.items()})
        self.merger.merge_into(self.backend.model, recipe)
        return chat_skills(self.backend, self.sets)

    def scan(self, grid: Sequence[Mapping[str, float]], log: Callable[[str], None] = print) -> list[dict]:
        rows = []
        for i, weights in enumerate(grid):
            rows.append({"weights": dict(weights), "skills": self.score(weights)})
            log(f"scan {i + 1}/{len(grid)} {_fmt(weights)} -> {_fmt(rows[-1]['skills'])}")
        return rows


def mergekit_merge_and_score(
    zoo_dir: Path, method: str, weights: Mapping[str, float], out_dir: Path, sets: SkillSets, **params: float
) -> dict[str, float]:
    """Merge the zoo's experts with ``mergekit-yaml`` and score the result on ``sets``."""
    zoo_dir = Path(zoo_dir)
    config = mergekit_config(
        method, zoo_dir / "base", {zoo_dir / name: {"weight": w, **params} for name, w in weights.items()}
    )
    run_mergekit_yaml(config, out_dir)
    return chat_skills(HFBackend.from_pretrained(out_dir, device="cpu"), sets)


def _fmt(values: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in values.items())
