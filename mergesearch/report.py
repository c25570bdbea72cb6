"""The human summary of a run dir: ``report.md`` and ``pareto.png``, rebuilt from the files alone."""

from __future__ import annotations

from typing import Any

from mergesearch.io import atomic_write_text
from mergesearch.search.promote import pareto_front
from mergesearch.search.run_dir import RunDir, TrialResult

SHOWN = ("fitness", "safety", "task_accuracy", "over_refusal")


def plot_pareto(ok: list[TrialResult], run: RunDir) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    ax.plot([t.metric(x) for t in line], [t.metric(y) for t in line], "r-o", ms=5, label="Pareto front")
    ax.set_xlabel("task accuracy")
    ax.set_ylabel("safety")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower left")
    fig.tight_layout()
    tmp = run.pareto_file.with_name(f".{run.pareto_file.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(run.pareto_file)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _best_trials(trials: list[TrialResult], ok: list[TrialResult]) -> list[str]:
    best = sorted(ok, key=lambda t: -t.fitness)[:5]
    genes = list(trials[0].genes) if trials else []
    rows = [
        [
            t.trial_id,
            *(_fmt(t.metric(k) if k in t.objectives or k == "fitness" else None) for k in SHOWN),
            *(_fmt(t.genes[g]) for g in genes),
        ]
        for t in best
    ]
    return ["## Best trials (search split)", "", _table(["trial", *SHOWN, *genes], rows)]


def _leaderboard(board: list[dict[str, Any]]) -> list[str]:
    metrics = sorted({k for b in board for k in b if "/" in k})
    heldout = ["heldout_fitness", *(f"heldout_{k}" for k in SHOWN[1:])]
    rows = [
        [b["trial_id"], _fmt(b["search_fitness"]), *(_fmt(b.get(k)) for k in (*heldout, *metrics))]
        for b in board
    ]
    header = [
        "trial",
        "search fitness",
        *(k.replace("_", " ", 1).replace("heldout", "held-out") for k in heldout),
    ]
    winner = f"Winner: `{board[0]['trial_id']}` → `best/model/`; `best/recipe.yaml` says how to rebuild it."
    return ["## Leaderboard (held-out split, lm-eval)", "", _table([*header, *metrics], rows), "", winner]


def _baselines(baselines: list[dict[str, Any]]) -> list[str]:
    rows = [
        [
            b["name"],
            _fmt(b["fitness"]),
            *(_fmt(b["objectives"].get(k)) for k in SHOWN[1:]),
            ", ".join(f"{k}={v:.2f}" for k, v in b["weights"].items()),
        ]
        for b in baselines
    ]
    return ["## Baselines (search split)", "", _table(["baseline", *SHOWN, "weights"], rows)]


def _efficiency(sessions: list[dict[str, Any]]) -> list[str]:
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
    return ["## Evaluator time", "", _table(header, rows)]


def write_report(run: RunDir) -> RunDir:
    config = run.read_config()
    trials = run.trials()
    ok = [t for t in trials if t.full]  # multi-fidelity trials stopped early are counted, not ranked
    failed = [t for t in trials if not t.ok]
    stopped = len(trials) - len(ok) - len(failed)
    if ok:
        plot_pareto(ok, run)
    experts = ", ".join(e.name for e in config.models.experts)
    weights = " + ".join(f"{w:g}·{k}" for k, w in config.fitness.weights.items())
    sections = [
        [
            f"# {config.name}",
            "",
            f"{config.merge.method} merge of {experts} (base {config.models.base}), searched with "
            f"`{config.search.name}`: {len(trials)} trials ({len(failed)} failed"
            + (f", {stopped} stopped early by multi-fidelity rounds" if stopped else "")
            + f"), fitness = {weights} "
            "(weighted mean; over_refusal enters as 1 − rate).",
        ],
        _best_trials(trials, ok),
    ]
    if board := run.leaderboard():
        sections.append(_leaderboard(board))
    if baselines := run.baselines():
        sections.append(_baselines(baselines))
    if sessions := run.efficiency():
        sections.append(_efficiency(sessions))
    if failed:
        sections.append(["## Failed trials", "", *(f"- `{t.trial_id}`: {t.error}" for t in failed)])
    if ok:
        sections.append(["![safety vs task accuracy](pareto.png)"])
    atomic_write_text(run.report_file, "\n\n".join("\n".join(s) for s in sections) + "\n")
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
