"""Benchmark: the resident merger's per-genome merge time against the device's copy bandwidth, with the pool
on the device or in pinned host RAM (JSON). Written for the GPU machine; runs anywhere.

    python benchmarks/gpu_merge.py --out benchmarks/results/gpu_merge.json [--shape llama3-8b|smollm2]

Models are generated here with seeded random weights (latency does not depend on the values) in the
shape asked for, in bfloat16, into a scratch folder: base + 2 experts for the device pool; the host pool
holds base + ``--host-experts`` task vectors (experts past the second reuse the first ones' files, so the
disk holds three models). Per genome, every method merges the same genomes (per layer) into one live
model on the device; the first merge of each side is a warm-up, not timed; CUDA is synchronised. The
physical limit is the bytes a merge must move over the measured bandwidth: on the device, base + each task
vector read and the merged tensor written, over a large device-to-device ``copy_``; from the host pool,
base + each task vector over pinned host-to-device copies. ``limit_share`` is that limit's time over the
measured time (1.0: as fast as the memory allows). A method that runs out of device memory (TIES keeps
sorted magnitudes too) is recorded as such. Without CUDA both pools are the same memory: the host rows are
skipped and the figures are the CPU's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig

from mergesearch.errors import UserError
from mergesearch.io import atomic_write_text
from mergesearch.merge.genome import GenomeSpace
from mergesearch.merge.resident import ResidentMerger
from mergesearch.merge.spec import get_method

SHAPES = {
    "smollm2": LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    "llama3-8b": LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
    ),
}
METHODS = ("task_arithmetic", "ties", "dare_ties")


def tensor_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """The checkpoint's tensors (a Llama's names and shapes), without building the model."""
    h, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = h // config.num_attention_heads * config.num_key_value_heads
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, h)
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (f, h),
            p + "mlp.up_proj.weight": (f, h),
            p + "mlp.down_proj.weight": (h, f),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
    return shapes


def write_models(
    root: Path, config: LlamaConfig, experts: int, device: torch.device
) -> tuple[Path, dict[str, Path]]:
    """base + 2 distinct experts on disk; further experts are folders linking to those files. The values
    are drawn on ``device`` (an 8B model's draws take minutes on a CPU) and written from host RAM."""
    generator = torch.Generator(device).manual_seed(0)

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device).cpu()

    shapes = tensor_shapes(config)
    base_state = {k: draw(s).mul_(0.02).bfloat16() for k, s in shapes.items()}
    folders: dict[str, Path] = {}
    for name in ("base", "e0", "e1"):
        state = base_state
        if name != "base":
            state = {k: (v.float() + 0.002 * draw(v.shape)).bfloat16() for k, v in base_state.items()}
        folder = root / name
        folder.mkdir()
        config.save_pretrained(folder)
        save_file(state, str(folder / "model.safetensors"))
        folders[name] = folder
        del state
    for i in range(2, experts):
        folder = root / f"e{i}"
        folder.mkdir()
        for file in folders[f"e{i % 2}"].iterdir():
            os.symlink(file, folder / file.name)
        folders[f"e{i}"] = folder
    return folders.pop("base"), folders


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large on-device copy (read + write counted), best of 5."""
    source = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = float("inf")
    for _ in range(6):
        sync()
        started = time.perf_counter()
        target.copy_(source)
        sync()
        best = min(best, time.perf_counter() - started)
    return 2 * source.numel() / best


def live_model(config: LlamaConfig, device: torch.device) -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    with torch.device(device):
        return LlamaForCausalLM(config).to(torch.bfloat16)


def time_merges(merger: ResidentMerger, model, method: str, experts: tuple[str, ...], repeats: int) -> float:
    space = GenomeSpace(method, experts, merger.num_layers, granularity="layer")
    genomes = [
        {g: 0.2 + ((i * 7 + j) % 10) / 12 for j, g in enumerate(space.gene_names())}
        for i in range(repeats + 1)
    ]
    sync = torch.cuda.synchronize if merger.device.type == "cuda" else (lambda: None)
    merger.merge_into(model, space.decode(genomes[0]), seed=0)  # warm-up (and TIES kernel compilation)
    sync()
    started = time.perf_counter()
    for i, genome in enumerate(genomes[1:], 1):
        merger.merge_into(model, space.decode(genome), seed=i)
    sync()
    return (time.perf_counter() - started) / repeats


def host_to_device_bandwidth() -> float:
    """Bytes per second from pinned host RAM to the GPU, best of 5."""
    source = torch.empty(256 * 2**20, dtype=torch.uint8).pin_memory()
    target = torch.empty(source.shape, dtype=torch.uint8, device="cuda")
    best = float("inf")
    for _ in range(6):
        torch.cuda.synchronize()
        started = time.perf_counter()
        target.copy_(source, non_blocking=True)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return source.numel() / best


def measure(
    base, experts, device, pool, repeats, model, model_bytes, limit_bytes_per_s, methods, keep
) -> dict:
    """Per method: ms per genome, the bytes the limit counts, and the share of that limit reached. The
    device pool's limit is the device copy bandwidth over base + task vectors read and the result written;
    the host pool's is the host-to-device bandwidth over base + task vectors crossing. A pool that the
    merger's own check refuses (TIES keeps sorted magnitudes too) is recorded with that check's line;
    ``keep`` is called with the rows after each method (a long run keeps what it measured)."""
    rows: dict = {}
    moved = model_bytes * (len(experts) + (2 if pool == "gpu" else 1))
    for method in methods:
        merger = None
        try:
            merger = ResidentMerger(
                base,
                experts,
                dtype="bfloat16",
                device=device,
                pool=pool,
                log=lambda _: None,
                sort_magnitudes=get_method(method).uses_magnitude_order,
            )
            seconds = time_merges(merger, model, method, tuple(experts), repeats)
        except torch.cuda.OutOfMemoryError as error:
            rows[method] = {"error": f"out of memory: {str(error).splitlines()[0]}"}
        except UserError as error:  # the pool-fit check, before anything is loaded
            rows[method] = {"error": str(error)}
        else:
            rows[method] = {
                "per_genome_ms": round(seconds * 1000, 2),
                "bytes_counted_gib": round(moved / 2**30, 2),
                "limit_share": round(moved / limit_bytes_per_s / seconds, 3),
            }
        del merger
        if device.type == "cuda":
            torch.cuda.empty_cache()
        keep(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: llama3-8b on CUDA")
    parser.add_argument("--host-experts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS), help="for the pool on the device")
    parser.add_argument(
        "--host-methods",
        default=",".join(METHODS),
        help="for the pool in host RAM (TIES sorts its magnitudes there, on the CPU: minutes at 8B)",
    )
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    shape = args.shape or ("llama3-8b" if cuda else "smollm2")
    config = SHAPES[shape]
    bandwidth = copy_bandwidth(device)
    params = sum(torch.Size(s).numel() for s in tensor_shapes(config).values())
    result: dict = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "shape": shape,
        "params": params,
        "copy_bandwidth_gib_s": round(bandwidth / 2**30, 1),
        "includes": "merge into the live model's parameters only; warm-up (and compilation) untimed",
    }
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        base, experts = write_models(Path(tmp), config, max(2, args.host_experts if cuda else 2), device)
        model = live_model(config, device)
        pool_bytes = params * 2
        two = {k: experts[k] for k in ("e0", "e1")}

        def keep(section: str) -> Callable[[dict], None]:
            return lambda rows: save(args.out, result | {section: rows})

        result["pool_on_device"] = measure(
            base,
            two,
            device,
            "gpu",
            args.repeats,
            model,
            pool_bytes,
            bandwidth,
            args.methods.split(","),
            keep("pool_on_device"),
        )
        if cuda:
            h2d = host_to_device_bandwidth()
            result["host_to_device_gib_s"] = round(h2d / 2**30, 1)
            result["pool_in_host_ram"] = measure(
                base,
                experts,
                device,
                "host",
                args.repeats,
                model,
                pool_bytes,
                h2d,
                args.host_methods.split(","),
                keep("pool_in_host_ram"),
            )
        else:
            result["note"] = "no CUDA: the pool is in host RAM either way; host-pool rows skipped"
    save(args.out, result)
    json.dump(result, sys.stdout, indent=2)


def save(out: Path, result: dict) -> None:
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
