"""The router: one async actor that runs each trial's genome on a free evaluator.

It calls the evaluator itself, rather than lending one to the trial, so that no evaluator can leak: a
trial whose node dies mid-evaluation holds nothing, and the router frees the evaluator when the call
returns. Its only state is which evaluators are free, so a restarted router (its process killed) starts
with all of them free; one still busy with a call of the old router just takes the next call after it.
It is pinned to the driver's node: a node that can die without the driver never holds it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mergesearch.runtime import NAMESPACE

if TYPE_CHECKING:
    from mergesearch.config import FitnessConfig
    from mergesearch.objectives.data import Rounds
    from mergesearch.objectives.evaluate import Scores


@dataclass(frozen=True)
class Evaluation:
    """What a trial gets back: the scores, or the one-line error of a failed merge or evaluation."""

    scores: Scores | None
    error: str
    seconds: float  # on the evaluator, from the call to its answer


def error_line(error: BaseException) -> str:
    """The innermost cause of a Ray task error, as ``Type: last line``."""
    while isinstance(getattr(error, "cause", None), BaseException):
        error = error.cause  # type: ignore[attr-defined]
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[-1] if text else ''}"


class Router:
    """Free evaluators in a queue, first come first served."""

    def __init__(self, evaluators: list[Any]) -> None:
        self.free: asyncio.Queue = asyncio.Queue()
        for handle in evaluators:
            self.free.put_nowait(handle)

    async def evaluate(
        self,
        genes: dict[str, float],
        seed: int,
        shard: Rounds | None = None,
        fitness: FitnessConfig | None = None,
    ) -> Evaluation:
        evaluator = await self.free.get()
        started = time.perf_counter()
        try:
            scores = await evaluator.evaluate.remote(genes, seed, shard, fitness)
            return Evaluation(scores, "", time.perf_counter() - started)
        except Exception as error:  # any failed merge/evaluation is a recorded penalty, not a crash
            return Evaluation(None, error_line(error), time.perf_counter() - started)
        finally:
            self.free.put_nowait(evaluator)


def start_router(name: str, evaluators: list[Any]) -> Any:
    """The named router actor on this (the driver's) node, restarted whenever its process dies, its
    pending calls retried on the new one."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, scheduling_strategy=here)
    return actor(Router).options(name=name, namespace=NAMESPACE).remote(evaluators)
