"""Where a search's actors go, settled before any of them loads a model: against the live Ray cluster.

A local Ray has every node it will ever have, so a layout it cannot hold fails at once. A joined cluster
(``RAY_ADDRESS``, as under ``ray job submit``) may have an autoscaler that adds nodes when actors ask for
them; the search waits for that at most ``resources.placement_timeout_s`` (0: not at all), polling the
cluster, then fails the same way. Without this a layout the cluster cannot hold (4.5 GPUs asked of a
4-GPU machine) left Ray waiting for nodes that never come, and the search with it.

``resources.num_evaluators: auto`` is settled here too: as many evaluators as the cluster holds together
with the judge (and no more than the trials), resolved once the cluster is seen.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

from mergesearch.errors import UserError
from mergesearch.plan import ActorPlan, NodeType, Placement, check_plan, plan_actors, ray_nodes, this_machine
from mergesearch.setup import SearchSetup

POLL_S = 5.0  # how often a waiting search looks at the cluster again
SOURCE = "the Ray cluster"


def live_nodes() -> list[NodeType]:
    import ray

    return ray_nodes(ray.nodes(), this_machine().gpu_bytes)


def joined_cluster() -> bool:
    """Whether this driver joined a cluster (whose autoscaler may add nodes) rather than starting Ray."""
    return bool(os.environ.get("RAY_ADDRESS"))


def place_search(
    setup: SearchSetup,
    log: Callable[[str], None],
    nodes: Callable[[], list[NodeType]] = live_nodes,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[SearchSetup, list[Placement]]:
    """``setup`` with its evaluator count settled, and where each actor goes; or one UserError line
    naming the actor, what it asks and what the cluster has, at once on a local Ray or after
    ``placement_timeout_s`` on a joined cluster."""
    actors = plan_actors(setup)  # read from the models' headers once: only the cluster changes while waiting
    timeout = setup.config.resources.placement_timeout_s if joined_cluster() else 0.0
    deadline = time.monotonic() + timeout
    waiting = False
    while True:
        found = nodes()
        try:
            count = evaluators_that_fit(setup, actors, found)
            placements = check_plan(with_count(actors, count), found, SOURCE, together=True)
            return evaluators(setup, count), placements
        except UserError as err:
            left = deadline - time.monotonic()
            if left <= 0:
                if waiting:
                    raise UserError(
                        f"{err} [waited {timeout:g} s for more nodes: resources.placement_timeout_s]"
                    ) from None
                raise
            if not waiting:
                log(f"{err}; waiting up to {timeout:g} s for the autoscaler to add nodes")
                waiting = True
            sleep(min(POLL_S, left))


def with_evaluators_that_fit(setup: SearchSetup, nodes: list[NodeType]) -> SearchSetup:
    """``setup`` with its evaluator count settled against ``nodes`` (``evaluators_that_fit``)."""
    return evaluators(setup, evaluators_that_fit(setup, plan_actors(setup), nodes))


def evaluators_that_fit(setup: SearchSetup, actors: list[ActorPlan], nodes: list[NodeType]) -> int:
    """The config's number of evaluators; for ``auto``, the most (up to the trial budget) that ``nodes``
    hold all at once beside the judge, or one line when not even one fits."""
    wanted = setup.config.resources.num_evaluators
    if wanted != "auto":
        return wanted
    most = 0
    for count in range(1, setup.config.search.num_trials + 1):
        try:
            check_plan(with_count(actors, count), nodes, SOURCE, together=True)
        except UserError:
            if not most:
                raise
            break
        most = count
    return most


def with_count(actors: list[ActorPlan], count: int) -> list[ActorPlan]:
    """The plan with ``count`` evaluators (what each holds does not depend on how many there are)."""
    return [dataclasses.replace(a, count=count) if a.role == "evaluator" else a for a in actors]


def evaluators(setup: SearchSetup, count: int) -> SearchSetup:
    """``setup`` with ``count`` evaluators."""
    config = setup.config
    resources = config.resources.model_copy(update={"num_evaluators": count})
    return dataclasses.replace(setup, config=config.model_copy(update={"resources": resources}))
