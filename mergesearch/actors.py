"""Ray actors that keep models resident, and the pool that routes genomes to free evaluators.

``Evaluator`` (run in-process, or as ``EvaluatorActor``) loads once: the base and every expert's task
vector into a ResidentMerger, a backend holding the live model the merges are written into, the
evaluation data and, unless a ``JudgeActor`` serves it, the judge. Each ``evaluate(genome)`` then merges
in place, generates, judges and scores, and reports the objectives, counts and timings, including the
files it opened (none, once warm).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mergesearch.config import SearchConfig
from mergesearch.errors import UserError
from mergesearch.model_paths import resolve_pool

NAMESPACE = "mergesearch"


class _OpenedFiles:
    """Counts files opened through Python while active (an audit hook, installed once per process)."""

    installed = False
    active: list[list[str]] = []
    lock = threading.Lock()

    @classmethod
    @contextlib.contextmanager
    def counting(cls) -> Iterator[list[str]]:
        if not cls.installed:
            sys.addaudithook(cls._hook)
            cls.installed = True
        seen: list[str] = []
        with cls.lock:
            cls.active.append(seen)
        try:
            yield seen
        finally:
            with cls.lock:
                cls.active.remove(seen)

    @classmethod
    def _hook(cls, event: str, args: tuple) -> None:
        if event == "open" and cls.active and isinstance(args[0], (str, Path)):
            name = str(args[0])
            if not name.startswith(("/proc", "/sys", "/dev")):
                for seen in cls.active:
                    seen.append(name)


class RemoteJudge:
    """A JudgeActor used like a local judge."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def assess(self, pairs):  # noqa: ANN001, ANN201
        import ray

        return ray.get(self.handle.assess.remote(pairs))


class Evaluator:
    """Everything one evaluation needs, loaded once."""

    def __init__(self, config: SearchConfig, judge_handle: Any = None, log=None) -> None:  # noqa: ANN001 - log: a callable
        log = log or (lambda message: print(message, flush=True))
        from mergesearch.backends.hf import resolve_device
        from mergesearch.backends.registry import make_backend
        from mergesearch.judges.base import make_judge
        from mergesearch.merge.genome import space_from_config
        from mergesearch.merge.methods import get_method
        from mergesearch.objectives.data import EvalData

        started = time.perf_counter()
        self.config = config
        if not config.data.path:
            raise UserError(
                f"{config.name}: data.path is not set (a dataset from `mergesearch data generate`)"
            )
        base, experts = resolve_pool(config.models, log)
        self.data = EvalData.from_dataset(
            config.data.path,
            config.data.split,
            config.data.max_alignment_prompts,
            config.data.max_task_prompts,
        )
        self.data.require([k for k, w in config.fitness.weights.items() if w])
        self.backend = make_backend(base, config.backend, name="candidate")
        self.merger = self.backend.resident_merger(
            base, experts, config.models.dtype, get_method(config.merge.method).uses_magnitude_order
        )
        self.space = space_from_config(config.merge, list(experts), self.merger.num_layers)
        device = str(resolve_device(config.backend.device))
        self.judge = (
            RemoteJudge(judge_handle) if judge_handle is not None else make_judge(config.judge, device, log)
        )
        self.load_seconds = time.perf_counter() - started
        self._first = True

    def evaluate(self, genome: Mapping[str, float], seed: int = 0) -> dict[str, Any]:
        from mergesearch.objectives.evaluate import score_model

        with _OpenedFiles.counting() as opened:
            started = time.perf_counter()
            recipe = self.space.decode(dict(genome))
            self.backend.merge_from(self.merger, recipe, seed)
            merge_seconds = time.perf_counter() - started
            scores = score_model(
                self.backend, self.data, self.judge, self.config.fitness, self.config.backend.max_new_tokens
            )
        timings = {
            "load": self.load_seconds if self._first else 0.0,
            "merge": merge_seconds,
            **scores.timings,
        }
        self._first = False
        return {
            "objectives": scores.objectives,
            "fitness": scores.fitness,
            "counts": scores.counts,
            "timings": {k: round(v, 4) for k, v in timings.items()},
            "files_opened": len(opened),
        }


class Judge:
    """A judge (the guard model, when there is one) loaded once, serving every evaluator."""

    def __init__(self, config: SearchConfig, device: str = "auto") -> None:
        from mergesearch.backends.hf import resolve_device
        from mergesearch.judges.base import make_judge

        self.judge = make_judge(
            config.judge, str(resolve_device(device)), lambda message: print(message, flush=True)
        )

    def assess(self, pairs):  # noqa: ANN001, ANN201
        return self.judge.assess(pairs)


def evaluator_actor(config: SearchConfig):  # noqa: ANN201
    """The Ray actor class for evaluators, with the config's CPU and (fractional) GPU share."""
    import ray

    return ray.remote(
        num_cpus=config.resources.cpus_per_evaluator,
        num_gpus=config.resources.gpus_per_evaluator,
        max_restarts=2,
        max_task_retries=1,
    )(Evaluator)


def judge_actor(config: SearchConfig):  # noqa: ANN201
    import ray

    return ray.remote(
        num_cpus=1, num_gpus=config.resources.gpus_per_judge, max_restarts=2, max_task_retries=1
    )(Judge)


class EvaluatorPool:
    """N resident evaluators (and one judge actor when the judge is a model); each genome goes to a free one."""

    def __init__(self, config: SearchConfig, num_evaluators: int | None = None) -> None:
        import ray
        from ray.util import ActorPool

        self.judge = judge_actor(config).remote(config) if config.judge.kind == "llama_guard" else None
        count = num_evaluators or config.resources.num_evaluators
        self.actors = [evaluator_actor(config).remote(config, self.judge) for _ in range(count)]
        self.pool = ActorPool(self.actors)
        self._ray = ray

    def evaluate_all(self, genomes: list[Mapping[str, float]], seed: int = 0) -> list[dict[str, Any]]:
        """Results in input order; each genome ran on whichever evaluator was free first."""
        return list(self.pool.map(lambda actor, genome: actor.evaluate.remote(genome, seed), genomes))

    def shutdown(self) -> None:
        for actor in [*self.actors, *([self.judge] if self.judge is not None else [])]:
            self._ray.kill(actor)
