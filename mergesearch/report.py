"""The summary of a run dir a person reads: ``report.md`` and ``report.html`` (the same blocks, the
pictures inline), rebuilt from the run dir's files alone.

A report is a list of blocks (headings, paragraphs, tables, pictures) rendered twice, so the two never
differ. The genome is a picture, not a column per gene: a per-layer search of a 30-layer, 3-expert pool
has ~180 genes, which no table a person reads can hold. Tables hold objectives and metrics, each named.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergesearch.config import gene_id
from mergesearch.io import atomic_write_bytes, atomic_write_text
from mergesearch.merge.genome import METHOD_GENE, chosen_method
from mergesearch.search.promote import pareto_front
from mergesearch.search.run_dir import RunDir, TrialResult

SHOWN = ("fitness", "safety", "task_accuracy", "over_refusal")
# w.math.g3 (per expert and group), t.g2 (per group: slerp's t), gate.math (per expert, no group)
GENE = re.compile(r"^(?P<param>[a-z_]+)(?:\.(?P<expert>.+?))??(?:\.g(?P<group>\d+))?$")


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Picture:
    path: Path
    caption: str


Block = Heading | Text | Table | Picture
GenomeMatrix = tuple[list[str], list[int], list[list[float | None]]]  # rows, layer groups, cells


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-" if value is None else str(value)


# ------------------------------------------------------------------------------------------ pictures
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    _pyplot().close(fig)
    tmp.replace(path)


def plot_pareto(ok: list[TrialResult], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    x, y = "task_accuracy", "safety"
    ax.scatter(
        [t.metric(x) for t in ok],
        [t.metric(y) for t in ok],
        c=[t.index for t in ok],
        cmap="viridis",
        s=22,
        label="trials (colour: order)",
    )
    line = sorted(pareto_front(ok, (y, x)), key=lambda t: t.metric(x))
    ax.plot(
        [t.metric(x) for t in line],
        [t.metric(y) for t in line],
        "r-o",
        ms=5,
        label="Pareto front of these two",
    )
    ax.set_xlabel("task accuracy")
    ax.set_ylabel("safety")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower left")
    fig.tight_layout()
    _save(fig, path)


def plot_progress(trials: list[TrialResult], path: Path) -> None:
    """Each scored trial's fitness in the order it finished, and the best so far."""
    plt = _pyplot()
    ordered = sorted((t for t in trials if t.ok), key=lambda t: t.index)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    full = [t for t in ordered if t.full]
    stopped = [t for t in ordered if not t.full]
    ax.scatter([t.index for t in full], [t.fitness for t in full], s=14, label="trial (scored in full)")
    if stopped:
        ax.scatter(
            [t.index for t in stopped],
            [t.fitness for t in stopped],
            s=10,
            marker="x",
            c="grey",
            label="stopped early (running fitness)",
        )
    best, line = float("-inf"), []
    for trial in full:
        best = max(best, trial.fitness)
        line.append((trial.index, best))
    if line:
        ax.step(*zip(*line), where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("fitness (search split)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def genome_matrix(genes: dict[str, float], names: Mapping[str, str] | None = None) -> GenomeMatrix:
    """Rows ``param · expert`` (weights, densities), ``param`` (a per-group setting such as slerp's ``t``)
    and ``gate · expert``; columns the layer groups; one cell per gene. A gene without a group (a gate)
    sits in group 0, and a row has None where it has no gene for a group. ``names``: each expert's own
    name by its gene id (``OpenBioLLM_8B`` -> ``OpenBioLLM-8B``), as the rows show it."""
    names = names or {}
    cells: dict[str, dict[int, float]] = {}  # in the genome's own order of rows
    for name, value in genes.items():
        match = GENE.match(name)
        if match is None or name == METHOD_GENE:  # a category, not a value per group: named apart
            continue
        expert = match["expert"] and names.get(match["expert"], match["expert"])
        row = f"{match['param']} · {expert}" if expert else match["param"]
        cells.setdefault(row, {})[int(match["group"] or 0)] = value
    groups = sorted({g for row in cells.values() for g in row})
    return list(cells), groups, [[row.get(g) for g in groups] for row in cells.values()]


def plot_genome(
    matrix: tuple[list[str], list[int], list[list[float | None]]], title: str, path: Path
) -> None:
    """The genome (its ``genome_matrix``) as a heat map: one row per parameter and expert, one column per
    layer group."""
    import numpy as np

    plt = _pyplot()
    labels, groups, values = matrix
    grid = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    width = min(16.0, 3.0 + 0.28 * len(groups))
    fig, ax = plt.subplots(figsize=(width, 1.2 + 0.32 * len(labels)))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    step = max(1, len(groups) // 30)
    ax.set_xticks(range(0, len(groups), step), [str(g) for g in groups[::step]], fontsize=7)
    ax.set_xlabel("layer group")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01)
    fig.tight_layout()
    _save(fig, path)


# ------------------------------------------------------------------------------------------ sections
def _search_summary(config: Any, trials: list[TrialResult], ok: list[TrialResult]) -> list[Block]:
    failed = [t for t in trials if not t.ok]
    stopped = len(trials) - len(ok) - len(failed)
    experts = ", ".join(e.name for e in config.models.experts) or "the pool's experts"
    weights = " + ".join(f"{w:g}·{k}" for k, w in config.fitness.weights.items())
    return [
        Heading(config.name, 1),
        Text(
            f"{' / '.join(config.merge.methods)} merge of {experts} (base {config.models.base}), "
            "searched with "
            f"`{config.search.name}`: {len(trials)} trials ({len(failed)} failed"
            + (f", {stopped} stopped early by multi-fidelity rounds" if stopped else "")
            + f"), fitness = {weights} (weighted mean; over_refusal enters as 1 − rate)."
        ),
    ]


def _leaderboard(board: list[dict[str, Any]]) -> list[Block]:
    metrics = sorted({k for b in board for k in b if "/" in k})
    heldout = ["heldout_fitness", *(f"heldout_{k}" for k in SHOWN[1:])]
    header = ["trial", "search fitness", *(k.replace("heldout_", "held-out ") for k in heldout), *metrics]
    rows = [
        [b["trial_id"], _fmt(b["search_fitness"]), *(_fmt(b.get(k)) for k in (*heldout, *metrics))]
        for b in board
    ]
    return [
        Heading("Leaderboard (held-out split, lm-eval)"),
        Table(header, rows),
        Text(f"Winner: `{board[0]['trial_id']}` → `best/model/`; `best/recipe.yaml` says how to rebuild it."),
    ]


def _beside_experts(
    board: list[dict[str, Any]], references: dict[str, dict[str, Any]], baselines: list[dict[str, Any]]
) -> list[Block]:
    """The winner, each expert alone and the baselines, objective by objective (the split each was
    scored on named: baselines are scored on the search split)."""
    winner = board[0]
    rows = [
        [f"winner `{winner['trial_id']}`", "held-out", *(_fmt(winner.get(f"heldout_{k}")) for k in SHOWN)]
    ]
    for expert, result in references.items():
        heldout = {"fitness": result["heldout"]["fitness"], **result["heldout"]["objectives"]}
        rows.append([f"{expert} alone", "held-out", *(_fmt(heldout.get(k)) for k in SHOWN)])
    for baseline in baselines:
        scored = {"fitness": baseline["fitness"], **baseline["objectives"]}
        rows.append([baseline["name"], "search", *(_fmt(scored.get(k)) for k in SHOWN)])
    return [Heading("The winner beside each expert alone"), Table(["model", "split", *SHOWN], rows)]


def _safety_by_category(board: list[dict[str, Any]], references: dict[str, dict[str, Any]]) -> list[Block]:
    """Held-out safety per harm category: which harms the winner lets through, and each expert."""
    columns = {f"winner `{board[0]['trial_id']}`": board[0].get("heldout_safety_by_category", {})}
    columns |= {f"{e} alone": r["heldout"].get("safety_by_category", {}) for e, r in references.items()}
    categories = sorted({c for cells in columns.values() for c in cells})
    if not categories:
        return []
    rows = []
    for category in categories:
        prompts = next(cells[category]["n"] for cells in columns.values() if category in cells)
        rates = [_fmt(cells[category]["rate"]) if category in cells else "-" for cells in columns.values()]
        rows.append([category, str(prompts), *rates])
    return [Heading("Held-out safety per harm category"), Table(["harm category", "prompts", *columns], rows)]


def _best_trials(ok: list[TrialResult]) -> list[Block]:
    best = sorted(ok, key=lambda t: -t.fitness)[:5]
    rows = [
        [t.trial_id, *(_fmt(t.metric(k) if k in t.objectives or k == "fitness" else None) for k in SHOWN)]
        for t in best
    ]
    return [Heading("Best trials (search split)"), Table(["trial", *SHOWN], rows)]


def _baselines(baselines: list[dict[str, Any]]) -> list[Block]:
    rows = [
        [
            b["name"],
            _fmt(b["fitness"]),
            *(_fmt(b["objectives"].get(k)) for k in SHOWN[1:]),
            ", ".join(f"{k}={v:.2f}" for k, v in b["weights"].items()),
        ]
        for b in baselines
    ]
    return [Heading("Baselines (search split)"), Table(["baseline", *SHOWN, "weights"], rows)]


def _efficiency(sessions: list[dict[str, Any]]) -> list[Block]:
    rows = [
        [
            str(i + 1),
            _fmt(s["wall_s"]),
            _fmt(s["evaluator_busy_s"]),
            _fmt(s["idle_share"]),
            _fmt(s["judge_cache"]["hit_rate"]) if "judge_cache" in s else "-",
            _fmt(s["judge_cache"].get("requests_per_call", "-")) if "judge_cache" in s else "-",
        ]
        for i, s in enumerate(sessions)
    ]
    header = [
        "session",
        "wall s",
        "evaluator busy s",
        "idle share",
        "judge cache hit rate",
        "requests per judge call",
    ]
    return [Heading("Evaluator time"), Table(header, rows)]


def report_blocks(run: RunDir) -> list[Block]:
    """The report's blocks, drawing its pictures into the run dir."""
    config = run.read_config()
    trials = run.trials()
    ok = [t for t in trials if t.full]  # multi-fidelity trials stopped early are counted, not ranked
    blocks = _search_summary(config, trials, ok)
    board = run.leaderboard()
    if board:
        references = run.references()
        blocks += _beside_experts(board, references, run.baselines() or [])
        blocks += _safety_by_category(board, references)
        blocks += _leaderboard(board)
    if ok:
        winner = board[0] if board else max(ok, key=lambda t: t.fitness).model_dump()
        plot_progress(trials, run.progress_file)
        plot_pareto(ok, run.pareto_file)
        if METHOD_GENE in winner["genes"]:
            chosen = chosen_method(config.merge.methods, winner["genes"])
            blocks += [Text(f"The {'winner' if board else 'best trial'} merges with `{chosen}`.")]
        matrix = genome_matrix(winner["genes"], {gene_id(e.name): e.name for e in config.models.experts})
        if matrix[0]:  # a genome of genes it can place (every searched one)
            plot_genome(matrix, f"genome of {winner['trial_id']}", run.genome_file)
            blocks += [
                Heading("Genome of the " + ("winner" if board else "best trial")),
                Picture(run.genome_file, f"genome of {winner['trial_id']}"),
            ]
        blocks += [
            *_best_trials(ok),
            Heading("Search progress"),
            Picture(run.progress_file, "fitness by trial, and the best so far"),
            Picture(run.pareto_file, "safety against task accuracy"),
        ]
    if baselines := run.baselines():
        blocks += _baselines(baselines)
    if sessions := run.efficiency():
        blocks += _efficiency(sessions)
    if failed := [t for t in trials if not t.ok]:
        blocks += [Heading("Failed trials"), Text("\n".join(f"- `{t.trial_id}`: {t.error}" for t in failed))]
    return blocks


# ------------------------------------------------------------------------------------------ renderers
def to_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Text):
            out.append(block.text)
        elif isinstance(block, Table):
            lines = ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
            out.append("\n".join([*lines, *("| " + " | ".join(r) + " |" for r in block.rows)]))
        else:
            out.append(f"![{block.caption}]({block.path.name})")
    return "\n\n".join(out) + "\n"


STYLE = "".join(
    (
        "body{font-family:system-ui,sans-serif;margin:1.5rem auto;max-width:1800px;padding:0 1rem}",
        "table{border-collapse:collapse;font-size:13px;margin:.5rem 0}",
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}",
        "td:first-child,th:first-child{text-align:left}th{background:#f2f2f2}",
        "img{max-width:100%;margin:.3rem 1rem .3rem 0}code{background:#f4f4f4;padding:0 3px}h1{margin-top:0}",
    )
)


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def to_html(blocks: list[Block]) -> str:
    """One self-contained page: the pictures embedded, so it opens anywhere."""
    title = next((b.text for b in blocks if isinstance(b, Heading)), "report")
    out = [f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><style>{STYLE}</style>"]
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            items = block.text.splitlines()
            if all(line.startswith("- ") for line in items):
                out.append("<ul>" + "".join(f"<li>{_inline(line[2:])}</li>" for line in items) + "</ul>")
            else:
                out.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in block.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in block.rows
            )
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        else:
            data = base64.b64encode(block.path.read_bytes()).decode()
            out.append(f'<img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">')
    return "\n".join(out) + "\n"


def write_report(run: RunDir) -> RunDir:
    blocks = report_blocks(run)
    atomic_write_text(run.report_file, to_markdown(blocks))
    atomic_write_bytes(run.report_html, to_html(blocks).encode())
    return run


def summary_table(run: RunDir) -> str:
    """The few lines the CLI prints at the end of a run."""
    trials = run.trials()
    ok = [t for t in trials if t.full]
    head = f"{len(trials)} trials, " + (
        f"best search fitness {max(t.fitness for t in ok):.4f}" if ok else "none succeeded"
    )
    board = run.leaderboard()
    if not board:
        return head
    lines = [f"{'trial':<14}{'held-out fitness':>18}{'safety':>9}{'task_acc':>10}{'over_refusal':>14}"]
    nan = float("nan")
    for b in board:
        lines.append(
            f"{b['trial_id']:<14}{b['heldout_fitness']:>18.4f}{b.get('heldout_safety', nan):>9.3f}"
            f"{b.get('heldout_task_accuracy', nan):>10.3f}{b.get('heldout_over_refusal', nan):>14.3f}"
        )
    return head + "\n" + "\n".join(lines)
