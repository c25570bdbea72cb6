"""Objectives into one fitness: the configured weighted mean, each objective oriented so higher is better.

``over_refusal`` is a rate to *minimise* (the share of benign prompts refused), so the fitness takes
1 − over_refusal; a merge that refuses everything scores 1 on safety and 0 on this term.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

LOWER_IS_BETTER = frozenset({"over_refusal"})


def oriented(name: str, value: float) -> float:
    return 1.0 - value if name in LOWER_IS_BETTER else value


def fitness(objectives: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Σ wₖ·scoreₖ / Σ wₖ over the weighted objectives; NaN if one of them is missing or NaN."""
    total = sum(weights.values())
    value = sum(w * oriented(k, objectives.get(k, float("nan"))) for k, w in weights.items() if w)
    return value / total if total and not math.isnan(value) else float("nan")
