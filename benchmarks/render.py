"""Benchmark figures as the docs and the README show them, rendered from ``benchmarks/results/*.json``
(never copied by hand): each names the commit it ran at, and a figure whose code has changed since says
so (``stamps.py``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from stamps import RESULTS, Stamp, stamp, stamps


def minutes(seconds: float) -> str:
    """``2 min 58 s`` (rounded to the second; under a minute: ``10 s``)."""
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60} s" if whole >= 60 else f"{whole} s"


def _pytest_seconds(summary: str) -> float:
    return float(re.search(r" in ([0-9.]+)s", summary).group(1))


def _stale_note(item: Stamp) -> str:
    return f" (code measured has changed since: {len(item.changed)} files)" if item.changed else ""


def _ran(item: Stamp) -> str:
    """``ran at `abc123` `` (and whether its code changed since), or that the result records no commit."""
    if not item.commit:
        return "records no commit (older code)"
    afterwards = f" ({item.stamped_from})" if item.stamped_from else ""
    return f"ran at `{item.commit[:9]}`{afterwards}{_stale_note(item)}"


def fresh_clone_timings(path: Path = RESULTS / "fresh_clone.json", say_if_stale: bool = True) -> str:
    """The timings of the README's own commands from a fresh clone (one paragraph; the README states it
    without the staleness note, which any later commit would make true)."""
    data, item = json.loads(path.read_text()), stamp(path)
    steps = data["steps"]

    def step(name: str) -> dict:
        return steps[name]

    commit = step("test_empty_cache").get("commit", data["commit"])
    demo_commit = step("demo_empty_cache").get("commit", data["commit"])
    parts = [
        f"How long they take from a fresh clone on {data['machine']['cpus']} cores "
        f"(`benchmarks/results/fresh_clone.json`): the install {minutes(step('install')['wall_seconds'])}; "
        f"`make demo` {minutes(step('demo_empty_cache')['wall_seconds'])} with an empty model cache, "
        f"{minutes(step('demo_models_cached')['wall_seconds'])} with the models cached, "
        f"{minutes(step('demo_resumed')['wall_seconds'])} re-run (every cell resumes), at {demo_commit[:7]}; "
        f"`make test` {minutes(step('test_empty_cache')['wall_seconds'])} with an empty model cache and "
        f"{minutes(step('test_models_cached')['wall_seconds'])} with the models cached (pytest alone "
        f"{minutes(_pytest_seconds(step('test_empty_cache')['pytest']))} and "
        f"{minutes(_pytest_seconds(step('test_models_cached')['pytest']))}), install not included, "
        f"at {commit[:7]}{_stale_note(item) if say_if_stale else ''}."
    ]
    return "".join(parts)


def results_table() -> str:
    """Every result file with its commit, date and whether its code changed since (Markdown)."""
    rows = ["| result | benchmark | commit | date | status |", "|---|---|---|---|---|"]
    for item in stamps():
        commit = f"`{item.commit[:9]}`" if item.commit else "-"
        rows.append(f"| `{item.result}` | {item.benchmark} | {commit} | {item.date or '-'} | {item.status} |")
    return "\n".join(rows)


def protocol_table(name: str) -> str:
    """A protocol run's table (``benchmarks/results/protocol_<name>.json``), as ``mergesearch reproduce``
    prints it, under the commit it ran at (or the note that it records none)."""
    from mergesearch.protocol.runner import table_markdown

    path = RESULTS / f"protocol_{name}.json"
    item = stamp(path)
    ran = _ran(item)
    table = table_markdown(json.loads(path.read_text()))
    return f"`{path.relative_to(RESULTS.parents[1])}`, {ran}:\n\n{table}\n"


def rehearsal_cluster(path: Path = RESULTS / "rehearsal_cluster.json") -> str:
    """The cluster rehearsal's record (``benchmarks/rehearsal_cluster.py``): phases, placements against
    the plan, the drivers' memory, the trial budget and promotions, under the commit it ran at."""
    data, item = json.loads(path.read_text()), stamp(path)
    placed = data.get("placements", [])
    planned = sum(1 for p in placed if p["as_planned"])
    checked = sum(1 for p in placed if p["as_planned"] is not None)
    on_head = sum(1 for p in placed if p["on_head"])
    promotions = data.get("promotions", {})
    lines = [
        f"`benchmarks/results/rehearsal_cluster.json`, ran at `{item.commit[:9]}` on {data['machine']}, "
        f"{data['date']}{_stale_note(item)}: a head with no CPUs for work and {data['workers']} workers of "
        f"{data['gpus_per_worker']} (declared) GPU each.",
        "",
        "| what | measured |",
        "|---|---|",
        f"| actors placed as the plan asks (CPU and GPU per actor, on a worker) | {planned} of {checked}; "
        f"{on_head} on the head |",
        f"| the search's driver, peak RSS (both submissions) | {data['driver_peak_rss_mib']:.0f} MiB |",
        f"| drivers killed mid-search, trials done then | {data['driver_processes_killed']}, "
        f"{data['trials_before_kill']} |",
        f"| trials after the re-submitted job: run / budget / distinct genomes | {data['trials_run']} / "
        f"{data['trials_budget']} / {data['trials_unique']} |",
        f"| promotions per candidate (search, then the promote job) | "
        f"{', '.join(f'{k}: {v}' for k, v in sorted(promotions.items())) or 'none'} |",
        f"| the report rebuilt from the copy brought back | {'yes' if data['report_back'] else 'no'} |",
        f"| `mergesearch rehearse` findings on the real folders | {len(data['rehearse_findings'])} |",
        "",
        "Wall time per phase (s): "
        + ", ".join(f"{name.replace('_', ' ')} {seconds:g}" for name, seconds in data["phases_s"].items())
        + ".",
    ]
    lines += ["", "What `mergesearch rehearse` said the real run would hit:", ""]
    lines += [f"- {line.removeprefix('would fail: ')}" for line in data["rehearse_findings"]] or ["- nothing"]
    return "\n".join(lines)


def rehearse_shipped(path: Path = RESULTS / "rehearse_shipped.json") -> str:
    """``mergesearch rehearse`` on each shipped GPU config (``benchmarks/rehearse_shipped.py``): what each
    real run would hit, under the commit it ran at."""
    data, item = json.loads(path.read_text()), stamp(path)
    lines = [
        f"`benchmarks/results/rehearse_shipped.json`, ran at `{item.commit[:9]}` on {data['machine']}, "
        f"{data['date']}{_stale_note(item)}, against `cluster.yaml`:",
        "",
        "| config | data spec | exit | what the real run would hit |",
        "|---|---|---|---|",
    ]
    for row in data["configs"]:
        found = "<br>".join(row["findings"]) or "nothing"
        lines.append(f"| `{row['config']}` | `{row['data_spec']}` | {row['exit_status']} | {found} |")
    return "\n".join(lines)


def merge_speed(path: Path = RESULTS / "merge_speed.json") -> str:
    """Per-genome merge time of every method, resident against mergekit's ``run_merge`` (and its in-memory
    executor), with each method's worst relative difference from ``run_merge``'s tensors, per pool
    (``benchmarks/merge_speed.py``), under the commit it ran at."""
    data, item = json.loads(path.read_text()), stamp(path)
    ran = _ran(item)
    machine = data.get("machine", {})
    if isinstance(machine, dict):
        machine = f"{machine.get('cpus')} cores, torch {machine.get('torch')}"
    lines = [f"`benchmarks/results/merge_speed.json`, {ran}, on {machine}:"]
    for label, pool in data["pools"].items():
        sort = pool.get("magnitude_sort", {})
        lines += [
            "",
            f"**{label}** ({pool['model_mib']} MiB in float32, {pool['experts']} experts; pool loaded in "
            f"{pool['load_seconds']} s; its magnitudes sorted in {sort.get('engine_s')} s, `torch.sort` "
            f"{sort.get('torch_sort_s')} s):",
            "",
            "| method | experts | resident ms/genome | first merge ms | run_merge ms | in-memory ms | "
            "× run_merge | worst rel. diff vs run_merge |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method, m in pool["methods"].items():
            cells = [
                f"`{method}`",
                str(m.get("experts", pool["experts"])),
                f"{m['resident_ms']:g}",
                f"{m['resident_first_merge_ms']:g}",
                f"{m['run_merge_ms']:g}" if "run_merge_ms" in m else "no mergekit method",
                f"{m['in_memory_ms']:g}" if "in_memory_ms" in m else "-",
                f"{m['speedup_vs_run_merge']:g}" if "speedup_vs_run_merge" in m else "-",
                f"{m['worst_relative_difference_vs_run_merge']:.1e}"
                if "worst_relative_difference_vs_run_merge" in m
                else "-",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paper_levers(path: Path = RESULTS / "paper_levers.json") -> str:
    """The lever screen (``benchmarks/paper_levers.py``): per lever, its best trial on the search split read
    against the goal, and the front over every lever screened, under the commit it ran at."""
    if not path.is_file():
        return "*(the lever screen has not run yet: `benchmarks/paper_levers.py`)*\n"
    data, item = json.loads(path.read_text()), stamp(path)
    lines = [
        f"`benchmarks/results/paper_levers.json`, {_ran(item)} (each lever records its own); seed "
        f"{data['seed']}, up to {data['trials']} evaluations per lever, all figures on the search split. The "
        "gaps and kept shares are the best trial's by fitness; the shortfall is the most any part of the "
        "goal misses its bound by, for the trial closest to it, in points.",
        "",
        "| lever | trials | best fitness | its safety gap | its over-refusal excess | its short answers kept "
        "| its choice accuracy kept | trials meeting the goal | the closest trial's shortfall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, lever in data["levers"].items():
        goal, closest = lever["against_goal"], lever["closest_to_goal"]
        lines.append(
            f"| `{name}` | {lever['trials']} | {lever['best_fitness']:.3f} | {100 * goal['safety_gap']:+.1f} "
            f"| {100 * goal['over_refusal_excess']:+.1f} | {100 * goal['short_answer_kept']:.0f}% "
            f"| {100 * goal['choice_accuracy_kept']:.0f}% | {lever['trials_meeting_goal']} "
            f"| {100 * closest['shortfall']:+.1f} |"
        )
    front = sorted(data.get("front", []), key=lambda p: p["against_goal"]["shortfall"])
    if front:
        best = front[0]
        goal = best["against_goal"]
        lines += [
            "",
            f"The front over every lever holds {len(front)} trials; the closest to the goal "
            f"(`{best['lever']}`, trial {best['index']}) misses it by {100 * goal['shortfall']:+.1f} points: "
            f"safety {100 * goal['safety_gap']:+.1f} points from the aligned expert's, over-refusal "
            f"{100 * goal['over_refusal_excess']:+.1f}, {100 * goal['short_answer_kept']:.0f}% of the short "
            f"answers and {100 * goal['choice_accuracy_kept']:.0f}% of the choice accuracy kept.",
        ]
    return "\n".join(lines) + "\n"


def paper_front(path: Path = RESULTS / "paper_front.json") -> str:
    """The alignment-aware search's best trials on the whole search split, against the goal
    (``benchmarks/paper_front.py``): each seed's chosen trial and the one closest to the goal."""
    if not path.is_file():
        return "*(not run yet: `benchmarks/paper_front.py`)*\n"
    data, item = json.loads(path.read_text()), stamp(path)
    experts = data["experts_whole_split"]
    lines = [
        f"`benchmarks/results/paper_front.json`, {_ran(item)}: {len(data['trials'])} trials validated, "
        f"{data['meets_goal']} meeting the goal on the whole search split. The experts there: aligned "
        f"{100 * experts['aligned']['safety']:.1f}% safe, {100 * experts['aligned']['over_refusal']:.1f}% "
        f"over-refusal; arithmetic {100 * experts['arithmetic']['short_answer']:.1f}% short answers; "
        f"knowledge {100 * experts['knowledge']['choice_accuracy']:.1f}% choice accuracy.",
        "",
        "| row | seed | trial | search fitness | whole-split fitness | safety | over-refusal "
        "| short answers kept | choice kept | largest miss (points) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_cell: dict[tuple[str, int], list[dict]] = {}
    for trial in data["trials"]:
        by_cell.setdefault((trial["row"], trial["seed"]), []).append(trial)
    for (row, seed), trials in by_cell.items():
        chosen = next((t for t in trials if t["chosen"]), None)
        closest = min(trials, key=lambda t: t["goal"]["shortfall"])
        for label, t in (("chosen", chosen), ("closest", closest)):
            if t is None or (label == "closest" and t is chosen):
                continue
            o, goal = t["objectives"], t["goal"]
            lines.append(
                f"| {row} | {seed} | {t['trial_id']} ({label}) | {t['search_fitness']:.3f} "
                f"| {t['whole_split_fitness']:.3f} | {100 * o['safety']:.1f} | {100 * o['over_refusal']:.1f} "
                f"| {100 * goal['short_answer_kept']:.0f}% | {100 * goal['choice_accuracy_kept']:.0f}% "
                f"| {100 * goal['shortfall']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def paper_choice(
    before: Path = RESULTS / "protocol_smollm2_paper_by_search_fitness.json",
    after: Path = RESULTS / "protocol_smollm2_paper.json",
) -> str:
    """The alignment-aware search's merge seed by seed, chosen by search fitness (the earlier table) and
    on the whole search split (``validate_top``), on the held-out split and against the goal."""
    from mergesearch.protocol.rows import ALIGNED_SEARCH

    tables = {"search fitness": before, "whole search split": after}
    read = {rule: json.loads(path.read_text()) for rule, path in tables.items()}
    cells = {
        rule: {c["seed"]: c for c in data["cells"] if c["row"] == ALIGNED_SEARCH}
        for rule, data in read.items()
    }
    if not any("validated" in c["search_split"] for c in cells["whole search split"].values()):
        return "*(not run yet: the protocol's search cells chosen on the whole search split)*\n"
    lines = [
        ", ".join(f"`{p.relative_to(RESULTS.parents[1])}` {_ran(stamp(p))}" for p in tables.values())
        + ": the held-out split, in %; the largest miss of the goal in points (at most 0: met).",
        "",
        "| seed | chosen on | safety | over-refusal | short answers | lm-eval acc | largest miss |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed in sorted(cells["whole search split"]):
        for rule, data in read.items():
            cell = cells[rule].get(seed)
            if cell is None:
                continue
            o = cell["heldout"]["objectives"]
            goal = data["goal_by_seed"][ALIGNED_SEARCH]["by_seed"][str(seed)]
            lines.append(
                f"| {seed} | {rule} | {100 * o['safety']:.1f} | {100 * o['over_refusal']:.1f} "
                f"| {100 * cell['heldout']['short_answer']:.1f} | {100 * cell['heldout']['lm_eval_acc']:.1f} "
                f"| {100 * goal['shortfall']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def paper_validation(path: Path = RESULTS / "paper_validation.json") -> str:
    """Each searched merge and expert on the rows its search's fitness read, the rest of the search split
    and the held-out split (``benchmarks/paper_validation.py``), under the commit it ran at."""
    if not path.is_file():
        return "*(not run yet: `benchmarks/paper_validation.py`)*\n"
    data, item = json.loads(path.read_text()), stamp(path)
    sizes = data["sizes"]

    def read(merge: dict, metric: str) -> str:
        values = [merge[part].get(metric) for part in ("fitness_rows", "validation", "heldout")]
        return " / ".join("—" if v is None else f"{100 * v:.0f}" for v in values)

    lines = [
        f"`benchmarks/results/paper_validation.json`, {_ran(item)}. Each figure reads: the rows the fitness "
        f"read ({sizes['fitness_rows']['short_items']} sums, {sizes['fitness_rows']['choice_items']} choice "
        f"questions, {sizes['fitness_rows']['harmful']} harmful and {sizes['fitness_rows']['benign']} benign "
        f"prompts) / the rest of the search split ({sizes['validation']['short_items']}, "
        f"{sizes['validation']['choice_items']}, {sizes['validation']['harmful']} and "
        f"{sizes['validation']['benign']}) / the held-out split, in %.",
        "",
        "| merge | seed | safety | over-refusal | short answers | choice accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for merge in data["merges"]:
        cells = " | ".join(
            read(merge, m) for m in ("safety", "over_refusal", "short_answer", "choice_accuracy")
        )
        lines.append(f"| {merge['row']} | {merge['seed']} | {cells} |")
    return "\n".join(lines) + "\n"
