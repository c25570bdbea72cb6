"""The memory plan: what each actor holds, in which memory, and whether that fits the cluster's nodes.

Read from ``config.json`` files and safetensors headers alone, so that a plan which cannot fit is refused
in one line before a cluster spends an hour loading models (``mergesearch plan``, and ``search`` before
any actor starts). Sizes are estimates with stated assumptions (``ASSUMED``): weights and pools are
exact byte counts; KV caches and process overheads are sized for the configured batch and lengths.

Node types come from a Ray cluster launcher file (``available_node_types``: ``resources`` CPU, GPU and
``memory``, Ray's heap bytes; the GPU's memory as the label ``mergesearch/gpu-memory-gib``), from the
live Ray cluster, or from this machine.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mergesearch.config import DTYPE_BYTES, EngineConfig, read_yaml
from mergesearch.errors import UserError
from mergesearch.merge.compact import (
    expansion_bytes,
    host_pool_merge_bytes,
    largest_tensor_bytes,
    load_bytes,
)
from mergesearch.merge.compact import pool_bytes as compact_pool_bytes
from mergesearch.merge.spec import get_method
from mergesearch.model_files import config_tensor_shapes, model_config, tensor_shapes
from mergesearch.setup import SearchSetup

GIB = 2**30
Memory = Literal["gpu", "host"]
GPU_MEMORY_LABEL = "mergesearch/gpu-memory-gib"
ASSUMED = {
    "process_host_bytes": 2 * GIB,  # a Ray worker with torch (and a CUDA context) imported
    "prompt_tokens": 512,  # a candidate prompt, chat template included
    "guard_prompt_tokens": 1024,  # the guard's policy prompt + the conversation
    "vllm_utilization_gpu": 0.9,  # vLLM's default gpu_memory_utilization
    "vllm_cpu_kv_bytes": 1 * GIB,  # VLLM_CPU_KVCACHE_SPACE on the CPU build (backends/vllm.py)
    "shard_bytes": 2 * GIB,  # promotion writes the merged model shard by shard (merge/export.py)
    "heap_share": 0.7,  # Ray keeps ~30% of a node's RAM for its object store
}


def human(size: float) -> str:
    """Bytes as MiB below one GiB, GiB above."""
    return f"{size / GIB:.1f} GiB" if size >= GIB else f"{size / 2**20:.0f} MiB"


# ------------------------------------------------------------------------------------ model shapes
@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a model folder: its parameter count and attention geometry."""

    folder: Path
    shapes: dict[str, tuple[int, ...]]  # every tensor's, from the headers
    layers: int
    kv_width: int  # key/value heads x head dim
    positions: int

    @classmethod
    def of(cls, folder: str | Path, from_config: bool = False) -> ModelShape:
        """From the safetensors headers; ``from_config``: from config.json alone (a rehearsal, before the
        weights are downloaded)."""
        folder = Path(folder)
        config = model_config(folder)
        config = config.get("text_config", config)
        heads = config.get("num_attention_heads", 1)
        head_dim = config.get("head_dim") or config.get("hidden_size", 0) // max(heads, 1)
        return cls(
            folder,
            config_tensor_shapes(folder) if from_config else tensor_shapes(folder),
            config.get("num_hidden_layers", 0),
            config.get("num_key_value_heads", heads) * head_dim,
            config.get("max_position_embeddings", 2048),
        )

    @property
    def params(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes.values())

    def kv_bytes(self, tokens: int, dtype: str) -> int:
        """Keys and values of ``tokens`` tokens over every layer."""
        return tokens * self.layers * 2 * self.kv_width * DTYPE_BYTES[dtype]


def factor_bytes(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """An upper bound on TSV-style factor caches: per matrix, U (m x r), s (r), V (r x k) in float32 with
    r = min(m, k) (the experts' kept ranks together never exceed it)."""
    total = 0
    for shape in shapes.values():
        if len(shape) == 2:
            m, k = shape
            rank = min(m, k)
            total += (m * rank + rank + rank * k) * 4
    return total


# ------------------------------------------------------------------------------------ what actors hold
@dataclass(frozen=True)
class Holding:
    """Bytes in one memory; or, for a vLLM engine on a GPU, a share of the whole GPU it reserves at
    start-up (``gpu_share``), which must hold ``inside`` (its weights + one full-length sequence's KV)."""

    what: str
    memory: Memory
    bytes: int = 0
    gpu_share: float = 0.0
    inside: int = 0

    def size(self, gpu_bytes: int) -> int:
        return self.bytes + int(self.gpu_share * gpu_bytes)


@dataclass(frozen=True)
class ActorPlan:
    """One kind of actor: how many, what each asks Ray for, and what each holds."""

    role: str
    count: int
    cpus: float
    gpus: float
    holdings: tuple[Holding, ...]

    def need(self, memory: Memory, gpu_bytes: int = 0) -> int:
        return sum(h.size(gpu_bytes) for h in self.holdings if h.memory == memory)


def engine_holdings(
    what: str, shape: ModelShape, engine: EngineConfig, kind: str, on_gpu: bool, batch: int, tokens: int
) -> list[Holding]:
    """A model run by a backend: its weights and KV cache (vLLM on a GPU: the share it reserves)."""
    dtype = engine.dtype or "float32"
    weights = shape.params * DTYPE_BYTES[dtype]
    where: Memory = "gpu" if on_gpu else "host"
    if kind != "vllm":
        return [
            Holding(f"{what} ({dtype})", where, weights),
            Holding(
                f"{what}: KV cache, {batch} x {tokens} tokens", where, shape.kv_bytes(batch * tokens, dtype)
            ),
        ]
    if not on_gpu:
        return [
            Holding(f"{what} on vLLM ({dtype})", "host", weights),
            Holding(f"{what}: vLLM KV cache (CPU build)", "host", ASSUMED["vllm_cpu_kv_bytes"]),
        ]
    share = engine.gpu_memory_utilization or ASSUMED["vllm_utilization_gpu"]
    context = min(engine.max_model_len or shape.positions, shape.positions)
    held = [
        Holding(
            f"{what} on vLLM ({dtype}): weights + KV cache, {share:.2f} of the GPU",
            "gpu",
            gpu_share=share,
            inside=weights + shape.kv_bytes(context, dtype),
        )
    ]
    if getattr(engine, "sleep_mode", False):  # a candidate engine only
        held.append(Holding(f"{what}: weights while the engine sleeps", "host", weights))
    return held


def plan_actors(setup: SearchSetup, from_config: bool = False) -> list[ActorPlan]:
    """Evaluators, the judge actor (with a guard model) and the promotion worker of ``setup``'s search;
    ``from_config``: the models sized from their config.json files alone (``ModelShape.of``)."""
    config = setup.config
    res, backend, judge, promotion = config.resources, config.backend, config.judge, config.promotion
    base = ModelShape.of(setup.base, from_config)
    pool_bytes = base.params * DTYPE_BYTES[config.models.dtype]
    n = len(setup.experts)
    methods = [get_method(m) for m in config.merge.methods]  # with choices, what any of them holds
    pool: Memory = "gpu" if res.gpus_per_evaluator > 0 and config.merge.pool_device == "gpu" else "host"
    dtype, form = config.models.dtype, config.merge.task_vectors
    pinned = ", pinned" if pool == "host" and res.gpus_per_evaluator else ""
    tau_bytes = compact_pool_bytes(base.shapes, DTYPE_BYTES[dtype], form)
    evaluator = [
        Holding(f"base ({dtype}{pinned})", pool, pool_bytes),
        Holding(f"{n} task vectors ({form.form}, {dtype}{pinned})", pool, n * tau_bytes),
    ]
    sorts = any(m.uses_magnitude_order for m in methods) and form.form == "dense"
    if sorts:
        evaluator.append(Holding(f"{n} sorted |task vector|s ({dtype})", pool, n * pool_bytes))
    load = load_bytes(base.shapes, n * pool_bytes if sorts else 0)
    if load:
        evaluator.append(Holding("load: an expert's tensor and the base's (float32)", pool, load))
    merging_on: Memory = "gpu" if res.gpus_per_evaluator > 0 else "host"
    if any(m.stacks_experts for m in methods):  # every expert's copy of a tensor at once, beside the pool
        work = n * largest_tensor_bytes(base.shapes, DTYPE_BYTES[dtype])
        evaluator.append(Holding(f"merge work: {n} stacked copies of the largest tensor", merging_on, work))
    if form.form != "dense":
        work = expansion_bytes(base.shapes, DTYPE_BYTES[dtype], n, form)
        evaluator.append(Holding(f"{n} expanded copies of the largest tensor", merging_on, work))
    elif pool == "host" and res.gpus_per_evaluator > 0:  # each tensor's slices go to the GPU to be merged
        work = host_pool_merge_bytes(base.shapes, DTYPE_BYTES[dtype], n, sorts)
        what = f"merge work: the largest tensor's base + {n} task vectors{' + sorted' if sorts else ''}"
        evaluator.append(Holding(f"{what} on the GPU ({dtype})", "gpu", work))
    if any(m.factorize is not None for m in methods):
        evaluator.append(Holding("factor cache (at most)", pool, factor_bytes(base.shapes)))
    tokens = ASSUMED["prompt_tokens"] + backend.max_new_tokens
    evaluator += engine_holdings(
        "live model", base, backend, backend.kind, res.gpus_per_evaluator > 0, backend.batch_size, tokens
    )
    overhead = Holding("process: torch, Ray worker", "host", ASSUMED["process_host_bytes"])
    actors = [
        ActorPlan(
            "evaluator",
            1 if res.num_evaluators == "auto" else res.num_evaluators,  # auto: settled on the cluster
            res.cpus_per_evaluator,
            res.gpus_per_evaluator,
            (*evaluator, overhead),
        )
    ]
    guard = ModelShape.of(judge.model, from_config) if judge.model else None
    guard_tokens = ASSUMED["guard_prompt_tokens"] + 10

    def guard_holdings(kind: str, on_gpu: bool) -> list[Holding]:
        assert guard is not None
        return engine_holdings("guard model", guard, judge, kind, on_gpu, judge.batch_size, guard_tokens)

    if guard is not None:
        held = guard_holdings(judge.backend, res.gpus_per_judge > 0)
        actors.append(ActorPlan("judge", 1, 1.0, res.gpus_per_judge, (*held, overhead)))
    if promotion.top_k:
        on_gpu = promotion.gpus > 0
        held = [Holding("merge buffer: one shard", "host", min(ASSUMED["shard_bytes"], pool_bytes))]
        held += engine_holdings("promoted model", base, backend, "hf", on_gpu, promotion.batch_size, tokens)
        if promotion.backend == "vllm":
            held += engine_holdings("promoted model, lm-eval", base, backend, "vllm", on_gpu, 1, tokens)
        if guard is not None:
            held += guard_holdings("hf", on_gpu)
        actors.append(ActorPlan("promotion", 1, promotion.cpus, promotion.gpus, (*held, overhead)))
    return actors


# ------------------------------------------------------------------------------------ nodes
@dataclass(frozen=True)
class NodeType:
    """What one node offers: Ray's CPU, GPU and heap ``memory`` resources, and each GPU's memory."""

    name: str
    cpus: float
    gpus: float
    host_bytes: int
    gpu_bytes: int | None  # per GPU; None: not known (not checked)

    def hosts(self, actor: ActorPlan) -> int:
        """How many such actors Ray can place on one node of this type (by CPU and GPU)."""
        by_cpu = math.floor(self.cpus / actor.cpus + 1e-9) if actor.cpus else math.inf
        by_gpu = math.floor(self.gpus / actor.gpus + 1e-9) if actor.gpus else math.inf
        return int(min(by_cpu, by_gpu, 1_000_000))

    def describe(self) -> str:
        gpu = f", {self.gpus:g} GPU" + (f" of {self.gpu_bytes / GIB:.0f} GiB" if self.gpu_bytes else "")
        return (
            f"{self.name} ({self.cpus:g} CPU{gpu if self.gpus else ''}, {self.host_bytes / GIB:.0f} GiB heap)"
        )


def cluster_nodes(path: str | Path) -> list[NodeType]:
    """The node types of a Ray cluster launcher file."""
    data = read_yaml(path)
    types = data.get("available_node_types") if isinstance(data, dict) else None
    if not isinstance(types, dict) or not types:
        raise UserError(f"{path}: no available_node_types (a Ray cluster launcher file lists its node types)")
    nodes = []
    for name, spec in types.items():
        resources = (spec or {}).get("resources") or {}
        labels = (spec or {}).get("labels") or {}
        where = f"{path}: available_node_types.{name}"
        if "memory" not in resources:
            raise UserError(f"{where}.resources: declare `memory` (Ray's heap bytes for actors on this node)")
        try:
            cpus, gpus, memory = (float(resources.get(k, 0)) for k in ("CPU", "GPU", "memory"))
        except (TypeError, ValueError):
            raise UserError(f"{where}.resources: CPU, GPU and memory must be numbers ({resources})") from None
        gpu_gib = labels.get(GPU_MEMORY_LABEL)
        if gpus and gpu_gib is None:
            raise UserError(f'{where}.labels: declare each GPU\'s memory, e.g. {GPU_MEMORY_LABEL}: "48"')
        try:
            gpu_bytes = int(float(gpu_gib) * GIB) if gpu_gib is not None else None
        except ValueError:
            raise UserError(f"{where}.labels.{GPU_MEMORY_LABEL}: not a number ({gpu_gib!r})") from None
        nodes.append(NodeType(name, cpus, gpus, int(memory), gpu_bytes))
    return nodes


def this_machine() -> NodeType:
    """This machine as Ray would offer it: its CPUs and GPUs, ~70% of its RAM as actor heap."""
    import torch

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    gpus = torch.cuda.device_count()
    gpu_bytes = torch.cuda.get_device_properties(0).total_memory if gpus else None
    return NodeType(
        "this machine", float(os.cpu_count() or 1), float(gpus), int(total * ASSUMED["heap_share"]), gpu_bytes
    )


def ray_nodes(nodes: Iterable[Mapping[str, Any]], local_gpu_bytes: int | None = None) -> list[NodeType]:
    """The live nodes of a Ray cluster (``ray.nodes()``); GPU memory from their labels, else
    ``local_gpu_bytes`` (search passes the driver's GPU, when it has one), else unknown."""
    local = local_gpu_bytes
    found = []
    for node in nodes:
        if not node.get("Alive", True):
            continue
        resources, labels = node.get("Resources", {}), node.get("Labels", {}) or {}
        gib = labels.get(GPU_MEMORY_LABEL)
        found.append(
            NodeType(
                node.get("NodeManagerAddress", "node"),
                float(resources.get("CPU", 0)),
                float(resources.get("GPU", 0)),
                int(resources.get("memory", 0)),
                int(float(gib) * GIB) if gib else local,
            )
        )
    return found


# ------------------------------------------------------------------------------------ fitting
@dataclass(frozen=True)
class Placement:
    actor: ActorPlan
    node: NodeType | None  # the first node type it fits on; None: none
    shortfall: str = ""  # why the best candidate node type did not fit (one clause)


def _shortfall(actor: ActorPlan, node: NodeType) -> str:
    """'' if ``actor`` fits ``node``; else which memory is short, and by how much."""
    per_node = node.hosts(actor)
    if per_node < 1:
        return f"asks for {actor.cpus:g} CPU + {actor.gpus:g} GPU, {node.describe()} has fewer"
    if actor.gpus and node.gpu_bytes is not None:
        gpu_budget = int(actor.gpus * node.gpu_bytes)
        for h in actor.holdings:
            if h.gpu_share and h.gpu_share * node.gpu_bytes < h.inside:
                return (
                    f"{h.what.split(':')[0]}: {h.gpu_share:.2f} of a {node.gpu_bytes / GIB:.0f} GiB GPU is "
                    f"{h.gpu_share * node.gpu_bytes / GIB:.1f} GiB; its weights + one full-length "
                    f"sequence need {h.inside / GIB:.1f} GiB"
                )
        need = actor.need("gpu", node.gpu_bytes)
        if need > gpu_budget:
            return (
                f"needs {need / GIB:.1f} GiB of GPU memory, its {actor.gpus:g} GPU of {node.name} has "
                f"{gpu_budget / GIB:.1f} GiB (short {(need - gpu_budget) / GIB:.1f} GiB)"
            )
    together = min(per_node, actor.count)
    host = actor.need("host") * together
    if host > node.host_bytes:
        return (
            f"{together} per {node.name} node need {host / GIB:.1f} GiB of host RAM, it has "
            f"{node.host_bytes / GIB:.1f} GiB heap (short {(host - node.host_bytes) / GIB:.1f} GiB)"
        )
    return ""


RESOURCE_REMEDIES = "remedies: a smaller CPU or GPU share in resources (or promotion), or nodes that have it"
REMEDIES = (
    "remedies: models.dtype bfloat16, merge.pool_device host (GPU short) or gpu (host short), fewer experts, "
    "a smaller gpu_memory_utilization / max_model_len / batch_size, or bigger nodes"
)


def place(actors: Sequence[ActorPlan], nodes: Sequence[NodeType]) -> list[Placement]:
    placements = []
    for actor in actors:
        # (node, shortfall) pairs, not a dict by name: Ray nodes sharing one host share its address
        reasons = [(node, _shortfall(actor, node)) for node in nodes]
        fits = [node for node, reason in reasons if not reason]
        if fits:
            placements.append(Placement(actor, fits[0]))
            continue
        hostable = [(n, reason) for n, reason in reasons if n.hosts(actor) >= 1]
        if not hostable:  # no node has the CPUs and GPUs it asks for: say what there is
            there = ", ".join(dict.fromkeys(n.describe() for n in nodes)) or "no node"
            shortfall = f"asks for {actor.cpus:g} CPU + {actor.gpus:g} GPU, no node has that ({there})"
            placements.append(Placement(actor, None, shortfall))
            continue
        placements.append(Placement(actor, None, hostable[0][1]))
    return placements


def refuse_unplaced(placements: Sequence[Placement], source: str) -> None:
    """One UserError line naming the first actor that fits nowhere, the memory and the shortfall."""
    for p in placements:
        if p.node is None:
            remedies = RESOURCE_REMEDIES if "no node has that" in p.shortfall else REMEDIES
            raise UserError(f"plan ({source}): {p.actor.role} does not fit: {p.shortfall}; {remedies}")


SEARCH_ROLES = ("evaluator", "judge")  # the actors that live together through a search


def together_shortfall(actors: Sequence[ActorPlan], nodes: Sequence[NodeType]) -> str:
    """'' if the search's actors fit the nodes all at once, by CPUs and GPUs; else one clause saying
    what they ask and what there is. (Each fitting some node is not enough: an evaluator holding every
    CPU leaves the judge waiting, and the search with it, forever.)"""
    search = [a for a in actors if a.role in SEARCH_ROLES]
    asked = {kind: sum(a.count * getattr(a, kind) for a in search) for kind in ("cpus", "gpus")}
    have = {kind: sum(getattr(n, kind) for n in nodes) for kind in ("cpus", "gpus")}
    for kind, unit in (("cpus", "CPU"), ("gpus", "GPU")):
        if asked[kind] > have[kind] + 1e-9:
            parts = " + ".join(f"{a.role} x{a.count} {getattr(a, kind):g} {unit}" for a in search)
            total = f"{asked[kind]:g} {unit} together ({parts})"
            return f"the search's actors ask for {total}, there are {have[kind]:g}"
    return ""


def check_plan(
    actors: Sequence[ActorPlan], nodes: Sequence[NodeType], source: str, together: bool = False
) -> list[Placement]:
    """Every actor placed on a node type, or one line saying which does not fit and why; ``together``:
    the nodes are all there will be (no autoscaler), so the search's actors must fit them at once."""
    placements = place(actors, nodes)
    refuse_unplaced(placements, source)
    shortfall = together_shortfall(actors, nodes) if together else ""
    if shortfall:
        raise UserError(
            f"plan ({source}): {shortfall}; lower resources.num_evaluators or cpus_per_evaluator "
            "(gpus_per_evaluator / gpus_per_judge)"
        )
    return placements


def _needs(actor: ActorPlan, node: NodeType | None) -> str:
    """What one such actor needs: GPU memory (``?`` where the node's GPU size is unknown) and host RAM."""
    gpu_bytes = node.gpu_bytes if node else None
    gpu = human(actor.need("gpu", gpu_bytes)) if gpu_bytes is not None else "?"
    return (f"GPU {gpu}, " if actor.gpus else "") + f"host {human(actor.need('host'))}"


def plan_summary(placements: Sequence[Placement]) -> list[str]:
    """One line per actor for a search's log: where it fits, and when a GPU memory check was skipped."""
    lines = []
    for p in placements:
        actor, node = p.actor, p.node
        assert node is not None, "summarise a checked plan"
        unchecked = (
            f" (GPU memory unknown: label {GPU_MEMORY_LABEL} unset, so not checked)"
            if actor.gpus and node.gpu_bytes is None
            else ""
        )
        needs = f"{actor.role} x{actor.count} needs {_needs(actor, node)} each"
        lines.append(f"plan: {needs}; fits {node.describe()}{unchecked}")
    return lines


def render_plan(placements: Sequence[Placement], source: str) -> str:
    """A table per actor: each holding, its memory and size; then where it fits."""
    lines = [f"memory plan against {source}"]
    for p in placements:
        actor, node = p.actor, p.node
        gpu_bytes = (node.gpu_bytes if node else None) or 0
        lines.append(f"\n{actor.role} x{actor.count}  ({actor.cpus:g} CPU, {actor.gpus:g} GPU each)")
        for h in actor.holdings:
            size = human(h.size(gpu_bytes)) if (h.bytes or gpu_bytes) else "GPU share"
            lines.append(f"  {h.memory:4}  {size:>10}  {h.what}")
        verdict = f"fits {node.describe()}" if node else f"DOES NOT FIT: {p.shortfall}"
        lines.append(f"  each: {_needs(actor, node)}; {verdict}")
    return "\n".join(lines)


def plan_for(setup: SearchSetup, cluster: str | Path | None = None) -> tuple[list[Placement], str]:
    """The placements of ``setup``'s actors on ``cluster``'s node types (default: this machine)."""
    nodes = cluster_nodes(cluster) if cluster else [this_machine()]
    source = str(cluster) if cluster else "this machine"
    return place(plan_actors(setup), nodes), source
