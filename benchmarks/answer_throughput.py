"""Benchmark: answering throughput, batched vs one prompt at a time, on the toy zoo and SmolLM2-135M (JSON).

    .venv/bin/python benchmarks/answer_throughput.py --out benchmarks/results/answer_throughput.json

The same prompts (the toy data spec's harmful and benign requests and task questions) are answered
greedily through the HF backend with the chat template, once with ``batch_size`` prompts per forward
pass and once with one prompt per pass, in the same run. Target: batched >= 4x faster on CPU. The two
runs must also give the same replies (batching may not change what a model says). Each mode's time is
the median of up to three runs (fewer when a run takes over 30 s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from mergesearch.backends.hf import HFBackend
from mergesearch.config import load_config
from mergesearch.datagen.pipeline import generate_prompts
from mergesearch.datagen.spec import DataSpec
from mergesearch.io import atomic_write_text
from mergesearch.model_refs import resolve_model
from mergesearch.runtime import offline_and_quiet

SPEC = Path(__file__).parent.parent / "data_specs" / "toy.yaml"


def measure(model: Path, prompts: list[str], batch_size: int, max_new_tokens: int) -> dict:
    backend = HFBackend.from_pretrained(model, device="cpu", max_new_tokens=max_new_tokens)
    backend.generate(prompts[:2])  # warm-up: first-call allocations are not the steady state
    timings, replies = {}, {}
    for label, size in (("batched", batch_size), ("one_by_one", 1)):
        backend.batch_size = size
        runs = []
        while len(runs) < 3 and sum(runs) < 30:  # the median of up to 3 runs: sub-second runs are noisy
            started = time.perf_counter()
            replies[label] = backend.generate(prompts)
            runs.append(time.perf_counter() - started)
        timings[label] = statistics.median(runs)
        print(
            f"{model.name}: {label} {len(prompts) / timings[label]:.1f} prompts/s",
            file=sys.stderr,
            flush=True,
        )
    agree = sum(a == b for a, b in zip(replies["batched"], replies["one_by_one"])) / len(prompts)
    return {
        "prompts": len(prompts),
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "batched_prompts_per_s": round(len(prompts) / timings["batched"], 2),
        "one_by_one_prompts_per_s": round(len(prompts) / timings["one_by_one"], 2),
        "speedup": round(timings["one_by_one"] / timings["batched"], 2),
        "same_replies_share": round(agree, 4),
        "batched_s": round(timings["batched"], 2),
        "one_by_one_s": round(timings["one_by_one"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="zoo:aligned,smollm2")
    parser.add_argument("--prompts", type=int, default=128, help="prompts per model")
    parser.add_argument("--batch-size", type=int, default=64, help="the toy data spec's answer.batch_size")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()
    offline_and_quiet()
    torch.set_num_threads(os.cpu_count() or 1)
    spec = load_config(SPEC, DataSpec)
    rows, _ = generate_prompts(spec, log=lambda _: None)
    step = max(1, len(rows) // args.prompts)
    prompts = [r.prompt for r in rows[::step]][: args.prompts]
    models = {}
    for ref in args.models.split(","):
        path = resolve_model(ref, "--models", log=lambda m: print(m, file=sys.stderr))
        models[ref] = measure(path, prompts, args.batch_size, args.max_new_tokens)
    result = {
        "benchmark": "answer_throughput",
        "device": "cpu",
        "models": models,
        "target": {"speedup": 4.0},
        "met": {ref: m["speedup"] >= 4.0 for ref, m in models.items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
