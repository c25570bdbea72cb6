"""Ray's Nevergrad searcher, which can also be told points it did not propose (as Optuna's can): what a
ledger replay falls back to when it cannot replay a run exactly (``replay.py``)."""

from __future__ import annotations

from typing import Any

from ray.tune.search.nevergrad import NevergradSearch

from mergesearch.search.ray_internals import nevergrad_optimizer


class NevergradWithPoints(NevergradSearch):
    def add_evaluated_point(self, parameters: dict, value: float, *args: Any, **kwargs: Any) -> None:
        optimizer, sign = nevergrad_optimizer(self)
        candidate = optimizer.parametrization.spawn_child(new_value=parameters)
        optimizer.tell(candidate, sign * value)
