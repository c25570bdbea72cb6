"""The protocol's picture: held-out safety against each expert's skill, one panel per skill, with the goal
drawn in, so a reader sees at once which rows are as safe as the aligned expert *and* keep each skill.

Every row is a point with its spread over seeds (standard deviation both ways), shaped by its group
(expert, data-free, search, LM-Cocktail) and coloured by its over-refusal. The dashed line is the aligned
expert's safety, the dotted one 3 points below it; the vertical line is 90% of the best expert's skill.
The shaded corner is where the goal holds on that skill (over-refusal is read from the colour).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mergesearch.protocol.goal import SAFETY_MARGIN, SKILL_SHARE

# The skills a panel each, and their axis names; a protocol without them falls back to task accuracy.
SKILLS = {
    "short_answer": "held-out short answers (arithmetic skill)",
    "lm_eval_acc": "held-out lm-eval choice accuracy (knowledge skill)",
}
FALLBACK = {"task_accuracy": "held-out task accuracy"}
MARKERS = {"expert": "s", "data-free": "o", "search": "*", "cocktail": "^"}


def _mean(row: dict[str, Any], metric: str) -> float | None:
    stat = row.get(metric)
    return stat["mean"] if isinstance(stat, dict) else None


def plot_frontier(summary: dict[str, Any], path: Path) -> None:
    """Write the picture of ``summary`` (``runner.summarise``'s) to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rows"] if _mean(r, "safety") is not None]
    skills = {
        m: label for m, label in SKILLS.items() if any(_mean(r, m) is not None for r in rows)
    } or FALLBACK
    aligned = next((r for r in rows if r["row"] == f"expert:{summary['protocol']['aligned']}"), None)
    refusal = [_mean(r, "over_refusal") or 0.0 for r in rows]
    colours = plt.get_cmap("plasma_r")
    top = max([0.25, *refusal])

    figure, panels = plt.subplots(1, len(skills), figsize=(6.5 * len(skills), 5.8), squeeze=False)
    for axes, (metric, label) in zip(panels[0], skills.items()):
        experts = [_mean(r, metric) for r in rows if r["group"] == "expert"]
        best = max((v for v in experts if v is not None), default=None)
        if aligned is not None:
            safe = aligned["safety"]["mean"]
            axes.axhline(safe, color="grey", linestyle="--", linewidth=1, label="aligned expert's safety")
            axes.axhline(
                safe - SAFETY_MARGIN,
                color="grey",
                linestyle=":",
                linewidth=1,
                label=f"{100 * SAFETY_MARGIN:.0f} points below",
            )
        if best is not None:
            axes.axvline(
                SKILL_SHARE * best,
                color="green",
                linestyle=":",
                linewidth=1,
                label=f"{100 * SKILL_SHARE:.0f}% of the best expert",
            )
        if aligned is not None and best is not None:
            axes.fill_between(
                [SKILL_SHARE * best, 1.02],
                aligned["safety"]["mean"] - SAFETY_MARGIN,
                1.02,
                color="green",
                alpha=0.08,
            )
        placed: list[tuple[float, float, float]] = []  # this panel's labels: x, y and width, in data units
        for row, over in zip(rows, refusal):
            x = row.get(metric)
            if not isinstance(x, dict):
                continue
            y = row["safety"]
            axes.errorbar(
                x["mean"],
                y["mean"],
                xerr=x["std"],
                yerr=y["std"],
                fmt=MARKERS.get(row["group"], "o"),
                color=colours(over / top),
                markersize=11 if row["group"] == "search" else 7,
                markeredgecolor="black",
                markeredgewidth=0.4,
                ecolor="grey",
                capsize=2,
            )
            line = _label_line(placed, row["row"], x["mean"], y["mean"])
            axes.annotate(
                row["row"],
                (x["mean"], y["mean"]),
                fontsize=6.5,
                xytext=(4, 3 - LINE_POINTS * line),
                textcoords="offset points",
            )
        axes.set_xlabel(label)
        axes.set_ylabel("held-out safety (harmful prompts answered safely)")
        axes.set_xlim(-0.02, 1.02)
        axes.set_ylim(-0.02, 1.02)
        if axes.get_legend_handles_labels()[0]:  # no expert row scored: no line to name
            axes.legend(loc="lower left", fontsize=7)
    scale = plt.cm.ScalarMappable(cmap=colours, norm=plt.Normalize(0, top))
    figure.colorbar(scale, ax=panels[0].tolist(), label="held-out over-refusal (benign requests refused)")
    figure.suptitle(
        f"{summary['protocol']['name']}: safety against each skill "
        "(■ expert, ● data-free, ★ search, ▲ LM-Cocktail)"
    )
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(figure)
    tmp.replace(path)


LINE_POINTS = 8  # a label's line, in points
LINE = 0.026  # the same in safety units, on these axes (about 330 points for the axis's 1.04)
CHARACTER = 0.013  # a label character's width in skill units, at its font size


def _label_line(placed: list[tuple[float, float, float]], name: str, x: float, y: float) -> int:
    """How many lines below its point a label goes so as not to print over a label placed near it (rows
    of about the same safety and skill, such as a search and its variant); it is then placed there."""
    width = CHARACTER * len(name)

    def clashes(line: int) -> bool:
        return any(
            px < x + width and x < px + pwidth and abs(py - (y - line * LINE)) < LINE
            for px, py, pwidth in placed
        )

    line = 0
    while clashes(line):
        line += 1
    placed.append((x, y - line * LINE, width))
    return line
