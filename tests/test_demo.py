"""The README's main job, end to end (slow: about a minute with the zoo cached; `make test-slow`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mergesearch.search.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_demo_searches_promotes_and_beats_lm_cocktail(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mergesearch.cli", "demo", "--run-dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = RunDir(tmp_path / "demo")
    config = run.read_config()
    trials = run.trials()
    assert len(trials) == config.search.num_trials and all(t.ok for t in trials)
    board = run.leaderboard()
    assert board and len(board) == config.promotion.top_k
    best = max(t.fitness for t in trials)
    assert all(best > b["fitness"] for b in run.baselines() or [])
    recipe = yaml.safe_load((run.best / "recipe.yaml").read_text())
    assert (
        recipe["merge_method"] == config.merge.method and (run.best / "model" / "model.safetensors").is_file()
    )
    assert run.report_file.is_file() and run.pareto_file.is_file()
