"""The human summary of a run dir: ``report.md`` and ``pareto.png``, rebuilt from the files alone."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mergesearch.io import atomic_write_text
from mergesearch.search.ledger import read_trials
from mergesearch.search.promote import LEADERBOARD, PROMOTION_DIR, pareto_front


def _ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        r for r in rows if r["status"] == "ok" and r["fitness"] is not None and not math.isnan(r["fitness"])
    ]


def plot_pareto(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = _ok(rows)
    front = pareto_front(ok)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(
        [r["task_accuracy"] for r in ok],
        [r["safety"] for r in ok],
        c=[r["index"] for r in ok],
        cmap="viridis",
        s=22,
        label="trials (colour: order)",
    )
    line = sorted(front, key=lambda r: r["task_accuracy"])
    ax.plot(
        [r["task_accuracy"] for r in line], [r["safety"] for r in line], "r-o", ms=5, label="Pareto front"
    )
    ax.set_xlabel("task accuracy")
    ax.set_ylabel("safety")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower left")
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(
        [
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows),
        ]
    )


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write_report(run_dir: Path) -> Path:
    from mergesearch.search.tuner import load_run_config

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    rows = read_trials(run_dir)
    ok = _ok(rows)
    failed = [r for r in rows if r not in ok]
    if ok:
        plot_pareto(rows, run_dir / "pareto.png")
    best = sorted(ok, key=lambda r: -r["fitness"])[:5]
    genes = [k for k in (rows[0] if rows else {}) if k.startswith(("w.", "d.", "t.", "gamma.", "eps."))]
    lines = [
        f"# {config.name}",
        "",
        f"{config.merge.method} merge of {', '.join(e.name for e in config.models.experts)} (base {config.models.base}), "
        f"searched with `{config.search.name}`: {len(rows)} trials ({len(failed)} failed), fitness = "
        + " + ".join(f"{w:g}·{k}" for k, w in config.fitness.weights.items())
        + " (weighted mean; over_refusal enters as 1 − rate).",
        "",
        "## Best trials (search split)",
        "",
        _table(
            ["trial", "fitness", "safety", "task_accuracy", "over_refusal", *genes],
            [
                [
                    r["trial_id"],
                    *(_fmt(r.get(k)) for k in ("fitness", "safety", "task_accuracy", "over_refusal")),
                    *(_fmt(r[g]) for g in genes),
                ]
                for r in best
            ],
        ),
    ]
    board_path = run_dir / PROMOTION_DIR / LEADERBOARD
    if board_path.is_file():
        board = json.loads(board_path.read_text())
        metrics = sorted({k for b in board for k in b if "/" in k})
        lines += [
            "",
            "## Leaderboard (held-out split, lm-eval)",
            "",
            _table(
                [
                    "trial",
                    "search fitness",
                    "held-out fitness",
                    "held-out safety",
                    "held-out task_accuracy",
                    "held-out over_refusal",
                    *metrics,
                ],
                [
                    [
                        b["trial_id"],
                        _fmt(b["search_fitness"]),
                        _fmt(b["heldout_fitness"]),
                        _fmt(b.get("heldout_safety")),
                        _fmt(b.get("heldout_task_accuracy")),
                        _fmt(b.get("heldout_over_refusal")),
                        *(_fmt(b.get(m)) for m in metrics),
                    ]
                    for b in board
                ],
            ),
            "",
            f"Winner: `{board[0]['trial_id']}` → `best/model/`, recipe `best/recipe.yaml` (`mergekit-yaml best/recipe.yaml OUT` rebuilds it).",
        ]
    baselines = run_dir / "baselines.json"
    if baselines.is_file():
        lines += [
            "",
            "## Baselines (search split)",
            "",
            _table(
                ["baseline", "fitness", "safety", "task_accuracy", "over_refusal", "weights"],
                [
                    [
                        b["name"],
                        *(
                            _fmt(b["objectives"].get(k) if k != "fitness" else b["fitness"])
                            for k in ("fitness", "safety", "task_accuracy", "over_refusal")
                        ),
                        ", ".join(f"{k}={v:.2f}" for k, v in b["weights"].items()),
                    ]
                    for b in json.loads(baselines.read_text())
                ],
            ),
        ]
    efficiency = run_dir / "efficiency.json"
    if efficiency.is_file():
        sessions = json.loads(efficiency.read_text())
        lines += [
            "",
            "## Evaluator time",
            "",
            _table(
                ["session", "wall s", "evaluator busy s", "idle share"],
                [
                    [str(i + 1), _fmt(s["wall_s"]), _fmt(s["evaluator_busy_s"]), _fmt(s["idle_share"])]
                    for i, s in enumerate(sessions)
                ],
            ),
        ]
    if failed:
        lines += ["", "## Failed trials", "", *(f"- `{r['trial_id']}`: {r['error']}" for r in failed)]
    if ok:
        lines += ["", "![safety vs task accuracy](pareto.png)"]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def summary_table(run_dir: Path) -> str:
    """The few lines the CLI prints at the end of a run."""
    board_path = Path(run_dir) / PROMOTION_DIR / LEADERBOARD
    rows = read_trials(run_dir)
    ok = _ok(rows)
    head = (
        f"{len(rows)} trials, best search fitness {max(r['fitness'] for r in ok):.4f}"
        if ok
        else f"{len(rows)} trials, none succeeded"
    )
    if not board_path.is_file():
        return head
    board = json.loads(board_path.read_text())
    table = [f"{'trial':<14}{'held-out fitness':>18}{'safety':>9}{'task_acc':>10}{'over_refusal':>14}"]
    for b in board:
        table.append(
            f"{b['trial_id']:<14}{b['heldout_fitness']:>18.4f}{b.get('heldout_safety', float('nan')):>9.3f}"
            f"{b.get('heldout_task_accuracy', float('nan')):>10.3f}{b.get('heldout_over_refusal', float('nan')):>14.3f}"
        )
    return head + "\n" + "\n".join(table)
