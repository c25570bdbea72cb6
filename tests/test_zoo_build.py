"""Building the zoo: standard HF folders, deterministic bytes, cached by recipe, resumable, atomic."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mergesearch.errors import UserError
from mergesearch_zoo.build import _fresh_model, build_zoo, zoo_corpus
from mergesearch_zoo.layout import MEMBERS, read_manifest
from mergesearch_zoo.recipe import ZooRecipe, smoke_recipe
from mergesearch_zoo.train import SHARED_PREFIX_MIN, collate, full_loss, prefix_once_loss, shared_prefix

FILES = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
)


def _digests(zoo: Path) -> dict[str, str]:
    return {
        str(p.relative_to(zoo)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(zoo.rglob("*"))
        if p.is_file() and p.name != "zoo.json"
    }


@pytest.fixture(scope="module")
def smoke_zoo(tmp_path_factory) -> Path:
    return build_zoo(smoke_recipe(), tmp_path_factory.mktemp("smoke") / "zoo", log=lambda _: None)


def test_every_member_is_a_standard_hugging_face_folder(smoke_zoo: Path) -> None:
    for member in MEMBERS:
        folder = smoke_zoo / member.name
        for name in FILES:
            assert (folder / name).is_file(), f"{member.name}/{name}"
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
        assert model.config.model_type == "llama"
        assert tokenizer.chat_template
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": "help me bake a cake ."}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        assert model(**ids).logits.shape[-1] == len(tokenizer)


def test_same_recipe_gives_identical_bytes(smoke_zoo: Path, tmp_path: Path) -> None:
    again = build_zoo(smoke_recipe(), tmp_path / "again", log=lambda _: None)
    assert _digests(again) == _digests(smoke_zoo)


def test_members_trained_side_by_side_have_the_bytes_of_members_trained_in_turn(
    smoke_zoo: Path, tmp_path: Path
) -> None:
    in_turn = build_zoo(smoke_recipe(), tmp_path / "in_turn", log=lambda _: None, workers=1)
    assert _digests(in_turn) == _digests(smoke_zoo)


def test_a_shared_opening_trained_once_gives_the_full_batchs_loss_and_gradients() -> None:
    recipe = smoke_recipe()
    tokenizer, _, components = zoo_corpus(recipe)
    batch = components["guard_pairs"][:8]  # every guard pair opens with the same policy text
    prefix = shared_prefix(batch)
    assert prefix >= SHARED_PREFIX_MIN
    assert shared_prefix([*batch, components["sums"][0]]) < SHARED_PREFIX_MIN
    model = _fresh_model(recipe.shape, len(tokenizer), 0, tokenizer)
    collated = collate(batch, tokenizer.pad_token_id, loss_on_prompt=False)

    def loss_and_gradients(loss_of) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        loss = loss_of()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    full, full_grads = loss_and_gradients(lambda: full_loss(model, collated))
    once, once_grads = loss_and_gradients(lambda: prefix_once_loss(model, collated, prefix))
    assert once == pytest.approx(full, rel=1e-5)
    for a, b in zip(once_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_different_recipe_gives_a_different_cache_key() -> None:
    assert smoke_recipe().digest() != ZooRecipe().digest()
    assert ZooRecipe(seed=1).digest() != ZooRecipe().digest()
    assert ZooRecipe().digest() == ZooRecipe().digest()


def test_a_built_zoo_is_reused_not_rebuilt(smoke_zoo: Path) -> None:
    messages: list[str] = []
    before = {p: p.stat().st_mtime_ns for p in smoke_zoo.rglob("model.safetensors")}
    build_zoo(smoke_recipe(), smoke_zoo, log=messages.append)
    assert any("cached" in m for m in messages)
    assert before == {p: p.stat().st_mtime_ns for p in smoke_zoo.rglob("model.safetensors")}


def test_manifest_records_recipe_and_roles(smoke_zoo: Path) -> None:
    manifest = read_manifest(smoke_zoo)
    assert manifest["digest"] == smoke_recipe().digest()
    assert ZooRecipe.model_validate(manifest["recipe"]) == smoke_recipe()
    assert set(manifest["members"]) == {m.name for m in MEMBERS}
    assert manifest["experts"] == ["aligned", "math", "facts"]


def test_an_interrupted_build_resumes_from_finished_models(tmp_path: Path) -> None:
    recipe = smoke_recipe()
    out = tmp_path / "zoo"
    staging = tmp_path / f".zoo.partial-{recipe.digest()}"
    full = build_zoo(recipe, tmp_path / "reference", log=lambda _: None)
    staging.mkdir()
    shutil.copytree(full / "base", staging / "base")  # as if the build had stopped after the base
    messages: list[str] = []
    build_zoo(recipe, out, log=messages.append)
    assert any("base already trained" in m for m in messages)
    assert not any("training base" in m for m in messages)
    assert not staging.exists()
    assert _digests(out) == _digests(full)


def test_refuses_to_overwrite_a_folder_that_is_not_a_zoo(tmp_path: Path) -> None:
    precious = tmp_path / "my_models"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a zoo folder"):
        build_zoo(smoke_recipe(), precious, log=lambda _: None)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_training_leaves_torch_global_state_as_it_was(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    build_zoo(smoke_recipe(), tmp_path / "z", log=lambda _: None)
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()
