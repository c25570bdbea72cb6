"""The memory plan: what each actor holds and whether it fits, from headers alone (8B-shaped sparse files).

A plan that cannot fit is one line naming the actor, the memory and the shortfall, before anything loads;
every shipped GPU config fits the shipped cluster file.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from cli_helpers import assert_one_line_error, run
from shaped_models import LLAMA3_8B, llama_tensors, shaped_checkpoint

from mergesearch.config import SearchConfig, validate_mapping
from mergesearch.errors import UserError
from mergesearch.plan import (
    GIB,
    GPU_MEMORY_LABEL,
    NodeType,
    check_plan,
    cluster_nodes,
    plan_actors,
    plan_summary,
    ray_nodes,
)
from mergesearch.setup import SearchSetup

ROOT = Path(__file__).resolve().parents[1]
GPU_CONFIGS = sorted((ROOT / "search_spaces").glob("*gpu*.yaml"))
EIGHT_B = 8_030_261_248  # parameters of a Llama-3-8B checkpoint (its tensors' shapes)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """One 8B-shaped folder per model a shipped GPU config names (the guard has the same shape)."""
    root = tmp_path_factory.mktemp("shaped")
    for config in GPU_CONFIGS:
        data = yaml.safe_load(config.read_text())
        paths = [data["models"]["base"], *(e["path"] for e in data["models"]["experts"])]
        for path in [*paths, data.get("judge", {}).get("model")]:
            if path and not (root / Path(path).name).exists():
                shaped_checkpoint(root / Path(path).name)
    return root


def localized(config: Path, shaped: Path, tmp_path: Path, **changes: dict) -> Path:
    """``config`` with its model paths pointing at the shaped folders, and ``changes`` merged per section."""
    data = yaml.safe_load(config.read_text())
    data["models"]["base"] = str(shaped / Path(data["models"]["base"]).name)
    for expert in data["models"]["experts"]:
        expert["path"] = str(shaped / Path(expert["path"]).name)
    if data.get("judge", {}).get("model"):
        data["judge"]["model"] = str(shaped / Path(data["judge"]["model"]).name)
    # lm-eval's datasets are not cached here (no hub): `plan` would name them first (test_lm_eval_datasets.py)
    data["promotion"]["tasks"] = []
    for section, values in changes.items():
        data[section] = {**data.get(section, {}), **values}
    out = tmp_path / config.name
    out.write_text(yaml.safe_dump(data))
    return out


def setup_of(path: Path) -> SearchSetup:
    return SearchSetup.prepare(validate_mapping(SearchConfig, yaml.safe_load(path.read_text()), str(path)))


@pytest.mark.parametrize("config", GPU_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_gpu_config_fits_the_shipped_cluster(config, models, tmp_path) -> None:
    done = run("plan", str(localized(config, models, tmp_path)), "--cluster", str(ROOT / "cluster.yaml"))
    assert done.returncode == 0, done.stderr
    assert "DOES NOT FIT" not in done.stdout
    guard = yaml.safe_load(config.read_text()).get("judge", {}).get("model")
    for role in ("evaluator", "promotion", *(["judge"] if guard else [])):
        assert f"\n{role} x" in done.stdout
    assert ("\njudge x" in done.stdout) == bool(guard)  # a judge actor only for a guard model


# The machine most researchers have: one node, 4 GPUs of 48 GB (45 GiB usable), 64 cores, 512 GiB of RAM
# of which Ray's heap is about 70%.
FOUR_GPU_NODE = NodeType("4-GPU node", 64, 4, 350 * GIB, 45 * GIB)


@pytest.mark.parametrize("config", GPU_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_gpu_config_fits_a_single_4_gpu_node_all_at_once(config, models, tmp_path) -> None:
    actors = plan_actors(setup_of(localized(config, models, tmp_path)))
    placements = check_plan(actors, [FOUR_GPU_NODE], "a 4-GPU node", together=True)
    assert all(p.node == FOUR_GPU_NODE for p in placements)


def test_the_plan_counts_the_pool_exactly_from_the_headers(models, tmp_path) -> None:
    config = localized(GPU_CONFIGS[0], models, tmp_path, merge={"method": "ties", "pool_device": "host"})
    evaluator = plan_actors(setup_of(config))[0]
    held = {h.what.split(" (")[0]: h for h in evaluator.holdings}
    assert held["base"].bytes == EIGHT_B * 2 and held["base"].memory == "host"
    assert held["3 task vectors"].bytes == 3 * EIGHT_B * 2
    assert held["3 sorted |task vector|s"].bytes == 3 * EIGHT_B * 2  # TIES keeps sorted magnitudes
    # merged on the GPU, one tensor at a time: the largest's base, task vectors and sorted magnitudes
    largest = max(math.prod(shape) for shape in llama_tensors(LLAMA3_8B).values())  # the embeddings
    merging = held["merge work: the largest tensor's base + 3 task vectors + sorted on the GPU"]
    assert merging.bytes == (1 + 3 + 3) * largest * 2 and merging.memory == "gpu"
    vllm_share = 0.8 * 48 * GIB
    assert evaluator.need("gpu", 48 * GIB) == pytest.approx(vllm_share + merging.bytes, abs=1)


def test_a_host_pool_whose_merge_work_does_not_fit_beside_vllm_is_refused(models, tmp_path) -> None:
    """0.9 of a 45 GiB GPU for vLLM leaves 4.5 GiB; TIES copies 7 embeddings-sized tensors (6.8 GiB)."""
    config = localized(
        GPU_CONFIGS[0], models, tmp_path, merge={"method": "ties"}, backend={"gpu_memory_utilization": 0.9}
    )
    done = run("plan", str(config), "--cluster", str(ROOT / "cluster.yaml"))
    assert_one_line_error(done, "evaluator does not fit", "GiB of GPU memory", "short")
    assert "merge work" in done.stdout


def compact_bytes(shape: list[int], form: dict) -> int:
    """One bfloat16 tensor's bytes in ``form``, written out here so the plan's own formula is checked."""
    numel = math.prod(shape)
    if form["form"] == "sparse":
        return round(form["density"] * numel) * (4 + 2)  # an int32 position and a bfloat16 value
    rank = form["rank"]
    factored = len(shape) == 2 and rank * sum(shape) < numel
    return rank * sum(shape) * 2 if factored else numel * 2


@pytest.mark.parametrize(
    "form", [{"form": "sparse", "density": 0.1}, {"form": "low_rank", "rank": 64}], ids=lambda f: f["form"]
)
def test_the_plan_counts_compact_task_vectors_and_no_sorted_copy(models, tmp_path, form) -> None:
    merge = {"method": "ties", "pool_device": "host", "task_vectors": form}
    evaluator = plan_actors(setup_of(localized(GPU_CONFIGS[0], models, tmp_path, merge=merge)))[0]
    held = {h.what.split(" (")[0]: h for h in evaluator.holdings}
    one = sum(compact_bytes(shape, form) for shape in llama_tensors(LLAMA3_8B).values())
    assert held["3 task vectors"].bytes == 3 * one < 3 * EIGHT_B * 2 / 3
    assert held["base"].bytes == EIGHT_B * 2
    assert "3 sorted |task vector|s" not in held  # sorting an expansion would undo the saving
    largest = max(math.prod(shape) for shape in llama_tensors(LLAMA3_8B).values())  # the embeddings
    expanding = held["3 expanded copies of the largest tensor"]
    assert expanding.bytes == 3 * largest * 2 and expanding.memory == "gpu"  # merged on the GPU


def test_a_sparse_form_makes_a_pool_that_outgrows_host_ram_fit(models, tmp_path) -> None:
    sparse, bf16 = {"task_vectors": {"form": "sparse", "density": 0.05}}, {"dtype": "bfloat16"}
    # The engines stay bf16; the candidate's vLLM share leaves room for 3 float32 expansions of the largest
    # tensor (the embeddings, 2 GiB each), which a compact pool merges on the GPU, and for DARE's 3 stacked
    # deltas of it: so host RAM is what a float32 pool outgrows.
    backend = bf16 | {"gpu_memory_utilization": 0.65}
    pool_only = {"models": {"dtype": "float32"}, "backend": backend, "judge": bf16}
    dense = localized(GPU_CONFIGS[0], models, tmp_path, **pool_only)
    assert_one_line_error(run("plan", str(dense), "--cluster", str(ROOT / "cluster.yaml")), "host RAM")
    config = localized(GPU_CONFIGS[0], models, tmp_path, merge=sparse, **pool_only)
    done = run("plan", str(config), "--cluster", str(ROOT / "cluster.yaml"))
    assert done.returncode == 0, done.stderr
    assert "DOES NOT FIT" not in done.stdout and "task vectors (sparse, float32" in done.stdout


def test_a_pool_on_the_gpu_next_to_vllm_is_refused_naming_actor_memory_and_shortfall(
    models, tmp_path
) -> None:
    config = localized(GPU_CONFIGS[0], models, tmp_path, merge={"pool_device": "gpu"})
    done = run("plan", str(config), "--cluster", str(ROOT / "cluster.yaml"))
    assert_one_line_error(done, "evaluator does not fit", "GiB of GPU memory", "short", "pool_device host")
    assert "DOES NOT FIT" in done.stdout  # the table still shows what each actor holds


def test_a_float32_pool_that_outgrows_host_ram_is_refused(models, tmp_path) -> None:
    # a bf16 engine whose vLLM share leaves the GPU room for DARE's float32 merge work: host RAM is what
    # the float32 pool outgrows
    backend = {"dtype": "bfloat16", "gpu_memory_utilization": 0.65}
    config = localized(GPU_CONFIGS[0], models, tmp_path, models={"dtype": "float32"}, backend=backend)
    done = run("plan", str(config), "--cluster", str(ROOT / "cluster.yaml"))
    assert_one_line_error(done, "evaluator does not fit", "host RAM", "bfloat16")


def test_a_vllm_share_too_small_for_the_guard_is_refused_naming_the_judge(models, tmp_path) -> None:
    config = localized(
        GPU_CONFIGS[0], models, tmp_path, judge={"backend": "vllm", "gpu_memory_utilization": 0.2}
    )
    done = run("plan", str(config), "--cluster", str(ROOT / "cluster.yaml"))
    assert_one_line_error(done, "judge does not fit", "guard model", "0.20 of a")


def test_packing_counts_every_actor_a_node_hosts(models, tmp_path) -> None:
    """Two evaluators share one node's host RAM when the node has CPUs and GPUs for both."""
    config = localized(
        GPU_CONFIGS[0],
        models,
        tmp_path,
        resources={"gpus_per_evaluator": 0.5},
        backend={"gpu_memory_utilization": 0.4},
    )
    evaluator = plan_actors(setup_of(config))[0]
    node = NodeType("big", 16, 1, int(100 * GIB), int(80 * GIB))
    assert node.hosts(evaluator) == 2
    one_fits = NodeType("one", 3, 1, int(100 * GIB), int(80 * GIB))
    check_plan([evaluator], [one_fits], "test")  # 1 x ~62 GiB of host RAM: fits
    with pytest.raises(UserError, match="2 per big node need .* host RAM"):
        check_plan([evaluator], [node], "test")


def test_a_cluster_file_must_say_each_nodes_memory(tmp_path) -> None:
    data = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    del data["available_node_types"]["gpu_worker"]["labels"]
    broken = tmp_path / "cluster.yaml"
    broken.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="gpu_worker.labels: declare each GPU's memory"):
        cluster_nodes(broken)
    assert {n.name for n in cluster_nodes(ROOT / "cluster.yaml")} == set(
        yaml.safe_load((ROOT / "cluster.yaml").read_text())["available_node_types"]
    )


def test_a_truncated_checkpoint_is_named_before_anything_loads(models, tmp_path) -> None:
    folder = shaped_checkpoint(tmp_path / "cut")
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    config = localized(GPU_CONFIGS[0], models, tmp_path, models={"base": str(folder)})
    done = run("plan", str(config), "--cluster", str(ROOT / "cluster.yaml"))
    assert_one_line_error(done, "model.safetensors: truncated")


def test_search_refuses_a_plan_that_cannot_fit_before_any_actor_starts(models, toy_dataset, tmp_path) -> None:
    """On this CPU machine an 8B pool (four bf16 copies, ~60 GiB) does not fit the Ray heap (the data is
    checked first, so it must be a real dataset)."""
    config = localized(
        GPU_CONFIGS[0],
        models,
        tmp_path,
        resources={
            "num_evaluators": 1,
            "cpus_per_evaluator": 1,
            "gpus_per_evaluator": 0,
            "gpus_per_judge": 0,
        },
        backend={"kind": "hf", "device": "cpu"},
        judge={"backend": "hf"},
        promotion={"cpus": 1, "gpus": 0},
        data={"path": str(toy_dataset)},
    )
    run_dir = tmp_path / "run"
    done = run("search", str(config), "--run-dir", str(run_dir))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1  # a local search is checked before Ray starts
    last = done.stderr.strip()
    assert last.startswith("error: plan (this machine): evaluator does not fit") and "host RAM" in last
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "trials.parquet").exists()


def test_search_logs_where_each_actor_fits_and_which_gpu_memory_it_could_not_check(models, tmp_path) -> None:
    """A live node without the GPU-memory label, seen from a driver without a GPU (``ray_nodes``' default):
    checked for CPUs, GPUs and heap, but its GPU memory is unknown, and the log says so."""
    evaluator, judge, _ = plan_actors(setup_of(localized(GPU_CONFIGS[0], models, tmp_path)))
    labelled = {"Alive": True, "NodeManagerAddress": "10.0.0.2", "Labels": {GPU_MEMORY_LABEL: "80"}}
    resources = {"CPU": 16.0, "GPU": 1.0, "memory": 100 * GIB}
    unlabelled = {"Alive": True, "NodeManagerAddress": "10.0.0.3", "Resources": resources}
    lines = plan_summary(check_plan([evaluator], ray_nodes([{**labelled, "Resources": resources}]), "t"))
    assert lines == [lines[0]] and "10.0.0.2 (16 CPU, 1 GPU of 80 GiB" in lines[0]
    assert "not checked" not in lines[0]
    (line,) = plan_summary(check_plan([judge], ray_nodes([unlabelled]), "t"))
    assert line.startswith("plan: judge x1") and f"label {GPU_MEMORY_LABEL} unset, so not checked" in line
    assert "needs GPU ?, host" in line
    (driver_gpu,) = ray_nodes([unlabelled], local_gpu_bytes=48 * GIB)  # search passes the driver's GPU
    assert driver_gpu.gpu_bytes == 48 * GIB


def test_nodes_that_share_a_host_address_are_each_considered(models, tmp_path) -> None:
    """Several Ray nodes on one host (a simulated cluster, containers on the host network) share their
    address: a head that runs no work must not hide the worker beside it."""
    evaluator, _, _ = plan_actors(setup_of(localized(GPU_CONFIGS[0], models, tmp_path)))
    head = {"Alive": True, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 0.0, "memory": 8 * GIB}}
    worker = {**head, "Resources": {"CPU": 16.0, "GPU": 1.0, "memory": 100 * GIB}}
    (placed,) = check_plan([evaluator], ray_nodes([head, worker], local_gpu_bytes=80 * GIB), "t")
    assert placed.node is not None and placed.node.cpus == 16


def test_a_method_that_holds_every_experts_tensor_at_once_is_counted_also_as_one_of_the_choices(
    models, tmp_path
) -> None:
    """TIES merges in place; SCE stacks the experts' tensors: chosen among, the plan counts the stack."""
    paper = ROOT / "search_spaces" / "paper_llama3_openbio_guard_gpu.yaml"

    def holdings(merge: dict) -> list[str]:
        config = localized(paper, models, tmp_path, merge=merge, search={"name": "tpe"})
        evaluator = plan_actors(setup_of(config))[0]
        return [h.what for h in evaluator.holdings]

    assert not any("stacked copies" in h for h in holdings({}))
    assert any(
        "merge work: 2 stacked copies of the largest tensor" in h for h in holdings({"choices": ["sce"]})
    )
