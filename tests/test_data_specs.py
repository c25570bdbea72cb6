"""Every shipped GPU search config has the data spec that makes its data on the cluster: the same experts
(in the same folders) answer, the same guard judges, each model alone in an actor with a whole GPU, in
bfloat16."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mergesearch.config import load_config
from mergesearch.datagen.spec import DataSpec

ROOT = Path(__file__).resolve().parents[1]
GPU_CONFIGS = sorted((ROOT / "search_spaces").glob("*gpu*.yaml"))
GPU_SPECS = sorted((ROOT / "data_specs").glob("*_gpu.yaml"))


def spec_writing(path: str) -> Path:
    """The GPU data spec whose job line writes ``path``."""
    found = [s for s in GPU_SPECS if re.search(rf"--out {re.escape(path)}\s*$", s.read_text(), re.M)]
    assert len(found) == 1, f"no single data spec writes {path}: {found}"
    return found[0]


@pytest.mark.parametrize("config_path", GPU_CONFIGS, ids=lambda p: p.name)
def test_each_gpu_config_has_the_data_spec_of_its_experts_and_guard(config_path: Path) -> None:
    config = load_config(config_path)
    spec = load_config(spec_writing(str(config.data.path)), DataSpec)
    answer = spec.answer
    assert [(e.name, e.path) for e in answer.experts] == [(e.name, e.path) for e in config.models.experts]
    assert answer.judge.kind == "llama_guard" and answer.judge.model
    if config.judge.kind == "llama_guard":
        assert answer.judge.model == config.judge.model
    assert {t.expert for t in spec.tasks} <= {e.name for e in answer.experts}


@pytest.mark.parametrize("spec_path", GPU_SPECS, ids=lambda p: p.name)
def test_gpu_data_runs_one_model_per_actor_on_a_whole_gpu_in_bfloat16(spec_path: Path) -> None:
    spec = load_config(spec_path, DataSpec)
    for runner in (spec.generator, spec.answer):
        assert runner.gpus == 1.0 and runner.engine().dtype == "bfloat16" and runner.backend.kind == "vllm"
    assert spec.answer.judge_engine().dtype == "bfloat16"
