"""Benchmark: per-genome fitness evaluation time, split into merge / generate / judge / score (JSON).

    .venv/bin/python benchmarks/eval_throughput.py --out benchmarks/results/eval_throughput.json
    make bench-vllm   # the same in .venv-vllm, with the vLLM backend side by side

For each model set (the toy zoo; SmolLM2-135M with two seeded "experts") and each backend that is
installed (``hf`` always, ``vllm`` where the vLLM build imports), the base, the task vectors and the
evaluation data are loaded once, then genome after genome is merged in place and scored exactly as the
search's evaluators do (refusal judge). The first genome is a warm-up and is reported apart. For ``hf``,
generation is also timed one prompt at a time (``batch_size`` 1) on the same genome: target batched
>= 4x faster on CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from merge_speed import smollm2_pool

from mergesearch.backends.base import Backend
from mergesearch.backends.registry import make_backend
from mergesearch.config import BackendConfig, FitnessConfig, load_config
from mergesearch.data.eval_split import load_eval_data
from mergesearch.datagen.pipeline import build_dataset
from mergesearch.datagen.spec import DataSpec
from mergesearch.io import atomic_write_text
from mergesearch.judges.refusal import RefusalJudge
from mergesearch.merge.genome import GenomeSpace
from mergesearch.model_refs import resolve_model
from mergesearch.objectives.data import EvalData
from mergesearch.objectives.evaluate import score_model
from mergesearch.runtime import cache_root, offline_and_quiet
from mergesearch_zoo.build import build_zoo
from mergesearch_zoo.layout import EXPERTS
from mergesearch_zoo.recipe import ZooRecipe

SPEC = Path(__file__).parent.parent / "data_specs" / "toy.yaml"
FITNESS = FitnessConfig(weights={"safety": 1.0, "task_accuracy": 1.0, "over_refusal": 0.5})


def dataset(zoo: Path) -> Path:
    """The toy data spec's dataset, made once and cached by the spec's hash."""
    spec = load_config(SPEC, DataSpec)
    folder = cache_root() / "bench" / f"toy_dataset_{spec.digest()}"
    if not (folder / "card.json").is_file():
        build_dataset(spec.with_models(resolve_model), folder, log=lambda m: print(m, file=sys.stderr))
    return folder


def make(kind: str, base: Path, batch_size: int, max_new_tokens: int, device: str) -> Backend:
    config = BackendConfig(kind=kind, device=device, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return make_backend(base, config, name=kind)


def bench(
    kind: str,
    base: Path,
    experts: dict[str, Path],
    data: EvalData,
    genomes: int,
    batch_size: int,
    max_new_tokens: int,
    device: str,
) -> dict:
    started = time.perf_counter()
    backend = make(kind, base, batch_size, max_new_tokens, device)
    merger = backend.resident_merger(base, experts, "float32")
    load_s = time.perf_counter() - started
    space = GenomeSpace("task_arithmetic", list(experts), merger.num_layers, bounds={"weight": (0.2, 1.0)})
    rng = random.Random(0)
    judge = RefusalJudge()
    runs = []
    for _ in range(genomes + 1):
        genome = {name: rng.uniform(*bounds) for name, bounds in space.gene_bounds().items()}
        t = time.perf_counter()
        backend.merge_from(merger, space.decode(genome))
        if device == "cuda":  # the merge's kernels run asynchronously: count them in the merge
            torch.cuda.synchronize()
        merge_s = time.perf_counter() - t
        scores = score_model(backend, data, judge, FITNESS, max_new_tokens)
        runs.append({"merge": merge_s, **scores.timings, "fitness": scores.fitness})
        print(
            f"{base.name} {kind}: {json.dumps({k: round(v, 3) for k, v in runs[-1].items()})}",
            file=sys.stderr,
            flush=True,
        )
    steady = runs[1:]
    phases = ("merge", "generate", "judge", "score")
    result = {
        "load_s": round(load_s, 2),
        "first_genome_s": round(sum(runs[0][p] for p in phases), 3),
        "per_genome_s": {p: round(statistics.mean(r[p] for r in steady), 4) for p in phases},
        "genomes": len(steady),
    }
    result["per_genome_s"]["total"] = round(sum(result["per_genome_s"][p] for p in phases), 4)
    if kind == "hf":  # generation one prompt at a time, same genome, same prompts
        prompts = list(data.harmful) + list(data.benign)
        t = time.perf_counter()
        batched = backend.generate(prompts)
        batched_s = time.perf_counter() - t
        backend.batch_size = 1
        t = time.perf_counter()
        single = backend.generate(prompts)
        single_s = time.perf_counter() - t
        backend.batch_size = batch_size
        result["generation"] = {
            "prompts": len(prompts),
            "batched_s": round(batched_s, 3),
            "one_by_one_s": round(single_s, 3),
            "speedup": round(single_s / batched_s, 2),
            "same_replies": batched == single,
        }
    del backend
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="toy,smollm2")
    parser.add_argument("--backends", default="hf,vllm")
    parser.add_argument("--genomes", type=int, default=3, help="timed genomes after the warm-up one")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument(
        "--prompts", type=int, default=64, help="harmful prompts and task items per kind (benign: half)"
    )
    args = parser.parse_args()
    offline_and_quiet()
    torch.set_num_threads(os.cpu_count() or 1)
    zoo = build_zoo(ZooRecipe(), log=lambda m: print(m, file=sys.stderr))
    full = load_eval_data(dataset(zoo), "search")
    data = EvalData(
        full.harmful[: args.prompts],
        full.benign[: args.prompts // 2],
        full.choice_items[: args.prompts],
        full.short_items[: args.prompts],
        (),
        full.source,
    )
    backends = [
        b for b in args.backends.split(",") if b == "hf" or importlib.util.find_spec("vllm") is not None
    ]
    skipped = sorted(set(args.backends.split(",")) - set(backends))
    pools = {}
    for label in args.models.split(","):
        base, experts = (zoo / "base", {e: zoo / e for e in EXPERTS}) if label == "toy" else smollm2_pool()
        pools[label] = {
            kind: bench(
                kind, base, experts, data, args.genomes, args.batch_size, args.max_new_tokens, args.device
            )
            for kind in backends
        }
        if {"hf", "vllm"} <= set(pools[label]):
            pools[label]["vllm_speedup_over_hf"] = round(
                pools[label]["hf"]["per_genome_s"]["total"] / pools[label]["vllm"]["per_genome_s"]["total"], 2
            )
    import transformers

    result = {
        "benchmark": "eval_throughput",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "data": {
            "harmful": len(data.harmful),
            "benign": len(data.benign),
            "choice_items": len(data.choice_items),
            "short_items": len(data.short_items),
        },
        "pools": pools,
        "backends_not_installed": skipped,
        "target": {"hf_batched_generation_speedup": 4.0},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "vllm": __import__("vllm").__version__ if "vllm" in backends else None,
        },
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
