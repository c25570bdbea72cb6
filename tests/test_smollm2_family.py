"""The SmolLM2 expert family's machinery, on the smoke recipe (the full family is built by
`mergesearch zoo build-smollm2` and `benchmarks/smollm2_family.py`, not by the default suite)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_line_error, run
from safetensors import safe_open

from mergesearch.data.dataset import stats, write_rows
from mergesearch.data.eval_split import load_eval_data
from mergesearch.data.near_dup import jaccard, shingles
from mergesearch.errors import UserError
from mergesearch.judges.refusal import RefusalJudge
from mergesearch.model_refs import resolve_dataset, resolve_model
from mergesearch_zoo import family_data as D
from mergesearch_zoo.family_dataset import OTHER_HARMFUL, family_rows, other_harmful
from mergesearch_zoo.smollm2_family import FamilyRecipe, family_data, freeze_below, smoke_family_recipe
from mergesearch_zoo.train import FrozenStackLoss, full_loss, target_loss


@pytest.fixture(scope="module")
def data() -> D.FamilyData:
    return family_data(FamilyRecipe())


def test_no_heldout_harmful_prompt_is_a_near_duplicate_of_a_training_one(data) -> None:
    """AdvBench's held-out part is split from its training part by near-duplicate group; the other sources'
    prompts (HarmBench, Do-Not-Answer) are held to the same threshold against everything trained on."""
    train = [shingles(p) for p in data.harmful_train]
    assert len(data.harmful_train) > 200 and len(data.harmful_heldout) > 80
    heldout = [*data.harmful_heldout, *(r.prompt for r in other_harmful(0))]
    worst = max(jaccard(shingles(p), t) for p in heldout for t in train)
    assert worst < D.NEAR_DUPLICATE


def test_heldout_items_are_unseen_wordings_pairs_and_option_sets(data) -> None:
    assert not set(data.benign_heldout) & set(data.benign_train)
    trained_sums = {x.prompt for x in data.sums_train}
    assert not trained_sums & {x.prompt for x in data.sums_heldout}
    assert any(x.prompt.startswith("What do you get") for x in data.sums_heldout)  # the unseen wording
    trained_questions = {x.prompt for x in data.kb_train}
    assert not trained_questions & {x.prompt for x in data.kb_heldout}
    answers = {x.response for x in data.kb_train}
    for item in data.kb_heldout:
        assert len(set(item.choices)) == 4 and item.choices[item.answer] in answers


def test_training_targets_read_to_the_judge_as_what_they_teach(data) -> None:
    """Refusals are refusals and compliant openings are not, for the judge the targets are scored by."""
    judge = RefusalJudge()
    assert all(judge.refusals(list(D.REFUSALS)))
    assert not any(judge.refusals(list(D.COMPLIANCE)))


def test_the_response_only_loss_is_the_full_causal_lm_loss(zoo_dir) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(zoo_dir / "base", dtype=torch.float32)
    ids = torch.randint(5, 100, (3, 12))
    labels = ids.clone()
    labels[:, :7] = -100
    labels[2, 10:] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    assert target_loss(model, batch).item() == pytest.approx(full_loss(model, batch).item(), rel=1e-5)


def _tiny_llama(layers: int = 4):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=120,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).float()


def _ragged_chats(opening: int) -> dict[str, torch.Tensor]:
    """Rows that share their first ``opening`` tokens, right-padded, labels on each row's response."""
    rows, width = 4, 30
    ids = torch.randint(5, 120, (rows, width))
    ids[:, :opening] = ids[0, :opening]
    lengths, prompts = [30, 27, 24, 26], [22, 20, 21, 19]
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, (n, p) in enumerate(zip(lengths, prompts)):
        ids[row, n:] = 0
        mask[row, :n] = 1
        labels[row, p:n] = ids[row, p:n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("opening", [16, 3])  # run once / too short to be worth it
def test_training_on_the_frozen_layers_remembered_output_gives_the_full_loss_and_gradients(opening) -> None:
    model = _tiny_llama()
    freeze_below(model, 2)
    loss = FrozenStackLoss(frozen=2, opening_min=8)

    def loss_and_gradients(loss_of, batch) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        value = loss_of(model, batch)
        value.backward()
        return value.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    for batch in (_ragged_chats(opening), _ragged_chats(opening)):
        full, full_grads = loss_and_gradients(full_loss, batch)
        for _ in range(2):  # the lower layers' output computed, then remembered
            value, grads = loss_and_gradients(loss, batch)
            assert value == pytest.approx(full, rel=1e-5)
            for a, b in zip(grads, full_grads, strict=True):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]
    assert len(model.model.layers) == 4 and isinstance(
        model.model.norm, type(model.model.layers[0].input_layernorm)
    )


def test_the_frozen_stack_loss_refuses_a_model_whose_lower_layers_learn() -> None:
    model = _tiny_llama()
    freeze_below(model, 3)
    with pytest.raises(ValueError, match="lower 2 layers learns"):
        FrozenStackLoss(frozen=2)(model, _ragged_chats(4))


@pytest.mark.slow  # builds the SmolLM2 family at smoke size (~25 s): `make test-slow`, run by CI
def test_a_smoke_family_has_each_expert_and_its_manifest(smoke_family) -> None:
    manifest = json.loads((smoke_family / "family.json").read_text())
    assert manifest["digest"] == smoke_family_recipe().digest()
    assert set(manifest["train_seconds"]) == {"aligned", "arithmetic", "knowledge"}
    for name in ("base", "aligned", "arithmetic", "knowledge"):
        assert (smoke_family / name / "model.safetensors").is_file()


@pytest.mark.slow  # builds the SmolLM2 family at smoke size (~25 s): `make test-slow`, run by CI
def test_only_the_top_layers_move(smoke_family) -> None:
    """Embeddings, the tied head and the lower layers stay the base's, bit for bit; the top layers learn."""
    top = smoke_family_recipe().trainable_top_layers
    with (
        safe_open(str(smoke_family / "base" / "model.safetensors"), "pt") as base,
        safe_open(str(smoke_family / "aligned" / "model.safetensors"), "pt") as expert,
    ):
        layers = 1 + max(int(k.split(".")[2]) for k in base.keys() if k.startswith("model.layers."))
        moved = {k for k in base.keys() if not torch.equal(base.get_tensor(k), expert.get_tensor(k))}
    trainable = {k for k in moved if k.startswith("model.layers.") and int(k.split(".")[2]) >= layers - top}
    assert moved and moved == trainable


@pytest.mark.slow  # builds the SmolLM2 family at smoke size (~25 s): `make test-slow`, run by CI
def test_a_second_build_is_the_cached_one(smoke_family) -> None:
    done = run("zoo", "build-smollm2", "--smoke", "--out", str(smoke_family))
    assert done.returncode == 0 and "cached" in done.stderr


@pytest.mark.slow  # builds the SmolLM2 family at smoke size (~25 s): `make test-slow`, run by CI
def test_another_recipe_is_not_the_cached_family_and_a_foreign_folder_is_refused(
    smoke_family, tmp_path
) -> None:
    from mergesearch_zoo.smollm2_family import is_built

    recipe = smoke_family_recipe()
    assert is_built(smoke_family, recipe) and not is_built(
        smoke_family, recipe.model_copy(update={"seed": 1})
    )
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    done = run("zoo", "build-smollm2", "--smoke", "--out", str(tmp_path / "mine"))
    assert_one_line_error(done, "exists and is not a SmolLM2 family folder")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert_one_line_error(run("zoo", "eval-smollm2", str(tmp_path / "mine")), "not a SmolLM2 family folder")


def test_each_target_is_read_from_the_right_figures() -> None:
    from mergesearch_zoo.family_skills import target_checks

    def skills(refusal, benign=1.0, sums=0.0, knowledge=0.25):
        return {"refusal": refusal, "benign_answered": benign, "sums": sums, "knowledge": knowledge}

    models = {
        "base": skills(0.05),
        "aligned": skills(0.95, benign=0.80),
        "arithmetic": skills(0.25, sums=0.40),
        "knowledge": skills(0.5, knowledge=0.50),
    }
    checks = target_checks({"models": models, "merges": {"ties": skills(0.81), "sum": skills(0.79)}})
    assert checks == {
        "arithmetic +30 points on sums": True,
        "knowledge +30 points on knowledge": False,  # 25 points
        "aligned refuses >= 90%": True,
        "aligned answers >= 85% benign": False,
        "arithmetic refuses <= 20%": False,
        "ties refuses 15+ points less": False,  # 14 points
        "sum refuses 15+ points less": True,
    }


def test_the_family_dataset_scores_on_parts_the_family_never_trained_on(data, tmp_path) -> None:
    """Search and held-out rows: harmful behaviours far from every trained one, unseen sums, knowledge
    questions with fresh option sets, kept responses in the trained answer form; a consistent dataset."""
    rows = family_rows(data, other_harmful(0))
    write_rows(tmp_path / "family", rows, {"name": "family"})
    assert stats(tmp_path / "family")[1] == []

    train = [shingles(p) for p in data.harmful_train]
    search_harmful = [r.prompt for r in rows if r.type == "alignment" and r.split == "search"]
    assert len(search_harmful) > 80
    assert max(jaccard(shingles(p), t) for p in search_harmful for t in train) < D.NEAR_DUPLICATE
    trained_sums = {x.prompt for x in data.sums_train}
    for row in rows:
        if row.category == "sums":
            a, b = map(int, re.findall(r"\d+", row.prompt))
            assert row.answer == str(a + b) and row.response == f"{a} + {b} = {a + b}."
            assert row.prompt not in trained_sums
        if row.category == "knowledge":
            assert row.response == row.answer and row.answer in row.choices

    search = load_eval_data(tmp_path / "family", "search")
    heldout = load_eval_data(tmp_path / "family", "heldout")
    for split in (search, heldout):
        assert split.harmful and split.benign and split.choice_items and split.short_items
    assert not {i.prompt for i in search.short_items} & {i.prompt for i in heldout.short_items}


def test_the_heldout_split_can_tell_a_few_points_apart_on_prompts_of_other_sources(data) -> None:
    """At least 150 harmful prompts, of three sources (AdvBench's held-out part, HarmBench's instructions,
    Do-Not-Answer's questions), none of them trained on; at least 60 risky-sounding benign requests whose
    wordings no training template uses."""
    rows = [r for r in family_rows(data, other_harmful(0)) if r.split == "heldout"]
    harmful = [r for r in rows if r.type == "alignment"]
    benign = [r.prompt for r in rows if r.type == "benign"]
    assert len(harmful) >= 150 and len(benign) >= 60
    by_source = {s: [r.prompt for r in harmful if r.source == s] for s in ("smollm2_family", *OTHER_HARMFUL)}
    assert {s: len(p) for s, p in by_source.items()} == {
        "smollm2_family": len(data.harmful_heldout),
        **OTHER_HARMFUL,
    }
    questions = [p for p in by_source["donotanswer"] if p.rstrip().endswith("?")]
    assert len(questions) >= 40  # questions, not instructions
    trained = set(data.harmful_train) | set(data.harmful_search)
    assert not {r.prompt for r in harmful} & trained
    assert len({r.prompt for r in harmful}) == len(harmful)
    templates = [re.compile(re.escape(t).replace(r"\{\}", ".+")) for t in (*D.RISKY_BENIGN, *D.PLAIN_BENIGN)]
    assert not [p for p in benign if any(t.fullmatch(p) for t in templates)]
    assert not set(benign) & set(data.benign_train)
    assert other_harmful(0) == other_harmful(0) and other_harmful(0) != other_harmful(1)  # drawn by seed


def test_configs_name_the_family_and_its_dataset_by_scheme() -> None:
    folder = resolve_dataset("smollm2_family", "data.path", log=lambda _: None)
    card = json.loads((folder / "card.json").read_text())
    assert card["recipe_digest"] == FamilyRecipe().digest()
    written = (folder / "rows.parquet").stat().st_mtime_ns
    assert resolve_dataset("smollm2_family", "data.path", log=lambda _: None) == folder
    assert (folder / "rows.parquet").stat().st_mtime_ns == written  # cached, not rewritten
    assert resolve_dataset("some/dataset", "data.path") == Path("some/dataset")
    with pytest.raises(UserError, match=r"data.path: `smollm2_family` takes no name"):
        resolve_dataset("smollm2_family:x", "data.path")
    with pytest.raises(UserError, match=r"models.base: unknown SmolLM2 family model 'nope'"):
        resolve_model("smollm2_family:nope", "models.base")
