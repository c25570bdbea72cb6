"""The report a person reads: objectives and metrics in tables, the genome as a picture, the same blocks
as Markdown and as one self-contained HTML page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import synthetic_runs
from synthetic_runs import EXPERTS, LAYERS, per_layer_genes

from mergesearch.report import genome_matrix, write_report
from mergesearch.search.run_dir import RunDir


@pytest.fixture
def per_layer_run(tmp_path: Path) -> RunDir:
    return synthetic_runs.per_layer_run(tmp_path / "run")


def test_the_genome_is_a_matrix_of_parameters_and_experts_by_layer_group() -> None:
    labels, groups, values = genome_matrix(per_layer_genes(0.0))
    assert labels == [f"{p} · {e}" for p in ("w", "d") for e in EXPERTS]
    assert groups == list(range(LAYERS))
    assert values[1][3] == per_layer_genes(0.0)["w.math.g3"]
    gated = genome_matrix({"w.a.g0": 0.5, "w.a.g1": 0.6, "gate.a": 0.9})  # a gate: per expert, no group
    assert gated[0] == ["w · a", "gate · a"] and gated[2][1] == [0.9, None]
    slerp = genome_matrix({"t.g0": 0.2, "t.g1": 0.7})  # slerp's t: per group, no expert
    assert slerp == (["t"], [0, 1], [[0.2, 0.7]])


def test_a_slerp_searchs_report_draws_its_per_group_genes(per_layer_run: RunDir) -> None:
    """Every searched gene has a place in the picture: a method with per-group genes only is drawn too."""
    board = per_layer_run.leaderboard()
    board[0]["genes"] = {f"t.g{g}": g / 30 for g in range(LAYERS)}
    per_layer_run.write_leaderboard(board)
    write_report(per_layer_run)
    assert "](genome.png)" in per_layer_run.report_file.read_text()


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
