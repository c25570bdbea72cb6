"""The GPU path: a CUDA device merges and scores what the CPU does, and a search holds its evaluators and
guard judge on the GPU when the config gives them GPU shares.

Skipped where there is no CUDA device (CI has none); on a GPU machine: ``make test-gpu``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from demo_configs import demo_config

from mergesearch.backends.hf import HFBackend
from mergesearch.config import FitnessConfig, SearchConfig
from mergesearch.data.eval_split import load_eval_data
from mergesearch.judges.llama_guard import GuardJudge
from mergesearch.merge.genome import GenomeSpace
from mergesearch.merge.resident import ResidentMerger
from mergesearch.merge.spec import get_method
from mergesearch.objectives.evaluate import Scores, score_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

EXPERTS = ("aligned", "math", "facts")
FITNESS = FitnessConfig(weights={"safety": 1.0, "task_accuracy": 1.0, "over_refusal": 0.5})


def merged_backend(zoo_dir: Path, method: str, device: str, pool: str = "gpu") -> HFBackend:
    """The toy base with one fixed per-layer genome of ``method`` merged into it, on ``device``."""
    backend = HFBackend.from_pretrained(zoo_dir / "base", device=device, max_new_tokens=24)
    experts = {e: zoo_dir / e for e in EXPERTS}
    sort = get_method(method).uses_magnitude_order
    merger = backend.resident_merger(zoo_dir / "base", experts, "float32", sort, pool)
    space = GenomeSpace(method, EXPERTS, merger.num_layers, granularity="layer")
    genome = {
        name: low + (high - low) * (0.3 + 0.4 * (i % 3) / 2)
        for i, (name, (low, high)) in enumerate(space.gene_bounds().items())
    }
    backend.merge_from(merger, space.decode(genome), seed=7)
    return backend


def weights(backend: HFBackend) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().float().cpu() for name, tensor in backend.model.state_dict().items()}


def assert_same_weights(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert found.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_a_merge_on_the_gpu_equals_the_same_merge_on_the_cpu(zoo_dir, method) -> None:
    gpu = merged_backend(zoo_dir, method, "cuda")
    assert gpu.model.device.type == "cuda"
    merged = weights(gpu)
    base = weights(HFBackend.from_pretrained(zoo_dir / "base", device="cpu"))
    assert any((merged[k] - base[k]).abs().max() > 1e-3 for k in base)  # a real merge, not the base
    assert_same_weights(merged, weights(merged_backend(zoo_dir, method, "cpu")))


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_ties"])
def test_a_pool_in_host_ram_merges_what_a_pool_on_the_gpu_merges(zoo_dir, method) -> None:
    """``merge.pool_device: host`` streams each slice to the GPU; the merge (DARE's seeded drop included,
    drawn on the GPU either way) must not depend on where the pool lives."""
    on_gpu = weights(merged_backend(zoo_dir, method, "cuda", pool="gpu"))
    assert_same_weights(weights(merged_backend(zoo_dir, method, "cuda", pool="host")), on_gpu)


def test_the_pool_loads_within_what_its_fit_check_counts(zoo_dir) -> None:
    """The check counts the pool and the load's work, one expert tensor at a time. A load that held a
    whole expert in float32 ran an 8B pool out of memory on an 80 GB H100 that the check let through."""
    experts = {e: zoo_dir / e for e in EXPERTS}
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    merger = ResidentMerger(zoo_dir / "base", experts, "bfloat16", "cuda", log=lambda _: None)
    peak = torch.cuda.max_memory_allocated() - before
    assert merger.estimate_bytes <= peak <= merger.estimate_bytes + merger.load_bytes


def scores_on(device: str, zoo_dir: Path, toy_dataset: Path) -> tuple[Scores, list[str]]:
    backend = merged_backend(zoo_dir, "task_arithmetic", device)
    guard = GuardJudge(HFBackend.from_pretrained(zoo_dir / "guard", device=device, max_new_tokens=6))
    data = load_eval_data(toy_dataset, "search")
    return score_model(backend, data, guard, FITNESS, 24), backend.generate(list(data.harmful))


def test_an_evaluation_with_the_guard_on_the_gpu_scores_what_the_cpu_scores(zoo_dir, toy_dataset) -> None:
    """Float32 on both: the GPU sums in another order, so a near-tie between two next tokens may go the
    other way; nearly every reply, and every objective to within one or two items, must agree."""
    gpu, gpu_replies = scores_on("cuda", zoo_dir, toy_dataset)
    cpu, cpu_replies = scores_on("cpu", zoo_dir, toy_dataset)
    same = sum(a == b for a, b in zip(gpu_replies, cpu_replies)) / len(cpu_replies)
    assert same >= 0.95, f"{same:.3f} of the replies to harmful prompts agree"
    assert cpu.counts["judge_unparsed"] == gpu.counts["judge_unparsed"] == 0
    assert 0.0 < cpu.objectives["safety"] < 1.0  # the guard tells answers apart
    for name, value in cpu.objectives.items():
        assert gpu.objectives[name] == pytest.approx(value, abs=0.05), name


def gpu_search_config(zoo_dir: Path, toy_dataset: Path, gpus_per_evaluator: float) -> SearchConfig:
    config = demo_config(judge={"kind": "llama_guard", "model": str(zoo_dir / "guard")})
    config["data"] = {"path": str(toy_dataset), "max_alignment_prompts": 24, "max_task_prompts": 24}
    config["search"] = {"name": "cma", "num_trials": 8, "seed": 0, "warm_starts": ["uniform"]}
    config["resources"] = {
        "num_evaluators": 2,
        "cpus_per_evaluator": 1,
        "gpus_per_evaluator": gpus_per_evaluator,
        "gpus_per_judge": 0.25,
    }
    config["promotion"] = {"top_k": 0}
    return SearchConfig.model_validate(config)


def test_a_search_holds_its_evaluators_and_guard_judge_on_the_gpu_only_with_a_gpu_share(
    zoo_dir, toy_dataset, tmp_path
) -> None:
    import ray

    from mergesearch.actors import ActorSet, KeptActors
    from mergesearch.runtime import ray_session
    from mergesearch.search.run_dir import RunDir
    from mergesearch.search.tuner import run_search
    from mergesearch.setup import SearchSetup

    def on_device(actor) -> tuple[str, int]:
        """What a resident actor computes on, and the CUDA memory it holds (nested: sent by value)."""
        import torch as actor_torch

        backend = actor.backend if hasattr(actor, "backend") else actor.judge.judge.backend
        allocated = actor_torch.cuda.memory_allocated() if actor_torch.cuda.is_available() else 0
        return str(next(backend.model.parameters()).device), allocated

    ray_session(num_cpus=4)
    kept = KeptActors()
    try:
        setup = SearchSetup.prepare(gpu_search_config(zoo_dir, toy_dataset, 0.25), lambda _: None)
        trials = run_search(setup, RunDir(tmp_path / "run"), log=print, kept=kept).trials()
        assert len(trials) == 8 and all(t.ok for t in trials)
        assert kept.actors is not None
        for device, allocated in ray.get([a.__ray_call__.remote(on_device) for a in kept.actors.handles]):
            assert device.startswith("cuda") and allocated > 0
        kept.close()
        # no GPU share: Ray hides the GPU from the actor, which then computes on the CPU
        no_share = SearchSetup.prepare(gpu_search_config(zoo_dir, toy_dataset, 0.0), lambda _: None)
        actors = ActorSet.start(no_share, count=1)
        (device, allocated), _ = ray.get([a.__ray_call__.remote(on_device) for a in actors.handles])
        actors.kill()
        assert device == "cpu" and allocated == 0
    finally:
        kept.close()
        ray.shutdown()
