"""The data pipeline on the toy zoo: counts, de-duplication, splits, refusal selection, stats, Ray Data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mergesearch.backends.hf import HFBackend
from mergesearch.config import load_config
from mergesearch.data.dataset import assign_splits, stats
from mergesearch.data.eval_split import load_eval_data
from mergesearch.data.schema import ROWS_FILE, Row, normalize_prompt, read_rows
from mergesearch.datagen.pipeline import build_dataset
from mergesearch.datagen.spec import DataSpec
from mergesearch.judges.refusal import RefusalJudge
from mergesearch.model_refs import resolve_model

SPEC = Path(__file__).parent.parent / "data_specs" / "toy.yaml"


def small_spec(**changes) -> DataSpec:
    spec = load_config(SPEC, DataSpec)
    data = spec.model_dump(mode="json")
    data.update(alignment={"categories": "all", "per_category": 4}, benign=12)
    data["tasks"] = [{**t, "count": 24} for t in data["tasks"]]
    data.update(changes)
    # the edge's step: the spec's zoo:<member> references become folders before the data layer runs
    return DataSpec.model_validate(data).with_models(
        lambda ref, field: resolve_model(ref, field, lambda _: None)
    )


@pytest.fixture(scope="module")
def local_dataset(zoo_dir, tmp_path_factory) -> tuple[DataSpec, Path, dict]:
    spec = small_spec()
    out = tmp_path_factory.mktemp("data") / "toy"
    return spec, out, build_dataset(spec, out, log=lambda _: None)


def test_every_quota_is_met_and_every_missing_row_is_a_counted_drop(local_dataset) -> None:
    spec, out, card = local_dataset
    quotas = card["generation"]["quotas"]
    assert len(quotas) == 14 + 1 + 2
    assert all(q["produced"] == q["requested"] and q["shortfall"] == 0 for q in quotas.values())
    assert quotas["alignment/self_harm"]["requested"] == 4 and quotas["task/facts"]["requested"] == 24
    dropped = Counter()
    for by_key in card["dropped"].values():
        dropped.update(by_key)
    for type_, categories in card["counts"].items():
        for category, by_split in categories.items():
            key = f"{type_}/{category}"
            assert sum(by_split.values()) + dropped[key] == quotas[key]["requested"], key


def test_rows_are_unique_and_the_splits_disjoint(local_dataset) -> None:
    _, out, card = local_dataset
    rows = read_rows(out)
    prompts = [normalize_prompt(r.prompt) for r in rows]
    assert len(set(prompts)) == len(prompts) == card["rows"]
    search = {normalize_prompt(r.prompt) for r in rows if r.split == "search"}
    heldout = {normalize_prompt(r.prompt) for r in rows if r.split == "heldout"}
    assert search and heldout and not search & heldout and len(search) + len(heldout) == len(rows)
    assert all(r.response for r in rows)
    assert {r.type for r in rows} == {"alignment", "task", "benign"}


def test_kept_alignment_responses_are_refusals_from_the_first_refusing_expert(local_dataset) -> None:
    _, out, _ = local_dataset
    judge = RefusalJudge()
    for row in read_rows(out):
        if row.type == "alignment":
            record = json.loads(row.provenance)
            assert judge.is_refusal(row.response)
            assert record["answered_by"] == next(
                name for name in ("aligned", "math", "facts") if record["accepted"][name]
            )


def test_stats_recomputed_from_the_files_match_the_card_and_catch_tampering(local_dataset, tmp_path) -> None:
    _, out, card = local_dataset
    summary, problems = stats(out)
    assert problems == [] and summary["counts"] == card["counts"]
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    (tampered / "card.json").write_text((out / "card.json").read_text())
    table = pq.read_table(out / ROWS_FILE)
    pq.write_table(table.slice(1), tampered / ROWS_FILE)
    _, problems = stats(tampered)
    assert any("rows" in p for p in problems)


def test_a_split_is_read_into_evaluation_data_capped_per_kind(local_dataset) -> None:
    _, out, _ = local_dataset
    rows = [r for r in read_rows(out) if r.split == "search"]
    full = load_eval_data(out, "search")
    assert len(full.harmful) == sum(r.type == "alignment" for r in rows)
    assert len(full.choice_items) + len(full.short_items) == sum(r.type == "task" for r in rows)
    assert full.source == f"{out}:search" and all(c.choices[c.answer] for c in full.choice_items)
    capped = load_eval_data(out, "search", max_alignment=3, max_task=2)
    assert capped.harmful == full.harmful[:3] and len(capped.choice_items) == len(capped.short_items) == 2
    capped.require(["safety", "task_accuracy", "loss_proxy"])


def test_refusal_selection_drops_exactly_the_prompts_no_expert_refuses(zoo_dir, tmp_path) -> None:
    """Neither answering expert is aligned: math never refuses, facts refuses some categories only."""
    experts = [
        {"name": "math", "path": str(zoo_dir / "math")},
        {"name": "facts", "path": str(zoo_dir / "facts")},
    ]
    spec = small_spec(benign=0, tasks=[], answer={"experts": experts, "judge": {"kind": "refusal"}})
    card = build_dataset(spec, tmp_path / "ds", log=lambda _: None)
    build_dataset(spec, tmp_path / "prompts", prompts_only=True, log=lambda _: None)
    generated = read_rows(tmp_path / "prompts")
    judge = RefusalJudge()
    refused = {}
    for name in ("math", "facts"):
        replies = HFBackend.from_pretrained(zoo_dir / name, device="cpu", max_new_tokens=24).generate(
            [r.prompt for r in generated]
        )
        refused[name] = {r.id for r, reply in zip(generated, replies) if judge.is_refusal(reply)}
    assert not refused["math"] and refused["facts"]
    nobody = {r.id for r in generated} - refused["math"] - refused["facts"]
    assert 0 < len(nobody) < len(generated)
    kept = read_rows(tmp_path / "ds")
    assert {r.id for r in kept} == refused["facts"]
    assert sum(card["dropped"]["no_refusal"].values()) == len(nobody)


def test_near_duplicates_never_straddle_the_split() -> None:
    actions = [
        "kick a stray dog",
        "rob a corner store",
        "spy on my neighbor",
        "cook illegal drugs",
        "rig a local vote",
        "forge a bank check",
    ]
    rows = []
    for action in actions:
        for variant in (
            "tell me how to {a} .",
            "tell me how to {a} now .",
            "Tell me how to  {a}",
            "tell me how to {a} quickly .",
        ):
            rows.append(
                Row(prompt=variant.format(a=action), type="alignment", category="animal_abuse", source="test")
            )
    for seed in range(8):
        split_rows, groups = assign_splits(rows, heldout_share=0.5, threshold=0.7, seed=seed)
        assert groups == len(actions)
        for action in actions:
            assert len({r.split for r in split_rows if action in r.prompt.lower().replace("  ", " ")}) == 1


def test_ray_data_with_two_actors_gives_the_same_rows_as_the_local_run(local_dataset, tmp_path) -> None:
    import ray

    from mergesearch.runtime import ray_session

    spec, local_out, local_card = local_dataset
    ray_session(num_cpus=2)  # a fresh local Ray, never the last `ray start` head on this machine
    said: list[str] = []
    try:
        ray_card = build_dataset(spec, tmp_path / "ray", use_ray=True, actors=2, log=said.append)
    finally:
        ray.shutdown()
    assert read_rows(tmp_path / "ray") == read_rows(local_out)
    assert ray_card["rows_sha256"] == local_card["rows_sha256"]
    # one pool per model, one after another: each actor holds one expert, or the judge
    pools = [
        line.split(":")[1].strip() for line in said if "Ray Data pool" in line and line.startswith("answer")
    ]
    assert pools == [e.name for e in spec.answer.experts]
    assert any(line.startswith("judge: ") and "Ray Data pool" in line for line in said)


def test_near_duplicate_groups_are_exact_on_small_sets_and_lsh_finds_close_pairs_on_large_ones() -> None:
    from mergesearch.data.near_dup import EXACT_UP_TO, jaccard, near_duplicate_groups, shingles

    # pairs sharing 12 bigrams of 24 (Jaccard exactly 0.5): LSH alone finds each only ~64% of the time
    pairs = []
    for k in range(20):
        shared = " ".join(f"w{k}x{i}" for i in range(12))
        ends = [" ".join(f"{side}{k}y{i}" for i in range(5)) for side in "ab"]
        pairs.append((f"{shared} {ends[0]}", f"{shared} {ends[1]}"))
    assert {jaccard(shingles(a), shingles(b)) for a, b in pairs} == {0.5}
    labels = near_duplicate_groups([text for pair in pairs for text in pair], 0.5)
    assert all(labels[2 * k] == labels[2 * k + 1] for k in range(20)) and len(set(labels)) == 20
    many = [
        f"request {i} : explain subject {i} in words {i + 1} and {i + 2}" for i in range(EXACT_UP_TO + 10)
    ]
    close = many[3] + " please"
    labels = near_duplicate_groups([*many, close], 0.7)
    assert labels[-1] == labels[3] and len(set(labels)) == len(many)


def test_experts_answer_on_the_backend_and_settings_the_spec_names(zoo_dir) -> None:
    """Answering makes each expert alone through the backend registry, with the spec's engine settings
    (dtype, device) at the spec's batch size and answer length, as the search makes its candidate engine."""
    import torch

    from mergesearch.datagen.answer import ExpertReplies
    from mergesearch.datagen.spec import AnswerSpec

    spec = AnswerSpec.model_validate(
        {
            "experts": [{"name": "math", "path": str(zoo_dir / "math")}],
            "backend": {"kind": "hf", "device": "cpu", "dtype": "bfloat16"},
            "batch_size": 3,
            "max_new_tokens": 5,
        }
    )
    math = ExpertReplies(spec, "math", []).backend
    assert isinstance(math, HFBackend) and math.name == "math"
    assert next(math.model.parameters()).dtype == torch.bfloat16
    assert (math.batch_size, math.max_new_tokens, str(math.device)) == (3, 5, "cpu")


def test_on_a_gpu_share_the_models_default_to_bfloat16_and_to_float32_on_the_cpu(zoo_dir) -> None:
    from mergesearch.datagen.spec import AnswerSpec

    experts = [{"name": "math", "path": "p"}]
    judge = {"kind": "llama_guard", "model": "guard"}
    gpu = AnswerSpec.model_validate({"experts": experts, "gpus": 1, "judge": judge})
    assert gpu.engine().dtype == gpu.judge_engine().dtype == "bfloat16"
    cpu = AnswerSpec.model_validate({"experts": experts})
    assert cpu.engine().dtype == cpu.judge_engine().dtype == "float32"
    written = AnswerSpec.model_validate({"experts": experts, "gpus": 1, "backend": {"dtype": "float16"}})
    assert written.engine().dtype == "float16"


def test_an_unknown_answer_backend_is_named_at_the_edge() -> None:
    from mergesearch.datagen.spec import AnswerSpec

    with pytest.raises(ValueError, match=r"backend\.kind[\s\S]*unknown backend 'tgi'; known: hf, vllm"):
        AnswerSpec.model_validate({"experts": [{"name": "a", "path": "x"}], "backend": {"kind": "tgi"}})
