"""The router: one async actor that runs each trial's genome on a free evaluator.

It calls the evaluator itself, rather than lending one to the trial, so that no evaluator can leak: a
trial whose node dies mid-evaluation holds nothing, and the router frees the evaluator when the call
returns. Its only state is which evaluators are free, so a restarted router (its process killed) starts
with all of them free; one still busy with a call of the old router just takes the next call after it.
It is pinned to the driver's node: a node that can die without the driver never holds it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
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


class FreeEvaluators:
    """Evaluators handed to waiting calls deepest first: a call for a trial's later rounds (it has passed
    a decision point) goes before a new trial's first round, so a promising genome's full fitness comes
    soonest, as successive halving's promotions go first; at equal depth, first come first served."""

    def __init__(self, evaluators: list[Any]) -> None:
        self.free = list(evaluators)
        self.waiting: list[tuple[int, int, asyncio.Future]] = []  # a heap of (-depth, arrival, call)
        self.arrivals = itertools.count()

    async def take(self, depth: int) -> Any:
        if self.free:
            return self.free.pop()
        call = asyncio.get_running_loop().create_future()
        heapq.heappush(self.waiting, (-depth, next(self.arrivals), call))
        try:
            return await call
        except asyncio.CancelledError:  # cancelled just after it was handed one: pass that one on
            if call.done() and not call.cancelled():
                self.give_back(call.result())
            raise

    def give_back(self, evaluator: Any) -> None:
        while self.waiting:
            *_, call = heapq.heappop(self.waiting)
            if not call.done():  # a call cancelled while it waited takes nothing
                call.set_result(evaluator)
                return
        self.free.append(evaluator)


class Router:
    """Runs each call on a free evaluator (``FreeEvaluators``: later rounds of a trial first)."""

    def __init__(self, evaluators: list[Any]) -> None:
        self.evaluators = FreeEvaluators(evaluators)

    async def evaluate(
        self,
        genes: dict[str, float],
        seed: int,
        shard: Rounds | None = None,
        fitness: FitnessConfig | None = None,
    ) -> Evaluation:
        evaluator = await self.evaluators.take(depth=shard.first if shard else 0)
        started = time.perf_counter()
        try:
            scores = await evaluator.evaluate.remote(genes, seed, shard, fitness)
            return Evaluation(scores, "", time.perf_counter() - started)
        except Exception as error:  # any failed merge/evaluation is a recorded penalty, not a crash
            return Evaluation(None, error_line(error), time.perf_counter() - started)
        finally:
            self.evaluators.give_back(evaluator)


def start_router(name: str, evaluators: list[Any]) -> Any:
    """The named router actor on this (the driver's) node, restarted whenever its process dies, its
    pending calls retried on the new one."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, scheduling_strategy=here)
    return actor(Router).options(name=name, namespace=NAMESPACE).remote(evaluators)
