"""The only place that reaches into Ray Tune's private attributes, each behind a named hook.

Three things mergesearch needs have no public API in Ray 2.60: telling Ray's Nevergrad searcher a point
it did not propose (the ledger replay's fallback: ``nevergrad_search.py``), the trials a
``ConcurrencyLimiter`` holds (``replay.py``, which subclasses it), and the metric an ASHA scheduler
ranks by (``halving.py``, which feeds it a ledger's scores). Ray is pinned exactly (pyproject.toml), so
these hold today; ``broken_hooks()`` says which one a different Ray breaks, and the search runs it
before anything starts, so an upgrade fails in one line naming the hook instead of mid-search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mergesearch.errors import UserError


@dataclass(frozen=True)
class Hook:
    """A private attribute of a Ray class that mergesearch reads, and how to find it on a live object."""

    name: str  # as a reader would look it up: Class.attribute
    used_by: str
    probe: Callable[[], Any]  # builds a small live object and returns the attribute's value


def nevergrad_optimizer(searcher: Any) -> tuple[Any, float]:
    """The Nevergrad optimizer inside Ray's ``NevergradSearch``, and the sign Ray applies to the metric
    (nevergrad minimises; -1 when the search maximises)."""
    return searcher._nevergrad_opt, searcher._metric_op


def live_trials(limiter: Any) -> set[str]:
    """The trials a ``ConcurrencyLimiter`` counts against its limit (the live set: adding changes it)."""
    return limiter.live_trials


def scheduler_metric(scheduler: Any) -> str:
    """The result key an ASHA scheduler ranks by (set by Tune once the experiment names its metric)."""
    return scheduler._metric


def _nevergrad_probe() -> Any:
    import nevergrad as ng
    from ray.tune.search.nevergrad import NevergradSearch

    space = ng.p.Dict(x=ng.p.Scalar(lower=0, upper=1))
    searcher = NevergradSearch(optimizer=ng.optimizers.CMA, space=space, metric="f", mode="max")
    optimizer, sign = nevergrad_optimizer(searcher)
    return optimizer.parametrization.spawn_child, optimizer.tell, float(sign)


def _limiter_probe() -> Any:
    from ray.tune.search import ConcurrencyLimiter, Searcher

    trials = live_trials(ConcurrencyLimiter(Searcher(metric="f", mode="max"), max_concurrent=1))
    trials.add("probe")
    trials.discard("probe")
    return trials


def _asha_probe() -> Any:
    from ray.tune.schedulers import ASHAScheduler

    metric = scheduler_metric(ASHAScheduler(metric="fitness", mode="max", time_attr="t", max_t=2))
    if metric != "fitness":
        raise AttributeError(f"holds {metric!r}, not the metric it was given")
    return metric


HOOKS = (
    Hook(
        "NevergradSearch._nevergrad_opt / _metric_op", "replaying a ledger into Nevergrad", _nevergrad_probe
    ),
    Hook("ConcurrencyLimiter.live_trials", "the ledger replay's concurrency limit", _limiter_probe),
    Hook("ASHAScheduler._metric", "multi-fidelity halving resumed from the ledger", _asha_probe),
)


def broken_hooks() -> list[str]:
    """One line per hook this Ray no longer offers (empty when every one holds)."""
    broken = []
    for hook in HOOKS:
        try:
            hook.probe()
        except Exception as err:  # whatever a changed Ray raises: the point is to name the hook
            broken.append(f"{hook.name} ({hook.used_by}): {type(err).__name__}: {err}")
    return broken


def check_ray_hooks() -> None:
    """Refuse to search on a Ray whose private attributes the search relies on have changed."""
    broken = broken_hooks()
    if broken:
        import ray

        raise UserError(
            f"ray {ray.__version__} lacks what mergesearch reaches into (tested with the pinned "
            f"ray==2.60.0): {broken[0]}" + (f" [+{len(broken) - 1} more]" if len(broken) > 1 else "")
        )
