"""The docs say what the code does: the configuration reference names every field of the schema, the
README's timings are the fresh-clone benchmark's, and a benchmark result says when its code has changed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from mergesearch.config import SearchConfig
from mergesearch.config_reference import render

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import render as figures  # noqa: E402  (benchmarks/render.py)
import stamps  # noqa: E402


def every_field(model: type[BaseModel], path: str = "") -> list[tuple[str, str, str]]:
    """(section path, field, description) for every field reachable from ``model``: written apart from
    the generator, so a section it forgets to walk is a field missing from its output."""
    found = []
    for name, field in model.model_fields.items():
        found.append((path, name, field.description or ""))
        pending = [(field.annotation, f"{path}.{name}" if path else name)]
        while pending:
            annotation, where = pending.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                found += every_field(annotation, where)
            elif get_origin(annotation) is list:
                pending.append((get_args(annotation)[0], where + "[]"))
            elif get_origin(annotation) is dict:
                pending.append((get_args(annotation)[1], where + ".<name>"))
            elif get_origin(annotation) in (Union, types.UnionType):
                pending += [(arg, where) for arg in get_args(annotation)]
    return found


def test_the_configuration_reference_describes_every_field_of_the_schema() -> None:
    page = render()
    sections = re.split(r"^## ", page, flags=re.M)[1:]
    by_heading = {s.splitlines()[0].strip("` "): s for s in sections}
    fields = every_field(SearchConfig)
    assert len(fields) > 60
    for path, name, description in fields:
        heading = path or "Top level"
        assert heading in by_heading, f"no section for {heading}"
        assert description, f"{heading}.{name} has no description (a docstring under the field)"
        assert f"| `{name}` |" in by_heading[heading], f"{heading}.{name} missing from the reference"
        assert " ".join(description.split()) in by_heading[heading], f"{heading}.{name}'s description"


def test_the_method_reference_has_a_row_per_registered_method_with_its_genes() -> None:
    from mergesearch import method_reference
    from mergesearch.merge.spec import get_method
    from mergesearch.registry import MERGE_METHODS

    rows = {
        line.split("|")[1].strip(" `"): line
        for line in method_reference.render().splitlines()[2:]
        if line.startswith("| `")
    }
    assert set(rows) == set(MERGE_METHODS)
    for name, row in rows.items():
        for param in get_method(name).scoped("expert", "group"):
            assert f"`{param.gene}` {param.name}" in row, (name, param.name)
        for param in get_method(name).scoped("shared"):
            assert f"`{param.name}`=" in row, (name, param.name)


def test_the_readmes_timings_are_the_fresh_clone_benchmarks() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert figures.fresh_clone_timings(say_if_stale=False) in readme, (
        "README.md's timings differ from benchmarks/results/fresh_clone.json; state them as:\n"
        + figures.fresh_clone_timings(say_if_stale=False)
    )


def test_a_benchmark_measures_its_script_and_the_modules_it_imports_transitively() -> None:
    code = {str(p.relative_to(ROOT)) for p in stamps.measured_code(ROOT / "benchmarks" / "merge_speed.py")}
    assert "benchmarks/merge_speed.py" in code
    assert "mergesearch/merge/resident.py" in code  # imported by the script
    assert "mergesearch/errors.py" in code  # imported by what it imports
    assert "mergesearch/search/tuner.py" not in code  # a merge benchmark does not measure the search


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, str]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "measured.py").write_text("x = 1\n")
    (tmp_path / "other.py").write_text("y = 1\n")
    git("add", ".")
    git("commit", "-qm", "first")
    commit = git("rev-parse", "HEAD")
    (tmp_path / "measured.py").write_text("x = 2\n")
    return tmp_path, commit


def test_a_result_is_stale_once_the_code_it_measured_changes(history) -> None:
    root, commit = history
    assert stamps.changed_since(commit, ["measured.py", "other.py"], root=root) == ["measured.py"]
    assert stamps.changed_since(commit, ["other.py"], root=root) == []
    unknown = "0" * 40  # a commit this history lacks (a shallow clone): nothing can be called current
    assert stamps.changed_since(unknown, ["other.py"], root=root) == ["other.py"]


def test_the_cli_prints_the_same_reference() -> None:
    from cli_helpers import run

    done = run("config", "reference")
    assert done.returncode == 0 and done.stdout.strip() == render().strip()


def test_the_paper_page_renders_each_protocols_table_from_its_json_and_copies_no_figure() -> None:
    page = (ROOT / "docs" / "paper.md").read_text()
    names = re.findall(r"\{\{ protocol_table:([a-z0-9_]+) \}\}", page)
    assert names == ["toy", "toy_ties", "smollm2", "smollm2_ta", "smollm2_paper"]
    for name in names:
        rendered = figures.protocol_table(name)
        data = json.loads((ROOT / "benchmarks" / "results" / f"protocol_{name}.json").read_text())
        stamped = "ran at `" in rendered or "records no commit" in rendered
        assert f"protocol_{name}.json" in rendered and stamped
        assert all(f"| {row['row']} |" in rendered for row in data["rows"])
    prose = re.sub(r"\{\{[^}]*\}\}", "", page)
    assert not re.search(r"\d+\.\d+ ?%|± ?\d", prose)  # no measured figure typed into the prose
