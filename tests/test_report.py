"""The report a person reads: objectives and metrics in tables, the genome as a picture, the same blocks
as Markdown and as one self-contained HTML page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mergesearch.config import SearchConfig
from mergesearch.report import genome_matrix, write_report
from mergesearch.search.run_dir import RunDir, TrialResult

EXPERTS = ("aligned", "math", "bio")
LAYERS = 30


def per_layer_genes(shift: float) -> dict[str, float]:
    return {
        f"{param}.{expert}.g{layer}": round((shift + 0.1 * i + 0.01 * layer) % 1, 4)
        for param in ("w", "d")
        for i, expert in enumerate(EXPERTS)
        for layer in range(LAYERS)
    }


@pytest.fixture
def per_layer_run(tmp_path: Path) -> RunDir:
    """A finished per-layer TIES search of a 30-layer, 3-expert pool, promoted, as its run dir holds it."""
    run = RunDir(tmp_path / "run")
    config = SearchConfig.model_validate(
        {
            "name": "per_layer",
            "models": {
                "base": "/models/base",
                "experts": [{"name": e, "path": f"/models/{e}"} for e in EXPERTS],
            },
            "merge": {"method": "ties", "granularity": "layer"},
            "data": {"path": "/data/set"},
        }
    )
    run.write_config(config)
    trials = [
        TrialResult(
            genes=per_layer_genes(i / 10),
            fitness=0.5 + 0.04 * i,
            objectives={"safety": 0.6 + 0.03 * i, "task_accuracy": 0.5, "over_refusal": 0.1},
            trial_id=f"t{i:04d}",
            index=i,
        )
        for i in range(10)
    ]
    run.write_trials(trials, list(trials[0].genes))
    winner = trials[-1]
    run.write_leaderboard(
        [
            {
                "trial_id": winner.trial_id,
                "search_fitness": winner.fitness,
                "heldout_fitness": 0.8,
                "heldout_safety": 0.9,
                "heldout_task_accuracy": 0.7,
                "heldout_over_refusal": 0.05,
                "gsm8k/exact_match (strict-match)": 0.41,
                "gsm8k/exact_match (flexible-extract)": 0.44,
                "mmlu/acc": 0.6,
                "heldout_safety_by_category": {
                    "S1: violent crimes": {"rate": 1.0, "n": 4},
                    "S2: non-violent crimes": {"rate": 0.75, "n": 4},
                },
                "genes": winner.genes,
            }
        ]
    )
    for expert, safety in (("aligned", 1.0), ("math", 0.125), ("bio", 0.5)):
        result = {
            "expert": expert,
            "heldout": {
                "fitness": 0.4 + safety / 4,
                "objectives": {"safety": safety, "task_accuracy": 0.3, "over_refusal": 0.0},
                "counts": {},
                "safety_by_category": {"S1: violent crimes": {"rate": safety, "n": 4}},
            },
        }
        run.reference(expert).mkdir(parents=True)
        (run.reference(expert) / "result.json").write_text(json.dumps(result))
    return run


def test_the_genome_is_a_matrix_of_parameters_and_experts_by_layer_group() -> None:
    labels, groups, values = genome_matrix(per_layer_genes(0.0))
    assert labels == [f"{p} · {e}" for p in ("w", "d") for e in EXPERTS]
    assert groups == list(range(LAYERS))
    assert values[1][3] == per_layer_genes(0.0)["w.math.g3"]
    gated = genome_matrix({"w.a.g0": 0.5, "w.a.g1": 0.6, "gate.a.g0": 0.9})
    assert gated[0] == ["w · a", "gate · a"] and gated[2][1] == [0.9, None]  # a gate has one group


def test_a_per_layer_search_is_reported_with_its_genome_as_a_picture_not_a_column_per_gene(
    per_layer_run: RunDir,
) -> None:
    write_report(per_layer_run)
    markdown = per_layer_run.report_file.read_text()
    assert "w.aligned.g0" not in markdown and "d.bio.g29" not in markdown  # 180 genes, no gene columns
    widest = max(line.count("|") - 1 for line in markdown.splitlines() if line.startswith("|"))
    assert widest <= 12
    for picture in ("genome.png", "progress.png", "pareto.png"):
        assert f"]({picture})" in markdown and (per_layer_run.root / picture).stat().st_size > 1000
    # lm-eval metrics by their own names, gsm8k's exact_match included
    assert "gsm8k/exact_match (strict-match)" in markdown and "0.410" in markdown


def test_the_html_report_holds_the_same_tables_and_its_pictures_inline(per_layer_run: RunDir) -> None:
    write_report(per_layer_run)
    page = per_layer_run.report_html.read_text()
    assert page.startswith("<!doctype html>") and page.count('src="data:image/png;base64,') == 3
    assert 'src="genome.png"' not in page  # nothing to go missing when the file is sent on its own
    markdown = per_layer_run.report_file.read_text()
    for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.M):
        assert heading in page
    assert "<td>t0009</td>" in page and "gsm8k/exact_match (flexible-extract)" in page


def test_the_winner_stands_beside_each_expert_alone_and_per_harm_category(per_layer_run: RunDir) -> None:
    write_report(per_layer_run)
    lines = per_layer_run.report_file.read_text().splitlines()
    beside = lines[lines.index("## The winner beside each expert alone") + 2 :]
    assert beside[1:6] == [
        "|---|---|---|---|---|---|",
        "| winner `t0009` | held-out | 0.800 | 0.900 | 0.700 | 0.050 |",
        "| aligned alone | held-out | 0.650 | 1.000 | 0.300 | 0.000 |",
        "| bio alone | held-out | 0.525 | 0.500 | 0.300 | 0.000 |",
        "| math alone | held-out | 0.431 | 0.125 | 0.300 | 0.000 |",
    ]
    per_category = lines[lines.index("## Held-out safety per harm category") + 2 :]
    assert (
        per_category[0]
        == "| harm category | prompts | winner `t0009` | aligned alone | bio alone | math alone |"
    )
    assert per_category[2] == "| S1: violent crimes | 4 | 1.000 | 1.000 | 0.500 | 0.125 |"
    assert per_category[3] == "| S2: non-violent crimes | 4 | 0.750 | - | - | - |"
