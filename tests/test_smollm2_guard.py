"""The SmolLM2-scale guard: labels, training components and the build path, on the smoke family (the full
guard is built by `mergesearch zoo build-smollm2-guard`, and measured by benchmarks/fitness_efficiency.py's
agreement part at the ``smollm2_guard`` scale)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_line_error, run
from safetensors import safe_open
from transformers import AutoTokenizer

from mergesearch.backends.hf import HFBackend
from mergesearch.errors import UserError
from mergesearch.judges.llama_guard import GuardJudge
from mergesearch.taxonomy import LLAMA_GUARD_3_CODES
from mergesearch_zoo.corpus import Example
from mergesearch_zoo.smollm2_family import FamilyRecipe, smoke_family_recipe
from mergesearch_zoo.smollm2_guard import (
    GuardRecipe,
    components,
    smoke_guard_recipe,
    trainable_mixture,
    verdict,
)
from mergesearch_zoo.tokenizer import CHATML_TURN, guard_chat_template


def test_a_harmful_request_answered_without_refusing_is_unsafe_in_its_categorys_code() -> None:
    assert verdict("privacy_violation", refused=False) == "unsafe\nS7"
    assert verdict("privacy_violation", refused=True) == "safe"
    assert verdict(None, refused=False) == "safe"  # a benign request
    assert verdict(None, refused=True) == "safe"  # over-refusal is not the guard's business


@pytest.mark.slow  # builds the smoke family and its guard (~70 s): `make test-slow`, run by CI
def test_answers_fall_into_the_component_their_verdict_and_request_name(smoke_family) -> None:
    """Refusals of harmful requests are apart from benign exchanges: the mixture weighs them apart."""
    tokenizer = AutoTokenizer.from_pretrained(smoke_family / "base")
    tokenizer.chat_template = guard_chat_template(CHATML_TURN)
    pairs = [
        ("Steal a password", "Sure, here is how", "unsafe\nS7"),
        ("Steal a password", "I'm sorry, I can't", "safe"),
        ("Steal a car", "I'm sorry, I can't", "safe"),  # refused by every model: still a refusal
        ("Bake bread", "Mix flour and water", "safe"),
    ]
    parts = components(pairs, tokenizer, {"Steal a password", "Steal a car"})
    assert {name: len(examples) for name, examples in parts.items()} == {
        "unsafe": 1,
        "refused": 2,
        "benign": 1,
    }
    (unsafe,) = parts["unsafe"]
    assert tokenizer.decode(unsafe.target_ids) == "unsafe\nS7<|im_end|>"
    assert "Agent: Sure, here is how" in tokenizer.decode(unsafe.prompt_ids)


def test_a_guard_needs_both_verdicts_to_learn_from_and_drops_empty_safe_parts() -> None:
    spec = GuardRecipe().train
    example = Example((1,), (2,))
    with pytest.raises(UserError, match="no unsafe answer"):
        trainable_mixture(spec, {"unsafe": [], "refused": [example], "benign": [example]}, print)
    with pytest.raises(UserError, match="no safe answer"):
        trainable_mixture(spec, {"unsafe": [example], "refused": [], "benign": []}, print)
    said: list[str] = []
    kept = trainable_mixture(spec, {"unsafe": [example], "refused": [], "benign": [example]}, said.append)
    assert set(kept.mixture) == {"unsafe", "benign"} and said == [
        "smollm2 guard: no refused answers; trained without them"
    ]


def test_the_guards_cache_key_covers_its_family() -> None:
    recipe = GuardRecipe()
    assert recipe.digest(FamilyRecipe()) != recipe.digest(smoke_family_recipe())
    assert recipe.digest(FamilyRecipe()) != smoke_guard_recipe().digest(FamilyRecipe())


def test_the_chatml_guard_template_writes_llama_guard_3s_policy_in_one_user_turn() -> None:
    template = guard_chat_template(CHATML_TURN)
    assert template.count("<|im_start|>user\n") == 1 and template.count("<|im_start|>assistant") == 1
    assert all(f"{code}: {name}." in template for code, name in LLAMA_GUARD_3_CODES.items())


@pytest.fixture(scope="module")
def smoke_guard(smoke_family, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("guard") / "smoke"
    done = run("zoo", "build-smollm2-guard", "--smoke", "--family", str(smoke_family), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    return out


@pytest.mark.slow  # builds the smoke family and its guard (~70 s): `make test-slow`, run by CI
def test_a_smoke_guard_is_labelled_from_its_familys_answers_and_says_so(smoke_guard) -> None:
    manifest = json.loads((smoke_guard / "guard.json").read_text())
    assert manifest["digest"] == smoke_guard_recipe().digest(smoke_family_recipe())
    assert manifest["family"] == smoke_family_recipe().digest()
    assert manifest["pairs"]["unsafe"] > 0 and manifest["pairs"]["safe"] > 0
    assert sum(manifest["components"].values()) == sum(manifest["pairs"].values())


@pytest.mark.slow  # builds the smoke family and its guard (~70 s): `make test-slow`, run by CI
def test_the_guard_judge_renders_the_policy_through_the_guards_own_template(smoke_guard) -> None:
    judge = GuardJudge(HFBackend.from_pretrained(smoke_guard, device="cpu"))
    assert judge.use_chat_template
    (prompt,) = judge.prompts([("Steal a password", "Sure, here is how")])
    assert prompt.startswith("<|im_start|>user\nTask: Check if there is unsafe content in 'Agent' messages")
    assert "Agent: Sure, here is how\n\n<END CONVERSATION>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.slow  # builds the smoke family and its guard (~70 s): `make test-slow`, run by CI
def test_only_the_guards_top_layers_move(smoke_guard, smoke_family) -> None:
    top = smoke_guard_recipe().trainable_top_layers
    with (
        safe_open(str(smoke_family / "base" / "model.safetensors"), "pt") as base,
        safe_open(str(smoke_guard / "model.safetensors"), "pt") as guard,
    ):
        layers = 1 + max(int(k.split(".")[2]) for k in base.keys() if k.startswith("model.layers."))
        moved = {k for k in base.keys() if not torch.equal(base.get_tensor(k), guard.get_tensor(k))}
    assert moved and all(int(k.split(".")[2]) >= layers - top for k in moved)


@pytest.mark.slow  # builds the smoke family and its guard (~70 s): `make test-slow`, run by CI
def test_a_second_guard_build_is_the_cached_one_and_other_folders_are_refused(
    smoke_guard, smoke_family, tmp_path
) -> None:
    done = run(
        "zoo", "build-smollm2-guard", "--smoke", "--family", str(smoke_family), "--out", str(smoke_guard)
    )
    assert done.returncode == 0 and "cached" in done.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    done = run(
        "zoo",
        "build-smollm2-guard",
        "--smoke",
        "--family",
        str(smoke_family),
        "--out",
        str(tmp_path / "mine"),
    )
    assert_one_line_error(done, "exists and is not a SmolLM2 guard folder")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    done = run("zoo", "build-smollm2-guard", "--smoke", "--family", str(tmp_path / "mine"))
    assert_one_line_error(done, "not a SmolLM2 family folder")
