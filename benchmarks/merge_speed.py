"""Benchmark: per-genome merge latency of the resident engine vs mergekit, same recipes (JSON).

    .venv/bin/python benchmarks/merge_speed.py --out benchmarks/results/merge_speed.json \
        [--models toy,smollm2]

For each model set and method, three ways to turn a genome into merged weights, measured in one run:
  resident   ResidentMerger.merge_into a live model (base, task vectors and their sorted magnitudes
             loaded once, before timing; the first merge of each method, which compiles the fused
             TIES kernel or computes TSV-M's SVDs, is reported apart as resident_first_merge_ms)
  run_merge  mergekit's run_merge on the exported recipe, written to disk (mergekit-evolve's default)
  in_memory  mergekit's planner + executor copying into a live model (mergekit-evolve's in-memory path)
plus a large tensor copy for the machine's memory bandwidth, the effective bandwidth of resident
task arithmetic (bytes it must read and write / time), and resident-set growth per phase.

Targets: resident ties >= 20x faster than run_merge per genome; resident task_arithmetic >= 50% of the
copy bandwidth. SmolLM2 "experts" are the imported model plus seeded random task vectors (latency does
not depend on the values); the toy zoo's experts are real. ``magnitude_sort``: the load's sort of every
task vector's magnitudes, the engine's (numpy's on a CPU) against ``torch.sort``, same values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from stamps import provenance
from transformers import AutoModelForCausalLM

from mergesearch.io import atomic_dir, atomic_write_text
from mergesearch.merge.export import recipe_to_mergekit
from mergesearch.merge.genome import GenomeSpace
from mergesearch.merge.resident import ResidentMerger, sorted_magnitudes
from mergesearch.merge.spec import get_method
from mergesearch.registry import MERGE_METHODS
from mergesearch.runtime import cache_root, offline_and_quiet
from mergesearch_zoo.build import build_zoo
from mergesearch_zoo.layout import EXPERTS
from mergesearch_zoo.recipe import ZooRecipe
from mergesearch_zoo.smollm2 import import_smollm2


def all_methods() -> list[str]:
    """Every registered merge method (the default: each method's speed, and parity where mergekit has it)."""
    return list(MERGE_METHODS)


class RssGrowth:
    """Peak resident-set growth over a phase, sampled every millisecond from /proc/self/statm.

    (Resetting the kernel's VmHWM through /proc/self/clear_refs is not honoured everywhere, so the
    peak is sampled.) A merge that allocated a model-sized buffer would show a growth near the model size.
    """

    def __enter__(self) -> RssGrowth:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * self.page

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth_mib(self) -> float:
        return round((self.peak - self.start) / 2**20, 1)


def copy_bandwidth_gbs(nbytes: int, repeats: int = 5) -> float:
    """Read+write bytes per second of a plain tensor copy (the machine's practical bandwidth)."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    started = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    return 2 * nbytes * repeats / (time.perf_counter() - started) / 1e9


def smollm2_pool(n_experts: int = 2, seed: int = 0) -> tuple[Path, dict[str, Path]]:
    root = cache_root() / "bench" / f"smollm2_pool_{n_experts}_{seed}"
    base = import_smollm2(cache_root() / "SmolLM2-135M-Instruct", log=lambda m: print(m, file=sys.stderr))
    experts = {f"e{i}": root / f"e{i}" for i in range(n_experts)}
    generator = torch.Generator().manual_seed(seed)
    weights = None
    for folder in experts.values():
        if (folder / "model.safetensors").is_file():
            continue
        weights = weights or load_file(str(base / "model.safetensors"))
        noisy = {
            k: v + 0.02 * v.std() * torch.randn(v.shape, generator=generator) for k, v in weights.items()
        }
        with atomic_dir(folder) as tmp:
            save_file(noisy, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
                if (base / name).is_file():
                    (tmp / name).write_bytes((base / name).read_bytes())
    return base, experts


def random_genomes(space: GenomeSpace, count: int, seed: int) -> list[dict[str, float]]:
    rng = random.Random(seed)
    return [
        {name: rng.uniform(*bounds) for name, bounds in space.gene_bounds().items()} for _ in range(count)
    ]


def mergekit_run_merge(config: dict, out: Path) -> float:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    started = time.perf_counter()
    run_merge(MergeConfiguration.model_validate(config), str(out), MergeOptions(quiet=True, random_seed=0))
    return time.perf_counter() - started


def mergekit_in_memory(config: dict, model: torch.nn.Module) -> float:
    """mergekit-evolve's in-memory evaluation: plan, execute, copy each tensor into a live model.

    mergekit 0.1.5's ``MergePlanner.plan_in_memory()`` raises (its ``ReturnTensor`` task is abstract), so
    mergekit-evolve's in-memory mode is broken in that release; we run what it would: the planner's tensor
    tasks through mergekit's Executor.
    """
    from mergekit.architecture import arch_info_for_config
    from mergekit.config import MergeConfiguration
    from mergekit.graph import Executor
    from mergekit.merge import _model_out_config
    from mergekit.options import MergeOptions
    from mergekit.plan import MergePlanner

    started = time.perf_counter()
    merge_config = MergeConfiguration.model_validate(config)
    arch = arch_info_for_config(model.config)
    options = MergeOptions(quiet=True, random_seed=0)
    planner = MergePlanner(merge_config, arch, options, _model_out_config(merge_config, arch))
    planner._plan()
    name_of = {id(task): weight.name for weight, task in planner._tensors}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for task, value in Executor(
            [task for _, task in planner._tensors], math_device="cpu", storage_device="cpu"
        ).run(quiet=True):
            name = name_of.get(id(task))
            if name in params:
                params[name].copy_(value)
    return time.perf_counter() - started


def magnitude_sort(merger: ResidentMerger) -> dict:
    """Sorting every task vector's magnitudes (part of the load, for TIES): the engine's sort (numpy's on
    a CPU) against ``torch.sort``, side by side on the same tensors, which must give the same values."""
    taus = [tau for taus in merger.task_vectors.values() for tau in taus.values()]
    timed: dict[str, float] = {}
    for name, sort in (
        ("engine", sorted_magnitudes),
        ("torch_sort", lambda t: t.abs().reshape(-1).float().sort().values),
    ):
        started = time.perf_counter()
        found = [sort(tau) for tau in taus]
        timed[name] = time.perf_counter() - started
        if name == "engine":
            engine = found
        elif not all(torch.equal(a, b) for a, b in zip(engine, found)):
            raise AssertionError("the engine's sorted magnitudes differ from torch.sort's")
    return {
        "values": sum(t.numel() for t in taus),
        "torch_threads": torch.get_num_threads(),
        "engine_s": round(timed["engine"], 2),
        "torch_sort_s": round(timed["torch_sort"], 2),
        "speedup": round(timed["torch_sort"] / timed["engine"], 2),
    }


def worst_relative_difference(mine: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    """Largest |mine − theirs| over each tensor's largest |theirs| (0: the same tensors)."""
    return max(
        float((mine[k].float() - t.float()).abs().max() / t.float().abs().max().clamp_min(1e-12))
        for k, t in theirs.items()
    )


def bench_pool(
    label: str, base: Path, experts: dict[str, Path], methods: list[str], genomes: int, mergekit_genomes: int
) -> dict:
    started = time.perf_counter()
    merger = ResidentMerger(base, experts, log=lambda m: print(m, file=sys.stderr), sort_magnitudes=True)
    load_seconds = time.perf_counter() - started
    # methods that take fewer experts (nuslerp 2, nearswap 1...) get a pool of the first ones, loaded once
    smaller: dict[int, ResidentMerger] = {}
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    model_bytes = sum(t.numel() * t.element_size() for t in merger.base.values())
    rss_after_load = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    num_layers = model.config.num_hidden_layers
    result: dict = {
        "model_mib": round(model_bytes / 2**20, 1),
        "experts": len(experts),
        "load_seconds": round(load_seconds, 2),
        "rss_after_load_mib": round(rss_after_load, 1),
        "magnitude_sort": magnitude_sort(merger),
        "methods": {},
    }
    for method in methods:
        # (DELLA needs density ± epsilon inside (0, 1))
        wanted = {"weight": (0.2, 1.0), "density": (0.3, 0.9), "epsilon": (0.01, 0.05)}
        declared = {p.name for p in get_method(method).params}  # linear, slerp, ... have no density
        bounds = {name: span for name, span in wanted.items() if name in declared}
        taken = list(experts)[: get_method(method).max_experts or len(experts)]
        pool = merger
        if len(taken) < len(experts):
            if len(taken) not in smaller:
                picked = {name: experts[name] for name in taken}
                smaller[len(taken)] = ResidentMerger(base, picked, log=lambda m: None, sort_magnitudes=True)
            pool = smaller[len(taken)]
        space = GenomeSpace(method, taken, num_layers, "global", bounds=bounds)
        recipes = [space.decode(g) for g in random_genomes(space, genomes + 1, seed=len(method))]
        started = time.perf_counter()
        with RssGrowth() as first_merge:  # the first merge of a method: kernel compilation, TSV-M's SVDs
            pool.merge_into(model, recipes[0], seed=0)
        first_merge_s = time.perf_counter() - started
        started = time.perf_counter()
        for recipe in recipes[1:]:
            pool.merge_into(model, recipe, seed=0)
        resident = (time.perf_counter() - started) / genomes
        print(f"{label} {method}: resident {resident * 1000:.1f} ms/genome", file=sys.stderr, flush=True)
        entry: dict = {
            "experts": len(taken),
            "resident_ms": round(resident * 1000, 2),
            "resident_first_merge_ms": round(first_merge_s * 1000, 1),
            "rss_growth_mib": {"resident_first_merge": first_merge.growth_mib},
        }
        result["methods"][method] = entry
        if get_method(method).mergekit is None:  # nothing to compare with
            continue
        configs = [recipe_to_mergekit(r, base, experts) for r in recipes[1 : 1 + mergekit_genomes]]
        with tempfile.TemporaryDirectory() as tmp:
            with RssGrowth() as run_merge_rss:
                run_merge_s = sum(
                    mergekit_run_merge(c, Path(tmp) / f"m{i}") for i, c in enumerate(configs)
                ) / len(configs)
            # parity: the first timed genome, as run_merge wrote it (random masks from seed 0 both ways)
            theirs = {}
            for file in sorted((Path(tmp) / "m0").glob("*.safetensors")):
                theirs |= load_file(str(file))
            mine = dict(pool.merged_tensors(recipes[1], seed=0))
            entry["worst_relative_difference_vs_run_merge"] = float(
                f"{worst_relative_difference(mine, theirs):.2e}"
            )
        with RssGrowth() as in_memory_rss:
            in_memory_s = sum(mergekit_in_memory(c, model) for c in configs) / len(configs)
        print(
            f"{label} {method}: run_merge {run_merge_s:.2f} s, in-memory {in_memory_s:.2f} s",
            file=sys.stderr,
            flush=True,
        )
        entry.update(
            run_merge_ms=round(run_merge_s * 1000, 1),
            in_memory_ms=round(in_memory_s * 1000, 1),
            speedup_vs_run_merge=round(run_merge_s / resident, 1),
            speedup_vs_in_memory=round(in_memory_s / resident, 1),
        )
        entry["rss_growth_mib"].update(run_merge=run_merge_rss.growth_mib, in_memory=in_memory_rss.growth_mib)
        if method == "task_arithmetic":  # must read base + n task vectors and write the model once
            entry["effective_gbs"] = round((len(experts) + 2) * model_bytes / resident / 1e9, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="toy,smollm2")
    parser.add_argument("--methods", default=None, help="comma-separated [default: every registered method]")
    parser.add_argument(
        "--genomes", type=int, default=5, help="timed genomes per method for the resident engine"
    )
    parser.add_argument(
        "--mergekit-genomes", type=int, default=2, help="timed genomes per method for mergekit"
    )
    args = parser.parse_args()
    offline_and_quiet()
    torch.set_num_threads(os.cpu_count() or 1)
    methods = args.methods.split(",") if args.methods else all_methods()
    pools: dict[str, dict] = {}
    for label in args.models.split(","):
        if label == "toy":
            zoo = build_zoo(ZooRecipe(), log=lambda m: print(m, file=sys.stderr))
            base, experts = zoo / "base", {name: zoo / name for name in EXPERTS}
        else:
            base, experts = smollm2_pool()
        pools[label] = bench_pool(label, base, experts, methods, args.genomes, args.mergekit_genomes)
        if "task_arithmetic" in pools[label]["methods"]:
            model_bytes = int(pools[label]["model_mib"] * 2**20)
            bandwidth = copy_bandwidth_gbs(max(model_bytes, 64 * 2**20))
            pools[label]["copy_bandwidth_gbs"] = round(bandwidth, 2)
            ta = pools[label]["methods"]["task_arithmetic"]
            ta["share_of_copy_bandwidth"] = round(ta["effective_gbs"] / bandwidth, 2)
    result = {
        "benchmark": "merge_speed",
        **provenance(sys.argv),
        "device": "cpu",
        "pools": pools,
        "targets": {"ties_speedup_vs_run_merge": 20, "task_arithmetic_share_of_copy_bandwidth": 0.5},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
