"""Configs are validated once, at the edge: every mistake is one line naming the file and the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cli_helpers import run
from pydantic import ValidationError

from mergesearch.config import SearchConfig, load_config
from mergesearch.errors import ConfigError
from mergesearch.objectives.lm_eval_tasks import cached_task_names, known_tasks

ROOT = Path(__file__).resolve().parents[1]
VALID = "name: t\nmodels: {base: b, experts: [{name: a, path: p}]}\n"


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_search_space_validates(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, SearchConfig)


def test_every_promotion_task_of_a_shipped_config_is_an_lm_eval_task_or_group() -> None:
    """The paper's task lists (biology, STEM, three-model) must name what lm-eval can run."""
    from lm_eval.tasks import TaskManager

    known = set(TaskManager().all_tasks)
    configs = [load_config(p) for p in sorted((ROOT / "search_spaces").glob("*.yaml"))]
    wanted = {task for cfg in configs for task in cfg.promotion.tasks}
    assert {"pubmedqa", "medmcqa", "mmlu_stem", "medqa_4options"} <= wanted
    assert wanted - known == set()
    assert known_tasks() == known  # the cached names `config check` and `search` read are lm-eval's


def test_lm_evals_task_names_are_indexed_once_per_install_and_again_once_it_changes(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MERGESEARCH_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tasks"
    (folder / "arc").mkdir(parents=True)
    (folder / "arc" / "arc_easy.yaml").write_text("task: arc_easy\n")
    indexed: list[str] = []

    def index() -> list[str]:
        indexed.append("once more")
        return ["arc_easy"] + [path.stem for path in folder.glob("*/*.yaml") if path.stem != "arc_easy"]

    assert cached_task_names(folder, "0.4.13", index) == {"arc_easy"}
    assert cached_task_names(folder, "0.4.13", index) == {"arc_easy"} and len(indexed) == 1
    cached_task_names(folder, "0.4.14", index)  # another lm-eval
    assert len(indexed) == 2
    (folder / "arc" / "arc_new.yaml").write_text("task: arc_new\n")  # a task file added
    assert cached_task_names(folder, "0.4.14", index) == {"arc_easy", "arc_new"} and len(indexed) == 3
    for cached in (tmp_path / "cache" / "lm_eval_tasks").iterdir():
        cached.write_text("{torn")
    assert cached_task_names(folder, "0.4.14", index) == {"arc_easy", "arc_new"} and len(indexed) == 4
    monkeypatch.setenv("MERGESEARCH_CACHE", str(folder / "arc" / "arc_easy.yaml"))  # a file: not writable
    assert cached_task_names(folder, "0.4.14", index) == {"arc_easy", "arc_new"} and len(indexed) == 5


def test_the_paper_scale_configs_carry_the_papers_fitness() -> None:
    loss = load_config(ROOT / "search_spaces" / "paper_llama3_openbio_loss_gpu.yaml")
    assert loss.fitness.weights == {"loss_proxy": 1.0} and loss.fitness.loss_alpha == 0.3
    assert loss.data.max_alignment_prompts + loss.data.max_task_prompts == 1000  # K = 1000 tagged samples
    assert (loss.merge.method, loss.merge.granularity, loss.search.num_trials) == ("ties", "layer", 100)
    guard = load_config(ROOT / "search_spaces" / "paper_llama3_openbio_guard_gpu.yaml")
    assert guard.judge.kind == "llama_guard" and guard.fitness.weights["safety"] > 0


def test_engines_run_in_the_pools_dtype_unless_told(tmp_path: Path) -> None:
    pool_bf16 = "name: t\nmodels: {base: b, experts: [{name: a, path: p}], dtype: bfloat16}\n"
    cfg = load_config(write(tmp_path, pool_bf16 + "judge: {dtype: float16, max_model_len: 4096}\n"))
    assert cfg.backend.dtype == "bfloat16" and cfg.judge.dtype == "float16"
    assert cfg.judge.vllm_settings() == {
        "dtype": "float16",
        "max_model_len": 4096,
        "tensor_parallel_size": 1,
        "enforce_eager": True,
    }
    vllm = "backend: {kind: vllm, gpu_memory_utilization: 0.5, sleep_mode: true, enforce_eager: false}\n"
    settings = load_config(write(tmp_path, VALID + vllm)).backend.vllm_settings()
    assert settings == {
        "dtype": "float32",
        "gpu_memory_utilization": 0.5,
        "tensor_parallel_size": 1,
        "enforce_eager": False,
        "enable_sleep_mode": True,
    }


def test_configs_are_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, VALID))
    with pytest.raises(ValidationError, match="frozen"):
        cfg.search.num_trials = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("search: {num_trails: 5}\n", "search.num_trails: unknown key (did you mean 'num_trials'?)"),
        (
            "resources: {num_evaluators: many}\n",
            "resources.num_evaluators: an integer of at least 1, or `auto` (got 'many')",
        ),
        (
            "search: {num_trials: 0}\n",
            "search.num_trials: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            "resources: {gpus_per_evaluator: 1.5}\n",
            "resources.gpus_per_evaluator: Input should be less than or equal to 1",
        ),
        (
            "merge: {bounds: {weight: {low: 1, high: 0}}}\n",
            "merge.bounds.weight: low (1.0) must be below high",
        ),
        ("merge: {method: frankenmerge}\n", "merge.method: unknown merge method 'frankenmerge'; known: "),
        ("merge: {bounds: {density: {low: 0, high: 1}}}\n", "merge: bounds: task_arithmetic has no searched"),
        (
            "merge: {method: ties, params: {rank_share: 1}}\n",
            "merge: params: ties has no shared parameter 'ran",
        ),
        ("merge: {method: slerp, bounds: {t: {low: 0, high: 0.5}}, params: {gain: 2}}\n", "has no shared"),
        (
            "search: {name: grid}\nmerge: {granularity: layer}\n",
            "search.name: this searcher covers merge.gra",
        ),
        ("backend: {kind: onnx}\n", "backend.kind: unknown backend 'onnx'; known: hf, vllm"),
        ("judge: {kind: vibes}\n", "judge.kind: unknown judge 'vibes'; known: llama_guard, refusal"),
        ("plugins: [no_such_module]\n", "cannot import plug-in module 'no_such_module'"),
        ("fitness: {weights: {vibes: 1}}\n", "fitness.weights: unknown objective 'vibes'"),
        ("judge: {kind: llama_guard}\n", "judge: a llama_guard judge needs `model`"),
        ("judge: {backend: onnx}\n", "judge.backend: unknown backend 'onnx'; known: hf, vllm"),
        ("backend: {gpu_memory_utilization: 1.5}\n", "backend.gpu_memory_utilization: Input should be less"),
        ("backend: {sleep_mode: true}\n", "backend: sleep_mode is a vLLM feature"),
        ("judge: {sleep_mode: true}\n", "judge.sleep_mode: the judge serves every evaluator"),
        ("merge: {pool_device: disk}\n", "merge.pool_device: Input should be 'gpu' or 'host'"),
        (
            "merge: {task_vectors: {form: pruned}}\n",
            "merge.task_vectors.form: unknown task-vector form 'pruned'; known: dense, low_rank, sparse",
        ),
        (
            "merge: {task_vectors: {form: sparse, density: 0}}\n",
            "merge.task_vectors.density: Input should be",
        ),
        ("models: {base: b, experts: [{name: a, path: p}], dtype: fp8}\n", "models.dtype: Input should be"),
    ],
)
def test_a_wrong_field_is_one_line_naming_file_and_field(tmp_path: Path, extra: str, expected: str) -> None:
    path = write(tmp_path, VALID + extra)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_duplicate_expert_names_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\nmodels: {base: b, experts: [{name: a, path: p}, {name: a, path: q}]}\n")
    with pytest.raises(ConfigError, match="expert names must be unique, repeated: a"):
        load_config(path)


def test_missing_file_and_broken_yaml_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+"):
        load_config(write(tmp_path, "name: [unclosed\n"))


@pytest.mark.parametrize("extra", ["bogus_key: 1\n", "search: {num_trials: -1}\n", "search: {seed: abc}\n"])
def test_cli_prints_one_error_line_without_traceback_and_exits_nonzero(tmp_path: Path, extra: str) -> None:
    path = write(tmp_path, VALID + extra)
    done = run("config", "check", str(path))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ")
    assert "Traceback" not in done.stderr


def test_early_exit_settings_written_under_judge_by_an_earlier_version_are_read_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A config file or run dir of an earlier version kept early exit on ``judge`` (and a judge's
    ``sleep_mode: false``): it loads as the same search, and says so once."""
    import mergesearch.config as config_module
    from mergesearch.search.run_dir import RunDir

    config_module._warned.clear()
    old = (
        "judge: {kind: refusal, early_exit: true, early_exit_tokens: 12, early_exit_benign_tokens: 16,"
        " early_exit_answer_tokens: 24, sleep_mode: false}\n"
    )
    path = write(tmp_path, VALID + old)
    config = load_config(path)
    assert config.early_exit.model_dump() == {
        "enabled": True,
        "guard_tokens": 12,
        "benign_tokens": 16,
        "answer_tokens": 24,
    }
    section = "early_exit: {enabled: true, guard_tokens: 12, benign_tokens: 16, answer_tokens: 24}\n"
    new = load_config(write(tmp_path, VALID + "judge: {kind: refusal}\n" + section, "new.yaml"))
    assert config == new
    load_config(path)  # a second read of the same keys says nothing more
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: a config of an earlier version")
    assert "judge.early_exit_tokens -> early_exit.guard_tokens" in warnings[0]

    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    (run.config_file).write_text(path.read_text())  # as an earlier version recorded it
    run.check_config(new)  # the same search: it resumes


@pytest.mark.parametrize(
    "extra",
    [
        "judge: {kind: refusal, early_exit: true}\nearly_exit: {enabled: false}\n",
        "judge: {kind: llama_guard, model: g, sleep_mode: true}\n",
    ],
)
def test_old_and_new_early_exit_keys_together_or_a_sleeping_judge_are_one_line(
    tmp_path: Path, extra: str
) -> None:
    with pytest.raises(
        ConfigError, match=r"judge\.(early_exit\*: set them under `early_exit` only|sleep_mode)"
    ):
        load_config(write(tmp_path, VALID + extra))


# ------------------------------------------------------------------------------------ GPU defaults
def config_with(**sections) -> SearchConfig:
    return SearchConfig.model_validate(
        {"name": "t", "models": {"base": "b", "experts": [{"name": "a", "path": "p"}]}, **sections}
    )


@pytest.mark.parametrize(
    ("sections", "dtype"),
    [
        ({}, "float32"),  # CPU evaluators
        ({"resources": {"gpus_per_evaluator": 0.5}, "promotion": {"gpus": 1}}, "bfloat16"),
        ({"resources": {"gpus_per_evaluator": 1}, "models_dtype": "float32"}, "float32"),  # as written
        ({"resources": {"gpus_per_evaluator": 1}, "models_dtype": "float16"}, "float16"),
    ],
)
def test_the_pool_dtype_is_bfloat16_on_gpu_evaluators_and_float32_on_cpu_unless_written(
    sections: dict, dtype: str
) -> None:
    written = sections.pop("models_dtype", None)
    models = {"base": "b", "experts": [{"name": "a", "path": "p"}], **({"dtype": written} if written else {})}
    config = SearchConfig.model_validate({"name": "t", "models": models, **sections})
    assert config.models.dtype == config.backend.dtype == config.judge.dtype == dtype


def test_the_default_fitness_weighs_over_refusal() -> None:
    """A merge that refuses everything is perfectly safe: by default it pays for refusing benign ones."""
    assert config_with().fitness.weights["over_refusal"] > 0


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"backend": {"device": "cuda"}}, "backend.device: cuda needs resources.gpus_per_evaluator above 0"),
        (
            {"backend": {"device": "cuda"}, "resources": {"gpus_per_evaluator": 1}},
            "backend.device: cuda needs promotion.gpus above 0",
        ),
        (
            {"backend": {"tensor_parallel_size": 2}},
            "backend.tensor_parallel_size: an engine holds at most one GPU here",
        ),
        ({"judge": {"tensor_parallel_size": 4}}, "judge.tensor_parallel_size"),
    ],
)
def test_a_gpu_layout_that_cannot_run_is_refused_when_the_config_is_read(
    tmp_path: Path, sections: dict, message: str
) -> None:
    import yaml

    models = {"base": "b", "experts": [{"name": "a", "path": "p"}]}
    path = write(tmp_path, yaml.safe_dump({"name": "t", "models": models, **sections}))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


# ------------------------------------------------------------------------------------ expert names
def test_an_expert_goes_by_the_name_a_researcher_writes_and_genes_by_its_gene_id(tmp_path: Path) -> None:
    from mergesearch.merge.genome import GenomeSpace
    from mergesearch.report import genome_matrix

    experts = [{"name": "OpenBioLLM-8B", "path": "p"}, {"name": "Llama-3.1-8B-Instruct", "path": "q"}]
    config = load_config(write(tmp_path, f"name: t\nmodels: {{base: b, experts: {experts}}}\n"))
    names = [e.name for e in config.models.experts]
    assert names == ["OpenBioLLM-8B", "Llama-3.1-8B-Instruct"]
    space = GenomeSpace("task_arithmetic", tuple(names), 2)
    assert space.gene_names() == ["w.OpenBioLLM_8B.g0", "w.Llama_3_1_8B_Instruct.g0"]
    recipe = space.decode(space.expert_alone("OpenBioLLM-8B"))
    assert recipe.experts == tuple(names)  # the recipe, the merge and the export keep the names
    labels, _, _ = genome_matrix(space.uniform(), {"OpenBioLLM_8B": "OpenBioLLM-8B"})
    assert labels[0] == "w · OpenBioLLM-8B"  # the report shows the expert's own name


@pytest.mark.parametrize(
    ("experts", "message"),
    [
        (
            "[{name: a-b, path: p}, {name: a.b, path: q}]",
            "experts 'a-b' and 'a.b' both go by 'a_b' in gene names",
        ),
        (
            "[{name: org/model, path: p}]",
            "models.experts.0.name: an expert's name may hold any character but `/`",
        ),
    ],
)
def test_expert_names_that_cannot_be_told_apart_or_be_a_folder_are_one_line(
    tmp_path: Path, experts: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, f"name: t\nmodels: {{base: b, experts: {experts}}}\n"))
