"""The datasets promotion's lm-eval tasks read are present before the job: `config check`, `plan` and
`search` name a missing one in one line before any actor starts; `prefetch` fetches them where the hub is
reachable (it is not here: what it says without it is tested)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from cli_helpers import assert_one_line_error, run
from demo_configs import demo_config

from mergesearch.objectives.lm_eval_tasks import dataset_cached, task_datasets


def test_each_task_names_the_hub_datasets_its_subtasks_read() -> None:
    found = task_datasets(["gsm8k", "mmlu", "mmlu_stem", "arc_challenge"])
    assert found["gsm8k"] == [("openai/gsm8k", "main")]
    assert found["arc_challenge"] == [("allenai/ai2_arc", "ARC-Challenge")]
    assert len(found["mmlu"]) == 57 and {path for path, _ in found["mmlu"]} == {"cais/mmlu"}
    assert ("cais/mmlu", "anatomy") in found["mmlu"] and set(found["mmlu_stem"]) < set(found["mmlu"])


def test_a_dataset_is_found_offline_where_datasets_itself_finds_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    folder = tmp_path / "local_dataset"  # a dataset folder on shared storage, as a task may name one
    folder.mkdir()
    (folder / "test.jsonl").write_text(json.dumps({"question": "2+2", "answer": "4"}) + "\n")
    assert dataset_cached(str(folder), None)
    assert not dataset_cached("openai/gsm8k", "main")  # not fetched on this machine


def config_with_tasks(tmp_path: Path, toy_dataset: Path, tasks: list[str]) -> Path:
    config = demo_config()
    config["data"] = {"path": str(toy_dataset)}
    config["promotion"] = {"top_k": 1, "tasks": tasks}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def empty_hub_cache(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets"),
    }


def test_a_missing_task_dataset_is_one_line_from_config_check_and_before_a_search_starts(
    toy_dataset, tmp_path
) -> None:
    path = config_with_tasks(tmp_path, toy_dataset, ["gsm8k"])
    env = empty_hub_cache(tmp_path)
    named = ("promotion.tasks: gsm8k reads the dataset openai/gsm8k (main)", "mergesearch prefetch")
    assert_one_line_error(run("config", "check", str(path), env=env), *named)
    done = run("search", str(path), "--run-dir", str(tmp_path / "run"), env=env)
    assert_one_line_error(done, *named)
    assert not (tmp_path / "run" / "tune").exists() and not (tmp_path / "run" / "trials.parquet").exists()


@pytest.mark.slow  # the hub client retries for about 25 s before it gives up: `make test-slow`
def test_prefetch_without_the_hub_names_what_it_could_not_fetch(toy_dataset, tmp_path) -> None:
    path = config_with_tasks(tmp_path, toy_dataset, ["arc_challenge"])
    done = run("prefetch", str(path), env=empty_hub_cache(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("error: prefetch: arc_challenge: cannot fetch allenai/ai2_arc (ARC-Challenge)")
    )
    nothing = config_with_tasks(tmp_path, toy_dataset, [])
    assert "0 dataset(s) fetched" in run("prefetch", str(nothing), env=empty_hub_cache(tmp_path)).stdout
