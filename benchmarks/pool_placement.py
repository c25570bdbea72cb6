"""Benchmark: what keeping the merge pool in host RAM costs per genome (JSON).

    .venv/bin/python benchmarks/pool_placement.py --out benchmarks/results/pool_placement.json

`merge.pool_device: gpu` keeps the base and task vectors next to the live model; `host` keeps them in
pinned host RAM and copies each tensor's slice to the model's device as it is merged. Both sides merge
the same genomes (task arithmetic and TIES, per layer) into the same live model on the same device,
from pools loaded before timing; the first merge of each side is a warm-up, not timed. The models are
SmolLM2-135M-shaped (30 layers, 576 wide), with seeded random weights (latency does not depend on the
values) written to a temporary folder, so the benchmark runs anywhere, the GPU machine included.
Without CUDA both placements are the same host memory: the JSON says so and compares nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from mergesearch.io import atomic_write_text
from mergesearch.merge.genome import GenomeSpace
from mergesearch.merge.resident import ResidentMerger

SMOLLM2 = LlamaConfig(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)
EXPERTS = ("a", "b", "c")


def write_models(root: Path) -> tuple[Path, dict[str, Path]]:
    torch.manual_seed(0)
    base = LlamaForCausalLM(SMOLLM2)
    folders = {}
    for name in ("base", *EXPERTS):
        state = {k: v.detach().clone() for k, v in base.state_dict().items() if k != "lm_head.weight"}
        if name != "base":
            state = {k: v + 0.01 * torch.randn_like(v) for k, v in state.items()}
        folder = root / name
        folder.mkdir()
        SMOLLM2.save_pretrained(folder)
        save_file(state, str(folder / "model.safetensors"))
        folders[name] = folder
    return folders.pop("base"), folders


def time_merges(merger: ResidentMerger, model: torch.nn.Module, method: str, repeats: int) -> float:
    space = GenomeSpace(method, EXPERTS, SMOLLM2.num_hidden_layers, granularity="layer")
    genomes = [
        {g: 0.2 + ((i * 7 + j) % 10) / 12 for j, g in enumerate(space.gene_names())}
        for i in range(repeats + 1)
    ]
    merger.merge_into(model, space.decode(genomes[0]))  # warm-up
    sync = torch.cuda.synchronize if merger.device.type == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    for genome in genomes[1:]:
        merger.merge_into(model, space.decode(genome))
    sync()
    return (time.perf_counter() - started) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result: dict = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "per_genome_ms": {},
    }
    if device.type != "cuda":
        result["note"] = "no CUDA: gpu and host placements are the same host memory; nothing to compare"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            base, experts = write_models(Path(tmp))
            model = LlamaForCausalLM.from_pretrained(base, dtype=torch.bfloat16).to(device)
            for pool in ("gpu", "host"):
                merger = ResidentMerger(
                    base,
                    experts,
                    dtype="bfloat16",
                    device=device,
                    pool=pool,
                    log=lambda _: None,
                    sort_magnitudes=True,
                )
                for method in ("task_arithmetic", "ties"):
                    result["per_genome_ms"][f"{method}/{pool}"] = round(
                        time_merges(merger, model, method, args.repeats), 2
                    )
                del merger
                torch.cuda.empty_cache()
            for method in ("task_arithmetic", "ties"):
                times = result["per_genome_ms"]
                result[f"{method}_host_over_gpu"] = round(times[f"{method}/host"] / times[f"{method}/gpu"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
