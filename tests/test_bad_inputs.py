"""The bad-input catalogue (docs/errors.md): each entry is what a user might hand us, and the one line it
must get back: exit 2, a single ``error:`` line naming the file, field or tensor, no traceback, and no file
left behind that was not there before. Every case fails before a model is loaded or Ray is started.

``MERGESEARCH_ERRORS_DOC=FILE pytest tests/test_bad_inputs.py`` also records each message, for the doc.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from cli_helpers import run
from demo_configs import demo_config

from mergesearch.search.run_dir import RunDir, TrialResult

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"


@dataclass(frozen=True)
class Ctx:
    """What a case builds its input from: a scratch folder, the toy zoo and a toy dataset."""

    tmp: Path
    zoo: Path
    dataset: Path

    def config(self, change: Callable[[dict], object] = lambda c: None, name: str = "bad.yaml") -> str:
        """The demo config (pattern judge, small data caps, the session's dataset), changed, written."""
        config = demo_config(resolved=False)
        config["data"] = {"path": str(self.dataset), "max_alignment_prompts": 4, "max_task_prompts": 4}
        config["search"]["num_trials"] = 2
        change(config)
        path = self.tmp / name
        path.write_text(yaml.safe_dump(config))
        return str(path)

    def model_copy(self, member: str, name: str = "m") -> Path:
        folder = self.tmp / name
        shutil.copytree(self.zoo / member, folder)
        return folder

    def expert(self, folder: Path) -> Callable[[dict], None]:
        def change(config: dict) -> None:
            config["models"]["experts"][1]["path"] = str(folder)

        return change

    def dataset_copy(self, keep: Callable[[dict], bool] = lambda r: True, edit=lambda r: r) -> Path:
        rows = [edit(r) for r in pq.read_table(self.dataset / "rows.parquet").to_pylist() if keep(r)]
        folder = self.tmp / "ds"
        folder.mkdir()
        schema = pq.read_schema(self.dataset / "rows.parquet")
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "rows.parquet")
        shutil.copy(self.dataset / "card.json", folder / "card.json")
        return folder

    def run_dir(self, config_path: str) -> Path:
        """A run dir that recorded ``config_path``'s search (resolved, as ``search`` records it)."""
        from mergesearch.config import load_config
        from mergesearch.search.run_dir import RunDir
        from mergesearch.setup import SearchSetup

        run = RunDir(self.tmp / "run")
        run.write_config(SearchSetup.prepare(load_config(config_path), log=lambda _: None).config)
        return run.root


@dataclass(frozen=True)
class Case:
    id: str
    area: str
    what: str
    build: Callable[[Ctx], list[str]]  # the CLI arguments
    says: tuple[str, ...]  # fragments of the one error line
    env: dict[str, str] = field(default_factory=dict)
    disk_bytes: int | None = None  # the disk refuses any file growing past this (RLIMIT_FSIZE)


def search(config: str) -> list[str]:
    return ["search", config, "--run-dir", str(Path(config).parent / "run"), "--no-promote", "--no-baseline"]


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _json_edit(file: Path, **changes) -> None:
    file.write_text(json.dumps(json.loads(file.read_text()) | changes))


def _latin1_config(c: Ctx) -> list[str]:
    path = Path(c.config())
    path.write_bytes(path.read_bytes() + "# café\n".encode("latin-1"))
    return search(str(path))


def _bin_only(c: Ctx) -> list[str]:
    import torch
    from safetensors.torch import load_file

    folder = c.model_copy("math")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return search(c.config(c.expert(folder)))


def _truncated_expert(c: Ctx) -> list[str]:
    folder = c.model_copy("math")
    _truncate(folder / "model.safetensors")
    return search(c.config(c.expert(folder)))


def _truncated_eval(c: Ctx) -> list[str]:
    folder = c.model_copy("aligned")
    _truncate(folder / "model.safetensors")
    return ["eval", str(folder), "--data", str(c.dataset), "--json", str(c.tmp / "r.json")]


def _recipe(c: Ctx, weight: object, method: str = "task_arithmetic") -> Path:
    """A mergekit recipe over the zoo, math's weight as given."""
    recipe = {
        "merge_method": method,
        "base_model": str(c.zoo / "base"),
        "models": [{"model": str(c.zoo / "math"), "parameters": {"weight": weight}}],
    }
    path = c.tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _recipe_filter_within_a_layer(c: Ctx) -> list[str]:
    weight = [{"filter": "self_attn", "value": 0.3}, {"value": 0.8}]
    recipe = _recipe(c, weight)
    return ["eval", "--from-recipe", str(recipe), "--out", str(c.tmp / "merged"), "--data", str(c.dataset)]


def _recipe_of_another_method(c: Ctx) -> list[str]:
    recipe = _recipe(c, 0.5, method="ties")
    return search(c.config(lambda config: config["merge"].update(from_recipe=str(recipe))))


def _garbage_weights_plan(c: Ctx) -> list[str]:
    folder = c.model_copy("math")
    (folder / "model.safetensors").write_bytes(b"\xff" * 8 + b"not a safetensors header")
    return ["plan", c.config(c.expert(folder))]


def _bad_config_json(c: Ctx) -> list[str]:
    folder = c.model_copy("math")
    (folder / "config.json").write_text("{hidden_size: 128")
    return search(c.config(c.expert(folder)))


def _other_shape(c: Ctx) -> list[str]:
    folder = c.model_copy("math")
    _json_edit(folder / "config.json", vocab_size=1234)
    return search(c.config(c.expert(folder)))


def _no_weights(c: Ctx) -> list[str]:
    folder = c.model_copy("math")
    (folder / "model.safetensors").unlink()
    return search(c.config(c.expert(folder)))


def _no_chat_template(c: Ctx) -> list[str]:
    folder = c.model_copy("aligned")
    config = folder / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    settings.pop("chat_template", None)
    config.write_text(json.dumps(settings))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    return ["eval", str(folder), "--data", str(c.dataset)]


def _data(c: Ctx, folder: Path) -> list[str]:
    return search(c.config(lambda config: config["data"].update(path=str(folder))))


def _missing_column(c: Ctx) -> list[str]:
    folder = c.dataset_copy()
    table = pq.read_table(folder / "rows.parquet").drop(["response"])
    pq.write_table(table, folder / "rows.parquet")
    return ["eval", "zoo:aligned", "--data", str(folder)]


def _text_as_parquet(c: Ctx) -> list[str]:
    folder = c.dataset_copy()
    (folder / "rows.parquet").write_text("id,prompt\n1,hello\n")
    return ["eval", "zoo:aligned", "--data", str(folder)]


def _null_prompt(c: Ctx) -> list[str]:
    folder = c.dataset_copy(edit=lambda r: r | {"prompt": None} if r["type"] == "benign" else r)
    return ["eval", "zoo:aligned", "--data", str(folder)]


def _prompt_file(c: Ctx, name: str, data: bytes) -> list[str]:
    (c.tmp / name).write_bytes(data)
    return ["data", "import", str(c.tmp / name), "--out", str(c.tmp / "set"), "--category", "S1"]


def _torn_ledger(c: Ctx) -> list[str]:
    run = c.run_dir(c.config())
    (run / "trials.parquet").write_bytes(b"PAR1\x00\x00truncated")
    return ["report", str(run)]


def _foreign_ledger(c: Ctx) -> list[str]:
    run = c.run_dir(c.config())
    pq.write_table(pa.table({"trial_id": ["t1"], "fitness": [0.5]}), run / "trials.parquet")
    return ["report", str(run)]


def _ledger_bad_cell(c: Ctx) -> list[str]:
    run = c.run_dir(c.config())
    RunDir(run).write_trials([TrialResult(genes={"a": 0.5}, running={1: 0.5}, index=0)], ["a"])
    rows = pq.read_table(run / "trials.parquet").to_pylist()
    rows[0]["running_json"] = '{"1": "high"}'
    pq.write_table(pa.Table.from_pylist(rows), run / "trials.parquet")
    return ["report", str(run)]


def _changed_config(c: Ctx) -> list[str]:
    c.run_dir(c.config())
    return search(c.config(lambda config: config["search"].update(seed=7)))


def _run_dir_is_a_file(c: Ctx) -> list[str]:
    config = c.config()
    (c.tmp / "run").write_text("not a folder")
    return search(config)


def _another_version(c: Ctx) -> list[str]:
    run = c.run_dir(c.config())
    recorded = yaml.safe_load((run / "config.yaml").read_text()) | {"schema_version": 99}
    (run / "config.yaml").write_text(yaml.safe_dump(recorded))
    return ["report", str(run)]


def _cluster(c: Ctx, resources: dict) -> list[str]:
    cluster = {"available_node_types": {"worker": {"resources": resources}}}
    (c.tmp / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    return ["plan", c.config(), "--cluster", str(c.tmp / "cluster.yaml")]


def _data_spec_and(change: Callable[[dict], None]) -> Callable[[dict], None]:
    """``change``, on a config whose data is generated from the toy data spec (into the run dir)."""

    def both(config: dict) -> None:
        config["data"] = {"spec": str(ROOT / "data_specs" / "toy.yaml")}
        change(config)

    return both


def _set(path: str, value) -> Callable[[dict], None]:
    """A change to the config: ``path`` is dotted (``search.num_trials``)."""

    def change(config: dict) -> None:
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[last] = value

    return change


WEIGHT = "merge.bounds.weight"
CASES = [
    # configs
    Case(
        "config-unknown-key",
        "config",
        "a key the schema lacks",
        lambda c: search(c.config(_set("colour", "red"))),
        ("bad.yaml", "colour: unknown key"),
    ),
    Case(
        "config-wrong-type",
        "config",
        "`search.num_trials: ten`",
        lambda c: search(c.config(_set("search.num_trials", "ten"))),
        ("search.num_trials",),
    ),
    Case(
        "config-inverted-bounds",
        "config",
        "bounds with low above high",
        lambda c: search(c.config(_set(WEIGHT, {"low": 1.0, "high": -1.0}))),
        (WEIGHT, "must be below"),
    ),
    Case(
        "config-nan-bound",
        "config",
        "a NaN bound (`.nan`)",
        lambda c: search(c.config(_set(WEIGHT, {"low": float("nan"), "high": 1.0}))),
        (WEIGHT, "finite"),
    ),
    Case(
        "config-infinite-bound",
        "config",
        "an infinite bound (`.inf`)",
        lambda c: search(c.config(_set(WEIGHT, {"low": 0.0, "high": float("inf")}))),
        (WEIGHT, "finite"),
    ),
    Case(
        "config-unknown-method",
        "config",
        "a merge method no one registered",
        lambda c: search(c.config(_set("merge.method", "frankenmerge"))),
        ("merge.method", "frankenmerge"),
    ),
    Case(
        "config-unknown-searcher",
        "config",
        "a searcher no one registered",
        lambda c: search(c.config(_set("search.name", "hillclimb"))),
        ("search.name", "hillclimb"),
    ),
    Case(
        "config-unknown-judge",
        "config",
        "a judge kind no one registered",
        lambda c: search(c.config(_set("judge", {"kind": "vibes"}))),
        ("judge.kind", "vibes"),
    ),
    Case(
        "config-yaml-syntax",
        "config",
        "broken YAML",
        lambda c: (Path(c.config()).write_text("name: [demo\n"), search(str(c.tmp / "bad.yaml")))[1],
        ("bad.yaml", "invalid YAML at line"),
    ),
    Case(
        "config-empty",
        "config",
        "an empty config file",
        lambda c: (Path(c.config()).write_text(""), search(str(c.tmp / "bad.yaml")))[1],
        ("bad.yaml", "expected a mapping"),
    ),
    Case(
        "config-missing",
        "config",
        "a config path that does not exist",
        lambda c: search(str(c.tmp / "nope.yaml")),
        ("nope.yaml", "config file not found"),
    ),
    Case(
        "config-not-utf8",
        "config",
        "a config saved as Latin-1",
        _latin1_config,
        ("bad.yaml", "not UTF-8 text"),
    ),
    Case(
        "config-duplicate-experts",
        "config",
        "two experts with one name",
        lambda c: search(c.config(lambda x: x["models"]["experts"][1].update(name="aligned"))),
        ("models.experts", "unique"),
    ),
    Case(
        "config-shell-name",
        "config",
        "a run name with shell metacharacters",
        lambda c: search(c.config(_set("name", "a; rm -rf /"))),
        ("name",),
    ),
    Case(
        "config-unknown-lm-eval-task",
        "config",
        "a mistyped lm-eval task in `promotion.tasks` (named before the search, not after it)",
        lambda c: [
            "search",
            c.config(lambda config: config["promotion"].update(tasks=["mmlu_anatomyy"])),
            "--run-dir",
            str(c.tmp / "run"),
            "--no-baseline",
        ],
        ("promotion.tasks", "'mmlu_anatomyy' is not an lm-eval task", "did you mean mmlu_anatomy"),
    ),
    Case(
        "config-validate-without-rows",
        "config",
        "`promotion.validate_top` where the fitness already reads the whole search split",
        lambda c: search(
            c.config(
                lambda config: (
                    config["data"].update(max_alignment_prompts=10_000, max_task_prompts=10_000),
                    config["promotion"].update(top_k=1, validate_top=2),
                )
            )
        ),
        ("promotion.validate_top", "holds no row past those the fitness reads"),
    ),
    Case(
        "config-method-without-genes",
        "config",
        "a merge method with nothing to search (model_stock: no per-expert or per-group parameter)",
        lambda c: search(c.config(lambda config: config["merge"].update(method="model_stock", bounds={}))),
        ("merge", "model_stock has no genes to search"),
    ),
    Case(
        "config-gates-without-weights",
        "config",
        "expert gates on a method with no per-expert weight (slerp)",
        lambda c: search(
            c.config(
                lambda config: config["merge"].update(method="slerp", bounds={}, gates={"kind": "threshold"})
            )
        ),
        ("merge", "gates: slerp has no per-expert weight for a gate to close"),
    ),
    Case(
        "config-searcher-needs-gates",
        "config",
        "the expert-selecting searcher on a pool without gates",
        lambda c: search(c.config(_set("search.name", "select_cma"))),
        ("search.name: this searcher selects experts; set merge.gates",),
    ),
    Case(
        "config-unknown-task-vector-form",
        "config",
        "a task-vector form no one registered",
        lambda c: search(c.config(_set("merge.task_vectors", {"form": "pruned"}))),
        ("merge.task_vectors.form", "unknown task-vector form 'pruned'", "low_rank, sparse"),
    ),
    Case(
        "models-pool-file-missing",
        "models",
        "a pool file that does not exist",
        lambda c: search(c.config(lambda config: config["models"].update(pool=str(c.tmp / "pool.yaml")))),
        ("models.pool", "pool.yaml: pool file not found"),
    ),
    Case(
        "models-pool-glob-matches-nothing",
        "models",
        "a pool file whose glob matches no model folder",
        lambda c: (
            (c.tmp / "pool.yaml").write_text("experts:\n  - fine-tunes/*-sft\n"),
            search(c.config(lambda config: config["models"].update(pool=str(c.tmp / "pool.yaml")))),
        )[1],
        ("pool.yaml: fine-tunes/*-sft matches no model folder",),
    ),
    # models
    Case(
        "model-missing",
        "models",
        "a base folder that does not exist",
        lambda c: search(c.config(_set("models.base", str(c.tmp / "no-base")))),
        ("models.base", "no config.json"),
    ),
    Case(
        "model-bin-only",
        "models",
        "an expert with pickle weights only (`pytorch_model.bin`)",
        _bin_only,
        ("models.experts.math", "pickle weights"),
    ),
    Case(
        "model-truncated-expert",
        "models",
        "an expert's safetensors cut in half (a broken download)",
        _truncated_expert,
        ("models.experts.math", "model.safetensors: truncated"),
    ),
    Case(
        "model-truncated-eval",
        "models",
        "`eval` of a model whose safetensors is cut in half",
        _truncated_eval,
        ("MODEL", "model.safetensors: truncated"),
    ),
    Case(
        "model-garbage-weights-plan",
        "models",
        "`plan` with an expert whose safetensors is garbage",
        _garbage_weights_plan,
        ("models.experts.math", "not a safetensors file"),
    ),
    Case(
        "model-config-not-json",
        "models",
        "an expert whose config.json is not JSON",
        _bad_config_json,
        ("config.json", "not valid JSON"),
    ),
    Case(
        "model-other-vocabulary",
        "models",
        "an expert with another vocabulary size",
        _other_shape,
        ("expert 'math'", "vocab_size"),
    ),
    Case(
        "model-no-weights",
        "models",
        "an expert folder with config.json and no weights",
        _no_weights,
        ("models.experts.math", "no model.safetensors"),
    ),
    Case(
        "model-no-chat-template",
        "models",
        "`eval` of a model whose tokenizer has no chat template",
        _no_chat_template,
        ("chat template",),
    ),
    Case(
        "recipe-filter-within-a-layer",
        "models",
        "`eval --from-recipe` of a mergekit recipe whose weight differs by tensor type inside a layer",
        _recipe_filter_within_a_layer,
        ("recipe.yaml: models[0].parameters.weight", "one value per layer"),
    ),
    Case(
        "recipe-of-another-method",
        "config",
        "`merge.from_recipe`: a recipe whose method is not the search's",
        _recipe_of_another_method,
        ("merge.from_recipe (", "recipe.yaml): the recipe merges with ties, merge.method is"),
    ),
    Case(
        "model-unknown-zoo",
        "models",
        "`zoo:nope`",
        lambda c: ["eval", "zoo:nope", "--data", str(c.dataset)],
        ("MODEL", "unknown zoo model 'nope'"),
    ),
    Case(
        "model-missing-judge",
        "models",
        "a guard judge whose model is missing",
        lambda c: search(c.config(_set("judge", {"kind": "llama_guard", "model": str(c.tmp / "no-guard")}))),
        ("judge.model", "no config.json"),
    ),
    # data
    Case(
        "data-missing",
        "data",
        "`data.path` that does not exist",
        lambda c: _data(c, c.tmp / "no-data"),
        ("no-data", "no rows.parquet"),
    ),
    Case(
        "data-no-alignment-rows",
        "data",
        "a dataset without alignment rows while safety is weighted",
        lambda c: _data(c, c.dataset_copy(keep=lambda r: r["type"] != "alignment")),
        ("objective 'safety' has no rows",),
    ),
    Case(
        "data-empty-split",
        "data",
        "a dataset with no rows in the search split",
        lambda c: _data(c, c.dataset_copy(edit=lambda r: r | {"split": "heldout"})),
        ("no rows in split 'search'",),
    ),
    Case(
        "data-missing-column",
        "data",
        "a Parquet file without the `response` column",
        _missing_column,
        ("rows.parquet", "missing column 'response'"),
    ),
    Case(
        "data-not-parquet",
        "data",
        "a text file named rows.parquet",
        _text_as_parquet,
        ("rows.parquet", "not a readable Parquet file"),
    ),
    Case(
        "data-null-prompt",
        "data",
        "a dataset row whose prompt is null",
        _null_prompt,
        ("rows.parquet", "column 'prompt'", "null"),
    ),
    Case(
        "data-empty-prompt-file",
        "data",
        "`data import` of an empty file",
        lambda c: _prompt_file(c, "p.txt", b""),
        ("p.txt", "no prompts found"),
    ),
    Case(
        "data-latin1-prompt-file",
        "data",
        "`data import` of a Latin-1 file",
        lambda c: _prompt_file(c, "p.txt", "caf\xe9 recipe\n".encode("latin-1")),
        ("p.txt", "not UTF-8 text"),
    ),
    Case(
        "data-binary-prompt-file",
        "data",
        "`data import` of a binary file named .txt",
        lambda c: _prompt_file(c, "p.txt", b"\x08\x00\x00\x00header"),
        ("p.txt", "binary data"),
    ),
    Case(
        "data-csv-without-prompts",
        "data",
        "`data import` of a CSV without a prompt column",
        lambda c: _prompt_file(c, "p.csv", b"text,target\nhi,there\n"),
        ("p.csv", "column"),
    ),
    # run dirs
    Case(
        "run-torn-ledger",
        "run dirs",
        "a run dir whose trials.parquet was cut short",
        _torn_ledger,
        ("trials.parquet", "not a readable trial ledger"),
    ),
    Case(
        "run-foreign-ledger",
        "run dirs",
        "a trials.parquet with columns of another version",
        _foreign_ledger,
        ("trials.parquet", "not a trial ledger of this version"),
    ),
    Case(
        "run-ledger-bad-cell",
        "run dirs",
        "a trials.parquet whose running fitness cell holds a word, not a number",
        _ledger_bad_cell,
        ("trials.parquet", "running.1: Input should be a valid number", "(got 'high')"),
    ),
    Case(
        "run-changed-config",
        "run dirs",
        "re-running a run dir with a changed config",
        _changed_config,
        ("already holds a search with a different config",),
    ),
    Case(
        "run-disk-full",
        "run dirs",
        "a disk that fills up while `data import` writes its prompt set",
        lambda c: _prompt_file(c, "p.txt", "\n".join(f"How to do harm {i}?" for i in range(400)).encode()),
        ("set", "File too large"),
        disk_bytes=4096,
    ),
    Case(
        "run-dir-is-a-file",
        "run dirs",
        "`--run-dir` naming a file",
        _run_dir_is_a_file,
        ("run", "is a file, not a run dir"),
    ),
    Case(
        "run-another-version",
        "run dirs",
        "a run dir whose config.yaml another version wrote",
        _another_version,
        ("config.yaml", "schema_version: unknown key"),
    ),
    # CLI arguments
    Case(
        "cli-bad-option-value",
        "cli",
        "`eval --max-new-tokens 0`",
        lambda c: ["eval", "zoo:aligned", "--data", str(c.dataset), "--max-new-tokens", "0"],
        ("--max-new-tokens", "mergesearch eval --help"),
    ),
    Case(
        "cli-unknown-command",
        "cli",
        "a mistyped command (`serch`)",
        lambda c: ["serch"],
        ("No such command 'serch'",),
    ),
    Case(
        "cli-cuda-without-gpu",
        "cli",
        "`eval --device cuda` on a machine without CUDA",
        lambda c: ["eval", "zoo:aligned", "--data", str(c.dataset), "--device", "cuda"],
        ("device 'cuda'", "no CUDA GPU"),
    ),
    # the cluster
    Case(
        "cluster-memory-not-a-number",
        "cluster",
        "a cluster file with `memory: lots`",
        lambda c: _cluster(c, {"CPU": 2, "memory": "lots"}),
        ("cluster.yaml", "must be numbers"),
    ),
    Case(
        "cluster-search-does-not-fit",
        "cluster",
        "a local search whose evaluators need more CPUs than the machine has, with data still to generate "
        "(refused before the minutes of generation)",
        lambda c: [
            "search",
            c.config(_data_spec_and(_set("resources.cpus_per_evaluator", 512))),
            "--run-dir",
            str(c.tmp / "run"),
            "--no-baseline",
        ],
        ("this machine", "evaluator"),
    ),
    Case(
        "cluster-actors-do-not-fit-together",
        "cluster",
        "a local search whose evaluators take every CPU and leave none for the guard judge (each fits "
        "alone; together they would wait forever)",
        lambda c: search(
            c.config(
                lambda config: config.update(
                    judge={"kind": "llama_guard", "model": "zoo:guard"},
                    resources={"num_evaluators": 1, "cpus_per_evaluator": os.cpu_count()},
                )
            )
        ),
        ("this machine", "together", "judge x1 1 CPU"),
    ),
    Case(
        "cluster-bad-address",
        "cluster",
        "`RAY_ADDRESS=not-an-address`",
        lambda c: search(c.config()),
        ("RAY_ADDRESS", "expected host:port"),
        {"RAY_ADDRESS": "not-an-address"},
    ),
    Case(
        "cluster-unreachable",
        "cluster",
        "`RAY_ADDRESS` where no Ray head listens",
        lambda c: search(c.config()),
        ("RAY_ADDRESS", "no Ray head answers"),
        {"RAY_ADDRESS": "127.0.0.1:9"},
    ),
]


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_a_bad_input_gets_one_line_naming_it_and_leaves_nothing_behind(case, zoo_dir, toy_dataset, tmp_path):
    if case.id == "cli-cuda-without-gpu":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    args = case.build(Ctx(tmp_path, zoo_dir, toy_dataset))
    before = _files(tmp_path)
    done = run(*args, cwd=tmp_path, env={**os.environ, **case.env}, file_size_limit=case.disk_bytes)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    for fragment in case.says:
        assert fragment in lines[0], lines[0]
    assert _files(tmp_path) == before, "partial output left behind"
    if os.environ.get("MERGESEARCH_ERRORS_DOC"):
        with open(os.environ["MERGESEARCH_ERRORS_DOC"], "a") as fh:
            fh.write(json.dumps({"id": case.id, "line": lines[0].replace(str(tmp_path), "<dir>")}) + "\n")


def test_the_catalogue_is_documented_entry_by_entry() -> None:
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    text = DOC.read_text()
    for case in CASES:
        assert f"`{case.id}`" in text, f"docs/errors.md lacks {case.id}"


ENGINES = ("transformers", "ray.tune")  # seconds to import; a bad dataset or model needs neither


@pytest.mark.parametrize("case_id", ["data-missing", "model-unknown-zoo", "data-missing-column"])
def test_a_bad_dataset_or_model_is_answered_before_transformers_or_tune_is_imported(
    case_id, zoo_dir, toy_dataset, tmp_path
):
    case = next(c for c in CASES if c.id == case_id)
    args = case.build(Ctx(tmp_path, zoo_dir, toy_dataset))
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mergesearch.cli", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    imported = {line.rpartition("|")[2].strip() for line in done.stderr.splitlines() if "|" in line}
    assert not imported & set(ENGINES), sorted(imported & set(ENGINES))
