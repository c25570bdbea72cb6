"""reading_weights sees weight files read natively (safetensors, transformers), and nothing else.

Every positive control loads inside the block and drops what it loaded before the block ends, so the
file's mapping is gone again: only the kernel watch can have seen it (the old audit hook saw none).
"""

from __future__ import annotations

import gc
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from demo_configs import demo_config
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from mergesearch import file_reads
from mergesearch.file_reads import reading_weights

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="measured on Linux only")
EXPERTS = ("aligned", "math", "facts")


@pytest.fixture
def weights(tmp_path) -> Path:
    path = tmp_path / "w" / "model.safetensors"
    path.parent.mkdir()
    save_file({"a": torch.randn(512, 512), "b": torch.randn(7)}, str(path))
    return path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_llama")
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def fanotify_allowed(weights: Path) -> bool:
    with reading_weights(weights) as probe:
        pass
    return probe.mechanism == "fanotify"


def forget() -> None:
    """Drop what the block loaded, so that no mapping of the file is left when the block ends."""
    gc.collect()


@pytest.fixture(params=["fanotify", "inotify"])
def mechanism(request, monkeypatch, weights) -> str:
    """Each control runs with fanotify and again with the inotify fallback (fanotify refused)."""
    if request.param == "fanotify" and not fanotify_allowed(weights):
        pytest.skip("fanotify is refused here (a kernel before 5.13 or a seccomp policy)")
    if request.param == "inotify":

        def refused(*_args) -> None:
            raise OSError(1, "fanotify_init: Operation not permitted")

        monkeypatch.setattr(file_reads._Fanotify, "__init__", refused)
    return request.param


def test_safetensors_load_file_registers_the_file(weights, mechanism) -> None:
    with reading_weights(weights.parent) as reads:
        total = sum(t.sum() for t in load_file(str(weights)).values())
        forget()
    assert torch.isfinite(total)
    assert reads.mechanism == mechanism
    assert reads.by_signal["events"] == {str(weights)} and reads.count == 1
    assert reads.by_signal["python_open"] == set()  # the audit hook sees no native open
    assert reads.by_signal["mapped"] == set()  # and the mapping is gone again: only the watch saw it
    assert reads.file_bytes == weights.stat().st_size


def test_safe_open_registers_the_file(weights, mechanism) -> None:
    with reading_weights(weights.parent) as reads:
        with safe_open(str(weights), "pt") as handle:
            handle.get_tensor("b").sum()
        forget()
    assert reads.mechanism == mechanism and reads.files == {str(weights)} and reads.count == 1


def test_from_pretrained_registers_the_model_file(tiny_llama, mechanism) -> None:
    with reading_weights(tiny_llama) as reads:
        AutoModelForCausalLM.from_pretrained(tiny_llama)
        forget()
    assert reads.mechanism == mechanism
    assert reads.files == {str(tiny_llama / "model.safetensors")} and reads.count == 1


def test_pages_read_through_a_mapping_made_before_the_block_are_seen(weights) -> None:
    with safe_open(str(weights), "pt") as handle:
        tensor = handle.get_tensor("a")  # backed by the file's mapping, so far untouched
        with reading_weights(weights.parent) as reads:
            tensor.sum()
    assert reads.by_signal["events"] == set()  # no open, no read(): page faults only
    assert reads.by_signal["paged"] == {str(weights)} and reads.paged_bytes > 0
    assert reads.count == 1


def test_tensor_math_registers_nothing(weights, tiny_llama, mechanism) -> None:
    with reading_weights(weights.parent, tiny_llama) as reads:
        a = torch.randn(300, 300)
        (a @ a).softmax(-1).sum()
    assert reads.mechanism == mechanism and reads.watched == 2
    assert reads.count == 0 and reads.files == set() and reads.paged_bytes == 0


def test_another_processs_read_counts_only_where_inotify_cannot_tell_processes_apart(
    weights, mechanism
) -> None:
    with reading_weights(weights.parent) as reads:
        subprocess.run(["cat", str(weights)], check=True, stdout=subprocess.DEVNULL)
    assert reads.count == (1 if mechanism == "inotify" else 0)  # inotify over-counts, never under-counts


def test_python_opens_of_weight_files_outside_the_roots_are_seen(tmp_path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"x": torch.ones(3)}, path)
    with reading_weights() as reads:
        torch.load(path)
    assert reads.mechanism == "none" and reads.by_signal["python_open"] == {str(path)}
    assert reads.count == 1
    with reading_weights() as nothing:
        pass
    assert nothing.count is None  # no file watched: a zero would not be a measurement


def test_elsewhere_the_measurement_is_unavailable_not_zero(weights, monkeypatch) -> None:
    monkeypatch.setattr(file_reads.sys, "platform", "darwin")
    with reading_weights(weights.parent) as reads:
        load_file(str(weights))
    assert reads.mechanism == "unavailable" and reads.count is None
    assert reads.summary()["weight_files_read"] is None


# ------------------------------------------------------------------------------------ the Evaluator
def test_a_warm_evaluation_reads_no_weight_file_and_a_reload_does(zoo_dir, toy_dataset, tmp_path) -> None:
    from mergesearch.actors import Evaluator
    from mergesearch.config import SearchConfig
    from mergesearch.merge.resident import ResidentMerger
    from mergesearch.setup import SearchSetup

    # A private copy: no other process (another test run) can read these files while we watch them.
    models = tmp_path / "zoo"
    for name in ("base", *EXPERTS):
        shutil.copytree(zoo_dir / name, models / name)
    config = demo_config()
    config["models"].update(
        base=str(models / "base"), experts=[{"name": e, "path": str(models / e)} for e in EXPERTS]
    )
    config["data"] = {"path": str(toy_dataset), "max_alignment_prompts": 6, "max_task_prompts": 6}
    setup = SearchSetup.prepare(SearchConfig.model_validate(config), log=lambda _: None)
    every_file = {str(models / name / "model.safetensors") for name in ("base", *EXPERTS)}

    with reading_weights(models) as cold:
        evaluator = Evaluator(setup, log=lambda _: None, trace_reads=True)
    assert cold.files == every_file  # the positive control: loading them is seen
    genome = evaluator.space.uniform()
    evaluator.evaluate(genome)  # the first call may page in the base's mapped weights
    with reading_weights(models) as warm:
        reported = evaluator.evaluate(genome).counts["weight_files_read"]
    assert warm.count == 0 and reported == 0, warm.summary()

    with reading_weights(models) as reloaded:  # the merge pool built again
        ResidentMerger(models / "base", {e: models / e for e in EXPERTS}, log=lambda _: None)
        evaluator.evaluate(genome)
        forget()
    assert reloaded.files == every_file
    with reading_weights(models) as from_pretrained:
        AutoModelForCausalLM.from_pretrained(models / "base")
        forget()
    assert from_pretrained.files == {str(models / "base" / "model.safetensors")}
