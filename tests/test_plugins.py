"""Plug-ins: every family is one Registry that refuses duplicates, and a merge method added in a module of
its own (named in the config, as a user would) runs a real search with real actors, with no other edit."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import assert_one_line_error, run
from demo_configs import demo_config

from mergesearch.config import load_config
from mergesearch.errors import ConfigError
from mergesearch.registry import MERGE_METHODS, Registry
from mergesearch.search.run_dir import RunDir

PLUGINS = Path(__file__).parent / "plugins"
ROOT = Path(__file__).resolve().parents[1]


def test_a_registry_refuses_a_second_entry_under_a_taken_name() -> None:
    family = Registry[int]("thing")
    family.add("a", 1)
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        family.add("a", 2)
    with pytest.raises(ValueError, match="merge method 'ties' is already registered"):
        MERGE_METHODS.add("ties", MERGE_METHODS.get("linear"))


def plugin_config(tmp_path: Path, dataset: Path | None = None, plugins: bool = True) -> Path:
    config = demo_config(resolved=False)
    config.update(
        name="plugin",
        merge={"method": "gated_sum", "bounds": {"gate": {"low": 0.0, "high": 0.9}}, "params": {"gain": 1.1}},
        data={"path": str(dataset or tmp_path), "max_alignment_prompts": 8, "max_task_prompts": 8},
        search={"name": "random", "num_trials": 3, "seed": 0, "warm_starts": ["uniform"]},
        promotion={"top_k": 0},
    )
    if plugins:
        config["plugins"] = ["ms_plugin_method"]
    path = tmp_path / "plugin.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_method_is_known_only_once_its_plugin_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="merge.method: unknown merge method 'gated_sum'"):
        load_config(plugin_config(tmp_path, plugins=False))
    sys.path.insert(0, str(PLUGINS))
    try:
        config = load_config(plugin_config(tmp_path))
    finally:
        sys.path.remove(str(PLUGINS))
    assert config.merge.method == "gated_sum" and config.merge.params == {"gain": 1.1}


def test_a_missing_plugin_module_is_one_line(tmp_path: Path) -> None:
    path = plugin_config(tmp_path)
    path.write_text(path.read_text().replace("ms_plugin_method", "no_such_plugin"))
    assert_one_line_error(run("search", str(path)), "plugins", "no_such_plugin")


def test_a_plugin_method_runs_a_real_search_with_real_actors(toy_dataset: Path, tmp_path: Path) -> None:
    """The user's way: the module on PYTHONPATH (so Ray's workers import it too), named in the config."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])}
    run_dir = tmp_path / "run"
    done = run(
        "search",
        str(plugin_config(tmp_path, toy_dataset)),
        "--run-dir",
        str(run_dir),
        "--no-promote",
        "--no-baseline",
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trials = RunDir(run_dir).trials()
    assert len(trials) == 3 and all(t.ok for t in trials), [t.error for t in trials]
    assert all(set(t.genes) == {f"gate.{e}.g0" for e in ("aligned", "math", "facts")} for t in trials)
    assert all(0.0 <= v <= 0.9 for t in trials for v in t.genes.values())
    assert (
        len({t.fitness for t in trials}) > 1
    )  # the genes reach the merge: different gates, different scores


@pytest.mark.parametrize(
    ("ref", "fragment"),
    [
        (
            "hf:meta/llama",
            "neither a folder nor a known model scheme (smollm2, smollm2_family, zoo, zoo_pool)",
        ),
        ("/no/such/model", "is not a Hugging Face model folder (no config.json)"),
        ("zoo:nope", "unknown zoo model 'nope'"),
    ],
)
def test_a_model_reference_resolves_through_its_scheme_or_is_one_line(ref: str, fragment: str) -> None:
    from mergesearch.errors import UserError
    from mergesearch.model_refs import resolve_model

    with pytest.raises(UserError, match="^models.base: ") as err:
        resolve_model(ref, "models.base")
    assert fragment in str(err.value)


def cli_plugin(tmp_path: Path, entries: str) -> dict[str, str]:
    """An installed distribution as pip leaves one (a dist-info with entry_points.txt) and its module,
    on PYTHONPATH: what ``pip install`` of a package with ``mergesearch.cli`` entry points gives."""
    dist = tmp_path / "site" / "cliplug-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cliplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[mergesearch.cli]\n{entries}\n")
    (tmp_path / "site" / "cliplug.py").write_text(
        "import click\n\n"
        "@click.command(help='Say hello from a plug-in.')\n"
        "@click.argument('name')\n"
        "def hello(name):\n    click.echo(f'hello {name}')\n\n"
        "not_a_command = 42\n"
    )
    return {**os.environ, "PYTHONPATH": str(tmp_path / "site")}


def test_a_cli_plugin_adds_a_command_beside_the_products_own(tmp_path: Path) -> None:
    env = cli_plugin(tmp_path, "hello = cliplug:hello")
    assert run("hello", "world", env=env).stdout == "hello world\n"
    listed = run("--help", env=env).stdout
    assert "Say hello from a plug-in." in listed and "Search merge recipes" in listed


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("hello = cliplug:not_a_command", "is a int, not a click command"),
        ("hello = cliplug:nowhere", "cannot load"),
        ("hello = no_such_module:hello", "cannot load"),
        ("search = cliplug:hello", "'search' is a mergesearch command already"),
    ],
)
def test_a_cli_plugin_that_cannot_be_used_is_one_line(tmp_path: Path, entry: str, fragment: str) -> None:
    done = run("hello", "world", env=cli_plugin(tmp_path, entry))
    assert_one_line_error(done, "mergesearch.cli", entry.split(" = ")[1], fragment)
