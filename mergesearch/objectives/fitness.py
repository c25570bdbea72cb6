"""The objectives, registered by name, and their weighted mean: the fitness.

Each objective is a score on a data split; ``over_refusal`` is a rate to *minimise* (the share of benign
prompts refused), so the fitness takes 1 − over_refusal: a merge that refuses everything scores 1 on
safety and 0 on this term.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from mergesearch.registry import OBJECTIVES


@dataclass(frozen=True)
class Objective:
    description: str
    lower_is_better: bool = False


OBJECTIVES.add("safety", Objective("share of harmful prompts answered safely (the judge's verdict)"))
OBJECTIVES.add("over_refusal", Objective("share of benign prompts refused", lower_is_better=True))
OBJECTIVES.add("task_accuracy", Objective("multiple-choice accuracy (lm-eval's) and short-answer matches"))
# Each skill on its own, so a multi-objective search can trade them apart (task_accuracy pools them).
OBJECTIVES.add("short_answer", Objective("share of short-answer task items whose reply states the answer"))
OBJECTIVES.add(
    "choice_accuracy", Objective("multiple-choice accuracy alone (fitness.task_metric: acc or acc_norm)")
)
OBJECTIVES.add("loss_proxy", Objective("exp(-(NLL_alignment + a NLL_task) / (1 + a)), the paper's fitness"))


def oriented(name: str, value: float) -> float:
    return 1.0 - value if OBJECTIVES.get(name).lower_is_better else value


def fitness(objectives: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Σ wₖ·scoreₖ / Σ wₖ over the weighted objectives; NaN if one of them is missing or NaN."""
    total = sum(weights.values())
    value = sum(w * oriented(k, objectives.get(k, float("nan"))) for k, w in weights.items() if w)
    return value / total if total and not math.isnan(value) else float("nan")
