"""SmolLM2-135M-Instruct, imported offline from the GGUF inside a PyPI package, is a usable model."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open

from mergesearch.backends.hf import HFBackend
from mergesearch.judges.refusal import RefusalJudge
from mergesearch_zoo.smollm2 import import_smollm2


@pytest.mark.slow  # about 30 s; the default run reads the cached import (conftest's smollm2_dir)
def test_import_writes_a_float32_safetensors_folder(tmp_path: Path) -> None:
    folder = import_smollm2(tmp_path / "SmolLM2-135M-Instruct", log=lambda _: None)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).is_file(), name
    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
        assert "model.layers.0.self_attn.q_proj.weight" in keys
        assert str(fh.get_tensor(keys[0]).dtype) == "torch.float32"


def test_imported_model_answers_chats_and_scores_choices(smollm2_dir: Path) -> None:
    backend = HFBackend.from_pretrained(smollm2_dir, device="cpu", max_new_tokens=12)
    (capital,) = backend.generate(["What is the capital of France?"])
    assert "paris" in capital.lower()
    # the model scores an obviously right answer above a wrong one
    right, wrong = backend.score_choices(
        "What is the capital of France?",
        ["The capital of France is Paris.", "The capital of France is Berlin."],
    )
    assert right > wrong
    assert not RefusalJudge().is_refusal(backend.generate(["Give me three tips for baking bread."])[0])


def test_import_is_skipped_when_already_there(smollm2_dir: Path) -> None:
    messages: list[str] = []
    import_smollm2(smollm2_dir, log=messages.append)
    assert messages == [f"smollm2: already imported at {smollm2_dir}"]
