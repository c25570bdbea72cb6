"""Ray actors that keep models resident, and the pool that routes genomes to free evaluators.

``Evaluator`` (run in-process, or as ``EvaluatorActor``) loads once: the base and every expert's task
vector into a ResidentMerger, a backend holding the live model the merges are written into, the
evaluation data and, unless a ``JudgeActor`` serves it, the judge. Each ``evaluate(genome)`` then merges
in place, generates, judges and scores, and reports the objectives, counts and timings, and, when asked
(``trace_reads``), the weight files it read from disk (measured with ``file_reads``: none, once warm). The
fitness that combines the objectives comes with each request, so one evaluator serves searches of any fitness.

Starting these actors is most of a short search's cost (each is a process that imports torch, loads its
models and compiles the merge kernel on its first genome), so ``KeptActors`` keeps them between the
searches of one driver that score the same models on the same data (a protocol's searches).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from mergesearch.config import FitnessConfig
from mergesearch.file_reads import reading_weights
from mergesearch.judges.base import Assessment, Judge
from mergesearch.objectives.data import EvalData, Rounds
from mergesearch.objectives.evaluate import Scores
from mergesearch.runtime import NAMESPACE
from mergesearch.setup import SearchSetup


class RemoteJudge:
    """A JudgeActor used like a local judge."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def assess(self, pairs: list[tuple[str, str]]) -> Assessment:
        import ray

        return ray.get(self.handle.assess.remote(pairs))

    def close(self) -> None:
        """The judge actor is the search's: its owner (``ActorSet``) stops it."""


class SleepsWhileJudging:
    """vLLM sleep mode (CUDA): the candidate engine sleeps while its responses are judged (level 1: its
    weights, the current merge, wait in host RAM; its KV cache is freed), so a judge sharing the GPU gets
    that memory; it wakes with the same weights."""

    def __init__(self, judge: Judge, backend: Any) -> None:
        self.judge, self.backend = judge, backend

    def assess(self, pairs: list[tuple[str, str]]) -> Assessment:
        self.backend.sleep(1)
        try:
            return self.judge.assess(pairs)
        finally:
            self.backend.wake_up()

    def close(self) -> None:
        self.judge.close()


def _print(message: str) -> None:
    print(message, flush=True)


class Evaluator:
    """Everything one evaluation needs, loaded once."""

    def __init__(
        self,
        setup: SearchSetup,
        judge_handle: Any = None,
        log: Callable[[str], None] = _print,
        trace_reads: bool = False,
    ) -> None:
        """``trace_reads``: count the weight files each evaluation reads from disk (``file_reads``, a
        diagnostic: it watches every model file, so it stays off in a search; tests and benchmarks that
        check residency turn it on)."""
        from mergesearch.backends.registry import make_backend
        from mergesearch.judges.base import make_judge
        from mergesearch.merge.spec import get_method
        from mergesearch.objectives.early_exit import EarlyExit

        started = time.perf_counter()
        setup.activate()
        config = self.config = setup.config
        self.space = setup.space
        self.data = setup.eval_data()
        self.backend = make_backend(setup.engine_model(), config.backend, name="candidate")
        sort = any(get_method(m).uses_magnitude_order for m in config.merge.methods)
        self.merger = self.backend.resident_merger(
            setup.base,
            setup.experts,
            config.models.dtype,
            sort,
            config.merge.pool_device,
            config.merge.task_vectors,
        )
        self.judge: Judge = (
            RemoteJudge(judge_handle)
            if judge_handle is not None
            else make_judge(config.judge, self.device, log)
        )
        if config.backend.sleep_mode:
            self.judge = SleepsWhileJudging(self.judge, self.backend)
        self.settled = EarlyExit.of(config)  # early exit, when the config asks
        self.merged: tuple | None = None  # the (genome, seed) the live model holds
        judge_folder = [config.judge.model] if config.judge.model and judge_handle is None else []
        self.weight_roots = [setup.base, *setup.experts.values(), *judge_folder] if trace_reads else None
        self.load_seconds = time.perf_counter() - started

    @property
    def device(self) -> str:
        from mergesearch.runtime import resolve_device

        return str(resolve_device(self.config.backend.device))

    def close(self) -> None:
        """Stop its engines now (on vLLM each runs processes of its own): an evaluator made in a task,
        whose worker Ray reuses, must not leave them to the collector. A judge actor's owner stops it."""
        self.judge.close()
        self.backend.close()

    def merge(self, genome: Mapping[str, float], seed: int = 0) -> bool:
        """Merge ``genome`` into the live model unless it holds that merge already; whether it merged.
        Every merge into the live model goes through here, so that what it holds is always known."""
        merged = (tuple(sorted(genome.items())), seed)
        if merged == self.merged:
            return False
        self.merged = None  # a merge that fails half-way leaves no genome in the model
        self.backend.merge_from(self.merger, self.space.decode(dict(genome)), seed)
        self.merged = merged
        return True

    def evaluate(
        self,
        genome: Mapping[str, float],
        seed: int = 0,
        shard: Rounds | None = None,
        fitness: FitnessConfig | None = None,
        data: EvalData | None = None,
    ) -> Scores:
        """Merge ``genome`` into the live model, then score it (on the ``shard`` rounds of the data: a
        multi-fidelity trial's call; on ``data`` instead of the fitness's rows: a validation's call) with
        ``fitness`` (the config's when not given); timings include the merge, and the load of the
        resident models on the first call (0 after). The live model that holds this genome's merge
        already is not merged again (the next round of the same trial, when it comes back here)."""
        from mergesearch.objectives.evaluate import score_model

        tracing = reading_weights(*self.weight_roots) if self.weight_roots else contextlib.nullcontext()
        with tracing as reads:
            started = time.perf_counter()
            merging = self.merge(genome, seed)
            merge_seconds = time.perf_counter() - started
            rows = self.data if data is None else data
            scores = score_model(
                self.backend,
                rows if shard is None else rows.shard(shard),
                self.judge,
                fitness or self.config.fitness,
                self.config.backend.max_new_tokens,
                self.settled,
            )
        scores.timings.update(load=self.load_seconds, merge=merge_seconds)
        if reads is not None:
            # weight files this evaluation read from disk: 0 once warm; NaN where it cannot be measured
            scores.counts["weight_files_read"] = float("nan") if reads.count is None else reads.count
        scores.counts["evaluator_calls"] = 1  # summed over a multi-fidelity trial's calls
        scores.counts["merges"] = int(merging)  # 1 per trial when its rounds come back to this model
        self.load_seconds = 0.0
        scores.timings = {k: round(v, 4) for k, v in scores.timings.items()}
        return scores


class JudgeServer:
    """A judge (the guard model, when there is one) loaded once, serving every evaluator, with one verdict
    cache for all of them.

    An async actor, so that it batches: requests that arrive while the judge is busy wait, and go to the
    judge together, as one call, as soon as it is free. An idle judge takes a request at once (no window
    is waited for), and under load each call carries every evaluator that asked meanwhile. The judge
    runs in a worker thread, so the actor keeps taking requests while it does."""

    def __init__(self, setup: SearchSetup, device: str = "auto") -> None:
        from mergesearch.judges.base import make_judge
        from mergesearch.judges.cache import CachedJudge
        from mergesearch.runtime import resolve_device

        setup.activate()
        judge = setup.config.judge
        self.judge = CachedJudge(make_judge(judge, str(resolve_device(device)), _print), judge.verdict_cache)
        self.waiting: list[tuple[list[tuple[str, str]], asyncio.Future[Assessment]]] = []
        self.draining = False
        self.drainer: asyncio.Task[None] | None = None  # held: a bare task may be garbage-collected
        self.requests = self.judge_calls = 0

    async def assess(self, pairs: list[tuple[str, str]]) -> Assessment:
        answer = asyncio.get_running_loop().create_future()
        self.waiting.append((list(pairs), answer))
        if not self.draining:
            self.draining = True
            self.drainer = asyncio.create_task(self._drain())
        return await answer

    async def _drain(self) -> None:
        """Judge everything waiting, as one call, until nothing is."""
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                pairs = [pair for asked, _ in batch for pair in asked]
                try:
                    assessment = await asyncio.to_thread(self.judge.assess, pairs)
                except Exception as error:  # each caller gets the judge's own error
                    for _, answer in batch:
                        answer.set_exception(error)
                    continue
                self.requests, self.judge_calls = self.requests + len(batch), self.judge_calls + 1
                start = 0
                for asked, answer in batch:
                    answer.set_result(assessment.part(start, start + len(asked)))
                    start += len(asked)
        finally:
            self.draining = False

    def reset_stats(self) -> None:
        """Count from here (a kept judge starting another search); the cached verdicts stay."""
        self.judge.hits = self.judge.misses = self.requests = self.judge_calls = 0

    def stats(self) -> dict[str, float]:
        """The verdict cache's figures, and how many evaluator requests the judge's calls carried."""
        per_call = self.requests / self.judge_calls if self.judge_calls else 0.0
        return {
            **self.judge.stats(),
            "requests": self.requests,
            "judge_calls": self.judge_calls,
            "requests_per_call": per_call,
        }


def evaluator_actor(setup: SearchSetup) -> Any:
    """The Ray actor class for evaluators, with the config's CPU and (fractional) GPU share, spread over
    a cluster's nodes so that one node's loss costs the fewest; an actor that dies (its node with it) is
    restarted, wherever there is room, and its call retried. Retries are not counted: a dying node fails
    a call more than once (closed socket, then refused connection) before the actor is restarted, and
    the restarts bound them (once they are spent, the call fails)."""
    import ray

    resources = setup.config.resources
    return ray.remote(
        num_cpus=resources.cpus_per_evaluator,
        num_gpus=resources.gpus_per_evaluator,
        max_restarts=2,
        max_task_retries=-1,
        scheduling_strategy="SPREAD",
    )(Evaluator)


def judge_actor(setup: SearchSetup) -> Any:
    """The judge actor, when the judge is a model (None for pattern judges: each evaluator runs its own)."""
    import ray

    if not setup.config.judge.model:
        return None
    actor = ray.remote(
        num_cpus=1, num_gpus=setup.config.resources.gpus_per_judge, max_restarts=2, max_task_retries=-1
    )
    return actor(JudgeServer).remote(setup)


@dataclass
class ActorSet:
    """The evaluator actors of a search and the judge actor serving them (None for pattern judges)."""

    judge: Any
    evaluators: list[Any]

    @classmethod
    def start(
        cls, setup: SearchSetup, count: int | None = None, name: str = "", trace_reads: bool = False
    ) -> ActorSet:
        """``count`` evaluators (the config's number by default), named ``evaluator-<name>-<i>`` when
        ``name`` is given (what the dashboard and ``ray list actors`` show); ``trace_reads``: see
        ``Evaluator``."""
        judge = judge_actor(setup)
        actor = evaluator_actor(setup)
        evaluators = [
            (actor.options(name=f"evaluator-{name}-{i}", namespace=NAMESPACE) if name else actor).remote(
                setup, judge, trace_reads=trace_reads
            )
            for i in range(count or setup.config.resources.num_evaluators)
        ]
        return cls(judge, evaluators)

    @property
    def handles(self) -> list[Any]:
        return [*self.evaluators, *([self.judge] if self.judge is not None else [])]

    def alive(self, timeout_s: float = 60.0) -> bool:
        """Whether every actor still answers: one that died (of memory, say) would fail every trial."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            ray.get([actor.__ray_ready__.remote() for actor in self.handles], timeout=timeout_s)
        except (RayActorError, GetTimeoutError):
            return False
        return True

    def kill(self) -> None:
        import ray

        for actor in self.handles:
            ray.kill(actor)


def serves_the_same(setup: SearchSetup) -> str:
    """What evaluator and judge actors depend on: the config but for the run's name, its fitness (sent
    with each request), its searcher and its promotion."""
    kept = setup.config.model_dump(mode="json", exclude={"name", "fitness", "search", "promotion"})
    return json.dumps(kept, sort_keys=True)


class KeptActors:
    """Actors kept between the searches of one driver: started for the first search, reused by each next
    one that scores the same models on the same data with the same judge (``serves_the_same``), and
    replaced for one that does not, or when one of them has died. The verdict cache is kept with the
    judge; its figures restart."""

    def __init__(self) -> None:
        self.actors: ActorSet | None = None
        self.key = ""

    def for_search(self, setup: SearchSetup, name: str) -> ActorSet:
        import ray

        key = serves_the_same(setup)
        if self.actors is not None and key == self.key and self.actors.alive():
            if self.actors.judge is not None:
                ray.get(self.actors.judge.reset_stats.remote())
            return self.actors
        self.close()
        self.actors, self.key = ActorSet.start(setup, name=name), key
        return self.actors

    def close(self) -> None:
        if self.actors is not None:
            self.actors.kill()
        self.actors, self.key = None, ""


class EvaluatorPool:
    """N resident evaluators (and a judge actor when the judge is a model); a genome goes to a free one."""

    def __init__(
        self, setup: SearchSetup, num_evaluators: int | None = None, trace_reads: bool = False
    ) -> None:
        from ray.util import ActorPool

        self.actors = ActorSet.start(setup, num_evaluators, trace_reads=trace_reads)
        self.judge = self.actors.judge
        self.pool = ActorPool(self.actors.evaluators)

    def evaluate_all(self, genomes: list[Mapping[str, float]], seed: int = 0) -> list[Scores]:
        """Results in input order; each genome ran on whichever evaluator was free first."""
        return list(self.evaluate_each(genomes, seed))

    def evaluate_each(
        self, genomes: list[Mapping[str, float]], seed: int = 0, data: EvalData | None = None
    ) -> Iterator[Scores]:
        """Each genome's scores (on ``data``, else the fitness's rows) as it comes, in input order."""
        import ray

        data_ref = None if data is None else ray.put(data)  # sent once, not once per genome
        return self.pool.map(
            lambda actor, genome: actor.evaluate.remote(genome, seed, data=data_ref), genomes
        )

    def shutdown(self) -> None:
        self.actors.kill()
