"""Benchmark: how a search scales with evaluators, with experts, and what compact task vectors cost (JSON).

    .venv/bin/python benchmarks/scaling.py --out benchmarks/results/scaling.json [--parts pool,compact_toy]

Each part run replaces its own entry in ``--out`` and keeps the others, so parts may run in separate
sessions (the pool part alone is tens of minutes on 2 cores).

- ``evaluators``: genomes per minute of the demo search (toy zoo, search_spaces/demo.yaml, CMA, one Ray
  session) with 1, 2 and 4 evaluator actors splitting this machine's CPUs but the guard judge's one.
  Steady state: from the first evaluation's start to the last one's end; the whole search's wall clock
  (Ray, Tune, actor start-up) beside it. On 2 cores, 4 evaluators share 2 cores: the figure is what
  oversubscription costs there, not what a cluster gains.
- ``pool``: per-genome merge latency (into a live model; a warm-up merge untimed) and resident pool bytes
  for 2, 4, 8 and 16 experts of SmolLM2-135M's shapes (seeded random weights written here in bfloat16;
  latency does not depend on the values), per method, with a least-squares line through latency against
  the expert count and each point's distance from it (target: linear growth within ±20%). Then the
  16-expert pool with 3 of 16 gates open (a gated pool's merge reads only the open experts), and the
  16-expert pool in each compact form: its bytes, and its latency (expanding a tensor costs time).
- ``compact_toy``, ``compact_smollm2``: per compact form (``merge.task_vectors`` and the pool's dtype),
  the pool's bytes, the relative merge error against the dense float32 pool (over every merged tensor:
  the norm of the difference over the dense merge's norm) and the fitness change of the same genomes
  scored by the real evaluator, on the toy demo config and on the SmolLM2 family when its cache is
  built (any SmolLM2 run or ``make bench-smollm2`` builds it; this benchmark does not: 30-50 minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from gpu_merge import SHAPES, live_model, tensor_shapes, time_merges, write_models

from mergesearch.actors import Evaluator
from mergesearch.config import GatesConfig, SearchConfig, TaskVectorsConfig, load_config
from mergesearch.io import atomic_write_text
from mergesearch.merge.genome import GenomeSpace
from mergesearch.merge.resident import ResidentMerger
from mergesearch.merge.spec import get_method
from mergesearch.runtime import offline_and_quiet, ray_session
from mergesearch.search.run_dir import RunDir
from mergesearch.setup import SearchSetup
from mergesearch.workflow import SEARCH_ONLY, prepare, search_to_report

ROOT = Path(__file__).resolve().parent.parent
DEMO, SMOLLM2 = ROOT / "search_spaces" / "demo.yaml", ROOT / "search_spaces" / "smollm2.yaml"
EXPERT_COUNTS = (2, 4, 8, 16)
POOL_METHODS = ("task_arithmetic", "ties", "dare_ties")
# name: (the pool's dtype, the form); the first is the reference every other is compared with.
FORMS: dict[str, tuple[str, TaskVectorsConfig]] = {
    "dense float32": ("float32", TaskVectorsConfig()),
    "dense bfloat16": ("bfloat16", TaskVectorsConfig()),
    "sparse 0.2 bfloat16": ("bfloat16", TaskVectorsConfig(form="sparse", density=0.2)),
    "sparse 0.05 bfloat16": ("bfloat16", TaskVectorsConfig(form="sparse", density=0.05)),
    "low_rank 64 bfloat16": ("bfloat16", TaskVectorsConfig(form="low_rank", rank=64)),
    "low_rank 16 bfloat16": ("bfloat16", TaskVectorsConfig(form="low_rank", rank=16)),
}


def stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepared(config_path: Path, work: Path) -> SearchSetup:
    return prepare(load_config(config_path), config_path, RunDir(work / "data"), stderr)


def with_config(setup: SearchSetup, **sections: dict) -> SearchSetup:
    """``setup`` with some config sections changed, validated again (``model_copy`` would not check)."""
    data = setup.config.model_dump()
    for section, values in sections.items():
        data[section] = {**data[section], **values}
    return dataclasses.replace(setup, config=SearchConfig.model_validate(data))


# ------------------------------------------------------------------------------------ evaluators
def evaluators_part(work: Path, trials: int) -> dict:
    setup = prepared(DEMO, work)
    cpus = os.cpu_count() or 1
    free = cpus - (1 if setup.config.judge.model else 0)  # the guard judge's actor holds one CPU
    rows = {}
    for count in (1, 2, 4):
        resources = {"num_evaluators": count, "cpus_per_evaluator": free / count}
        search = {"name": "cma", "seed": 0, "num_trials": trials, "warm_starts": []}
        run = RunDir(work / f"evaluators_{count}")
        started = time.perf_counter()
        search_to_report(
            with_config(setup, resources=resources, search=search), run, lambda _: None, SEARCH_ONLY
        )
        wall = time.perf_counter() - started
        done = run.trials()
        busy = [t.timings["evaluator"] for t in done]
        judge = run.efficiency()[-1].get("judge_cache", {})
        window = max(t.finished_at for t in done) - min(t.finished_at - b for t, b in zip(done, busy))
        rows[str(count)] = {
            "trials": len(done),
            "genomes_per_minute_steady": round(60 * len(done) / window, 1),
            "genomes_per_minute_whole_search": round(60 * len(done) / wall, 1),
            "evaluator_busy_s_per_trial": round(statistics.mean(busy), 3),
            "wall_s": round(wall, 1),
            # the judge actor batches requests that wait while it is busy into one call
            "evaluator_requests_per_judge_call": judge.get("requests_per_call"),
        }
        stderr(f"evaluators {count}: {rows[str(count)]}")
    one = rows["1"]["genomes_per_minute_steady"]
    for row in rows.values():
        row["speedup_over_one"] = round(row["genomes_per_minute_steady"] / one, 2)
    return {"config": DEMO.name, "cpus": cpus, "per_evaluator_count": rows}


# ------------------------------------------------------------------------------------ pool
def linear_fit(xs: list[int], ys: list[float]) -> dict:
    slope, intercept = np.polyfit(xs, ys, 1)
    off = [y / (intercept + slope * x) - 1 for x, y in zip(xs, ys)]
    return {
        "ms_per_expert": round(float(slope), 2),
        "intercept_ms": round(float(intercept), 2),
        "worst_distance_from_line": round(max(abs(d) for d in off), 3),
        "linear_within_20_percent": all(abs(d) <= 0.2 for d in off),
    }


def pool_part(
    repeats: int, methods: tuple[str, ...] = POOL_METHODS, pool_forms: tuple[str, ...] = tuple(FORMS)
) -> dict:
    config = SHAPES["smollm2"]
    params = sum(torch.Size(s).numel() for s in tensor_shapes(config).values())
    rows: dict = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        base, experts = write_models(Path(tmp), config, max(EXPERT_COUNTS))
        model = live_model(config, torch.device("cpu"))

        held: dict[tuple, ResidentMerger] = {}  # the last pool built: compact forms cost minutes to build

        def pool_of(count: int, method: str, form: TaskVectorsConfig) -> ResidentMerger:
            sort = get_method(method).uses_magnitude_order and form.form == "dense"  # compact: no sorted copy
            key = (count, sort, form.model_dump_json())
            if key not in held:
                held.clear()
                gc.collect()
                pool = {name: experts[name] for name in list(experts)[:count]}
                held[key] = ResidentMerger(
                    base, pool, dtype="bfloat16", log=lambda _: None, sort_magnitudes=sort, task_vectors=form
                )
            return held[key]

        def timed(count: int, method: str, form: TaskVectorsConfig, open_experts: int | None = None) -> dict:
            merger = pool_of(count, method, form)
            names = tuple(list(experts)[:count])
            if open_experts is None:
                seconds = time_merges(merger, model, method, names, repeats)
            else:
                seconds = time_gated_merges(merger, model, method, names, open_experts, repeats)
            row = {"per_genome_ms": round(seconds * 1000, 1), "pool_bytes": merger.estimate_bytes}
            stderr(f"pool {count} experts, {method}, {form.form}: {row}")
            return row

        for method in methods:
            by_count = {str(n): timed(n, method, TaskVectorsConfig()) for n in EXPERT_COUNTS}
            latency = [by_count[str(n)]["per_genome_ms"] for n in EXPERT_COUNTS]
            rows[method] = {"per_expert_count": by_count, "fit": linear_fit(list(EXPERT_COUNTS), latency)}
        largest = max(EXPERT_COUNTS)
        rows["gated_16_with_3_open"] = {
            m: timed(largest, m, TaskVectorsConfig(), open_experts=3) for m in methods if m != "dare_ties"
        }
        rows["compact_forms_at_16"] = {
            name: {m: timed(largest, m, form) for m in methods if m != "dare_ties"}
            for name, (dtype, form) in FORMS.items()
            if dtype == "bfloat16" and form.form != "dense" and name in pool_forms
        }
    return {
        "shape": "smollm2",
        "params": params,
        "dtype": "bfloat16",
        "includes": "merge into the live model's parameters only; the pool's load and a warm-up untimed",
        "methods": rows,
    }


def time_gated_merges(
    merger: ResidentMerger, model, method: str, experts: tuple[str, ...], open_experts: int, repeats: int
) -> float:
    """Seconds per merge of a gated genome with ``open_experts`` gates open (a different set each time)."""
    space = GenomeSpace(method, experts, merger.num_layers, gates=GatesConfig())
    genomes = []
    for i in range(repeats + 1):
        opened = {experts[(i * 5 + j) % len(experts)] for j in range(open_experts)}
        genome = space.together(tuple(opened))
        genomes.append(genome | {g: 0.6 for g in genome if g.startswith("w.") and genome[g] > 0})
    merger.merge_into(model, space.decode(genomes[0]), seed=0)  # warm-up
    started = time.perf_counter()
    for i, genome in enumerate(genomes[1:], 1):
        merger.merge_into(model, space.decode(genome), seed=i)
    return (time.perf_counter() - started) / repeats


# ------------------------------------------------------------------------------------ compact
def relative_error(mine: ResidentMerger, exact: ResidentMerger, recipe, seed: int) -> float:
    diff = norm = 0.0
    pairs = zip(mine.merged_tensors(recipe, seed), exact.merged_tensors(recipe, seed))
    for (_, merged), (_, reference) in pairs:
        reference = reference.float()
        diff += float((merged.float() - reference).norm() ** 2)
        norm += float(reference.norm() ** 2)
    return (diff / norm) ** 0.5


def random_genomes(setup: SearchSetup, count: int, seed: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    bounds = setup.space.gene_bounds()
    return [{g: float(rng.uniform(lo, hi)) for g, (lo, hi) in bounds.items()} for _ in range(count)]


def compact_part(config_path: Path, work: Path, genomes: int) -> dict:
    setup = prepared(config_path, work)
    chosen = random_genomes(setup, genomes, seed=0)
    reference: dict[str, float] = {}
    rows: dict = {}
    exact = ResidentMerger(setup.base, setup.experts, log=lambda _: None)
    for name, (dtype, form) in FORMS.items():
        started = time.perf_counter()
        evaluator = Evaluator(
            with_config(setup, models={"dtype": dtype}, merge={"task_vectors": form.model_dump()}),
            log=lambda _: None,
        )
        load = time.perf_counter() - started
        fitness = [evaluator.evaluate(g, seed=i).fitness for i, g in enumerate(chosen)]
        if not reference:
            reference = dict(enumerate(fitness))
        recipes = [setup.space.decode(g) for g in chosen]
        errors = [relative_error(evaluator.merger, exact, r, i) for i, r in enumerate(recipes)]
        change = [f - reference[i] for i, f in enumerate(fitness)]
        rows[name] = {
            "pool_bytes": evaluator.merger.estimate_bytes,
            "merge_relative_error_mean": round(statistics.mean(errors), 5),
            "fitness_mean": round(statistics.mean(fitness), 4),
            "fitness_change_mean": round(statistics.mean(change), 4),
            "fitness_change_worst": round(max(change, key=abs), 4),
            "load_s": round(load, 1),
        }
        stderr(f"compact {config_path.name} {name}: {rows[name]}")
        del evaluator
        gc.collect()
    dense = rows["dense float32"]["pool_bytes"]
    for row in rows.values():
        row["pool_bytes_vs_dense_float32"] = round(row["pool_bytes"] / dense, 3)
    return {
        "config": config_path.name,
        "method": setup.config.merge.method,
        "genomes": genomes,
        "pool_bytes_include": "the base (dense, the pool's dtype) + every expert's task vector",
        "forms": rows,
    }


def smollm2_built() -> bool:
    """Whether the SmolLM2 family is in the cache already (resolving it otherwise builds it)."""
    from mergesearch_zoo.smollm2_family import FamilyRecipe, family_dir, is_built

    recipe = FamilyRecipe()
    return is_built(family_dir(recipe), recipe)


PARTS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "evaluators": lambda a: evaluators_part(a.work / "evaluators", a.trials),
    "pool": lambda a: pool_part(a.repeats, tuple(a.methods.split(",")), tuple(a.pool_forms.split(","))),
    "compact_toy": lambda a: compact_part(DEMO, a.work / "compact_toy", a.genomes),
    "compact_smollm2": lambda a: (
        compact_part(SMOLLM2, a.work / "compact_smollm2", a.genomes)
        if smollm2_built()
        else {"skipped": "the SmolLM2 family is not built on this machine"}
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--trials", type=int, default=24, help="per evaluator count")
    parser.add_argument("--repeats", type=int, default=2, help="timed merges per pool size and method")
    parser.add_argument("--methods", default=",".join(POOL_METHODS), help="merge methods the pool part times")
    parser.add_argument(
        "--pool-forms", default=",".join(FORMS), help="compact forms the pool part times at 16"
    )
    parser.add_argument("--genomes", type=int, default=4, help="scored per compact form")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_scaling"))
    args = parser.parse_args()
    offline_and_quiet()
    parts = args.parts.split(",")
    if "evaluators" in parts:
        ray_session(num_cpus=os.cpu_count())
    # parts run in separate sessions land in one file: a part run now replaces only its own entry
    result: dict = json.loads(args.out.read_text()) if args.out.is_file() else {"benchmark": "scaling"}
    for part in parts:
        started = time.perf_counter()
        result[part] = PARTS[part](args)
        result[part]["part_wall_s"] = round(time.perf_counter() - started, 1)
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
