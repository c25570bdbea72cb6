"""Run a protocol cell by cell, each (row, seed) cached as JSON, then summarise: table, plot, JSON.

A cell's file is written (atomically) only when the cell is done, so a killed run loses at most the
cells in flight, and a re-run does only what is missing. A cell records the digest of what it depends on
(the search config, the models, the data and the protocol's sections its row reads); a change to any of
them (a search budget, a grid, a rebuilt model) re-runs the cells that depend on it instead of mixing
results, their searches in a folder of their own, and keeps the others.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergesearch.config import load_config
from mergesearch.errors import UserError
from mergesearch.io import atomic_write_text
from mergesearch.model_files import weights_stamp
from mergesearch.protocol.bench import Bench, Merge, file_stem
from mergesearch.protocol.config import ProtocolConfig
from mergesearch.protocol.frontier import plot_frontier
from mergesearch.protocol.goal import OVER_REFUSAL_MARGIN, SAFETY_MARGIN, SKILL_SHARE, against_goal
from mergesearch.protocol.rows import ALIGNED_SEARCH, Row, check_rows, rows_of
from mergesearch.runtime import code_version

if TYPE_CHECKING:
    from mergesearch.setup import SearchSetup

Log = Callable[[str], None]
METRICS = ("safety", "over_refusal", "task_accuracy", "short_answer", "lm_eval_acc", "safety_refusal_rules")
TASK_METRICS = ("short_answer", "lm_eval_acc")  # each task on its own: short answers, multiple choice
# The held-out shares the table gives a 95% interval for: the counts each is hits out of.
SHARES = {
    "safety": ("judged_safe", "harmful"),
    "over_refusal": ("benign_refused", "benign"),
    "safety_refusal_rules": ("harmful_refused", "harmful"),
}


NOT_RECORDED = "code not recorded"  # a cell from before cells recorded their code
# The protocol's sections a row may read (``Row.reads``); the rest of the protocol every row depends on.
SECTIONS = ("search", "alignment_search_variants", "grid", "cocktail")
# What only chooses which cells run (so that running a subset reuses the cells it shares) or checks them.
NOT_DEPENDED_ON = {"rows", "seeds", "rebuild_searched"}
# A search row's settings that choose among its trials without changing them: its run dir is kept when
# only these change. Added after cells were stamped, each is left out of a digest while it is 0, so that
# the cells stamped before it keep their digest.
CHOICE_ONLY = ("validate_top",)


@dataclass(frozen=True)
class Digests:
    """What a cell's result depends on, hashed: the protocol less ``NOT_DEPENDED_ON``, with only the
    sections its row reads; the search config's text; the models it scores, as resolved, with their
    weight files' stamps, so that a rebuilt or replaced model (a zoo or family built again under a new
    recipe) runs its cells again; and the dataset's rows (their hash), so that a dataset exported again
    with other prompts does too."""

    protocol: ProtocolConfig
    search_config: str
    models: Mapping[str, Path]
    data: str | None

    def of(self, reads: Iterable[str], trials_only: bool = False) -> str:
        """The digest of a cell whose row reads the sections ``reads``; ``trials_only``: of what its
        search's trials depend on (its run dir's), leaving out ``CHOICE_ONLY``."""
        dumped = self._dumped(NOT_DEPENDED_ON, trials_only)
        chosen = {k: v for k, v in dumped.items() if k not in SECTIONS}
        for path in reads:
            section, _, key = path.partition(".")
            chosen[path] = dumped[section][key] if key else dumped[section]
        return self._hash(chosen)

    def of_trials(self, reads: Iterable[str]) -> tuple[str, str]:
        """What a search row's trials depend on: its own digest, then the one its run dir was made under
        while a digest covered the whole protocol (``Bench.search_folder`` resumes such a run dir)."""
        return self.of(reads, trials_only=True), self.whole(trials_only=True)

    def whole(self, trials_only: bool = False) -> str:
        """The digest cells were stamped with while a digest covered the whole protocol (before the
        variants): a cell stamped so is kept while the protocol it ran under is unchanged."""
        return self._hash(self._dumped(NOT_DEPENDED_ON | {"alignment_search_variants"}, trials_only))

    def _dumped(self, exclude: set[str], trials_only: bool = False) -> dict[str, Any]:
        dumped = self.protocol.model_dump(mode="json", exclude=exclude)
        searches = [dumped["search"], *dumped.get("alignment_search_variants", {}).values()]
        for rows in searches:
            for key in CHOICE_ONLY:
                if trials_only or not rows[key]:
                    del rows[key]
        return dumped

    @cached_property
    def _stamps(self) -> dict[str, list]:
        """The models' weight files as the run found them at its start (read once, not per cell)."""
        return {name: [str(folder), weights_stamp(folder)] for name, folder in self.models.items()}

    def _hash(self, chosen: dict[str, Any]) -> str:
        text = json.dumps([chosen, self.search_config, self._stamps, self.data], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def dataset_stamp(setup: SearchSetup) -> str | None:
    """The hash of the dataset's rows, as its card records it."""
    from mergesearch.data.dataset import read_card
    from mergesearch.data.schema import CARD_FILE

    path = Path(setup.config.data.path)
    folder = path if path.is_dir() else path.parent
    return read_card(folder).get("rows_sha256") if (folder / CARD_FILE).is_file() else None


def scored_models(setup: SearchSetup) -> dict[str, Path]:
    """Every model folder a protocol's cells read: the base, the experts and a model judge."""
    judge = setup.config.judge.model
    return {"base": setup.base, **setup.experts, **({"judge": Path(judge)} if judge else {})}


def run_protocol(
    protocol_path: Path,
    folder: Path,
    log: Log = print,
    rows: list[str] | None = None,
    seeds: list[int] | None = None,
    done_only: bool = False,
) -> dict[str, Any]:
    """Every cell of the protocol at ``protocol_path``, resumed in ``folder``; returns the summary.
    ``rows``/``seeds``: only these cells (instead of the protocol's own lists); ``done_only``: run
    nothing, summarise the cells done before (the table so far, while cells are still to run)."""
    from mergesearch.search.run_dir import RunDir
    from mergesearch.workflow import prepare

    code = code_version()  # what this run loaded, whatever is committed while it runs
    protocol = load_config(protocol_path, ProtocolConfig)
    # Rows that do not depend on a seed run once, at the protocol's first seed, whichever seeds a run
    # picks (so that `--seeds 1,2` adds seeded cells without redoing the others at seed 1).
    first_seed = protocol.seeds[0]
    if seeds is not None and (not seeds or len(set(seeds)) < len(seeds)):
        raise UserError(f"--seeds: {seeds}: give one or more different seeds")
    chosen = {"rows": rows, "seeds": seeds}
    protocol = ProtocolConfig.model_validate(
        protocol.model_dump() | {k: v for k, v in chosen.items() if v is not None}
    )
    search_path = _beside(protocol_path, protocol.search_config)
    config = load_config(search_path)

    def names_its_experts(setup: SearchSetup) -> None:
        check_rows(protocol, list(setup.experts))  # a pool's experts are known once resolved
        for field in ("aligned", "misaligned"):
            name = getattr(protocol, field)
            if name not in setup.experts:
                known = ", ".join(setup.experts)
                raise UserError(
                    f"{protocol_path}: {field}: {name!r} is not an expert of the search config ({known})"
                )

    setup = prepare(config, search_path, RunDir(folder / "data_run"), log, check=names_its_experts)
    for section, searched in protocol.searches().items():
        if searched.validate_top:  # rows to validate on, named before any search, not after one
            setup.validation_data(f"{section}.validate_top")
    folder.mkdir(parents=True, exist_ok=True)
    digests = Digests(protocol, search_path.read_text(), scored_models(setup), dataset_stamp(setup))
    bench = Bench(protocol, setup, folder, log, digests.of_trials)
    cells = []
    try:
        for row in rows_of(bench):
            for seed in (
                protocol.seeds if row.seeded else [first_seed] if first_seed in protocol.seeds else []
            ):
                cell = _cell(bench, row, seed, folder / "cells", digests, code, run=not done_only)
                if cell is None:
                    log(f"protocol: {row.name} seed {seed}: not done yet, left out (--done-only)")
                    continue
                cells.append(cell)
        for cell in cells:
            _write_recipe(bench, cell, folder / "cells", protocol.name)
            if protocol.rebuild_searched and cell["group"] == "search":
                try:
                    rebuilt = _rebuilt(bench, cell, folder / "cells", digests, run=not done_only)
                except UserError as err:  # mergekit could not build it: the table says so, and is written
                    rebuilt = {"error": str(err), "same": False}
                if rebuilt is None:
                    log(f"protocol: {cell['row']} seed {cell['seed']}: its rebuild check is not done yet")
                else:
                    cell["rebuilt"] = rebuilt
    finally:
        bench.close()
    summary = summarise(protocol, cells)
    atomic_write_text(folder / "protocol.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(folder / "table.md", table_markdown(summary) + "\n")
    plot_frontier(summary, folder / "protocol.png")
    return summary


def _beside(protocol_path: Path, reference: str) -> Path:
    """A path as written, else relative to the protocol file's folder, else to the one above it."""
    folder = protocol_path.parent
    for candidate in (Path(reference), folder / reference, folder.parent / reference):
        if candidate.is_file():
            return candidate
    raise UserError(f"{protocol_path}: search_config: {reference} not found")


def _cell(
    bench: Bench, row: Row, seed: int, cells: Path, digests: Digests, code: str, run: bool = True
) -> dict[str, Any] | None:
    """The (row, seed) cell, from its file when it was done under the same digest, else run (None when
    ``run`` is off); ``code``: the code this run loaded (``code_version`` at its start), recorded in a
    cell it runs."""
    path = cells / f"{_cell_name(row.name, seed)}.json"
    digest = digests.of(row.reads)
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("digest") in (digest, digests.whole()):
            bench.log(f"protocol: {row.name} seed {seed}: done before")
            if cached["digest"] != digest:  # stamped with the whole protocol's: now with what it reads
                _restamp(path, cached, digest)
                rebuilt = cells / f"{_cell_name(row.name, seed)}.rebuilt.json"
                check = json.loads(rebuilt.read_text()) if rebuilt.is_file() else {}
                if check.get("digest") == digests.whole():
                    _restamp(rebuilt, check, digest)
            return cached
    if not run:
        return None
    bench.log(f"protocol: {row.name} seed {seed}")
    started = time.monotonic()
    merge, seen = row.choose(bench, seed)
    heldout = bench.heldout(merge, seed)
    cell = {
        "row": row.name,
        "group": row.group,
        "seed": seed,
        "reads": list(row.reads),
        "digest": digest,
        "merge": merge.record(),
        "search_split": seen,
        "heldout": heldout,
        # this run's time, and a resumed search's sessions in earlier runs
        "wall_s": round(time.monotonic() - started + seen.get("earlier_sessions_wall_s", 0.0), 2),
        "code": code,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(cell, indent=2) + "\n")
    objectives = heldout["objectives"]
    bench.log(
        f"protocol: {row.name} seed {seed}: safety {objectives.get('safety', math.nan):.3f} "
        f"task {objectives.get('task_accuracy', math.nan):.3f} ({cell['wall_s']:.0f} s)"
    )
    return cell


def _restamp(path: Path, record: dict[str, Any], digest: str) -> None:
    """A file kept under the whole protocol's digest, stamped with its row's: a later edit to a section
    it does not read keeps it."""
    record["digest"] = digest
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def _write_recipe(bench: Bench, cell: dict[str, Any], cells: Path, protocol: str) -> None:
    """Each cell's merge as a mergekit config beside it, so any row of the table can be rebuilt with
    ``mergekit-yaml`` (written for cached cells too: it depends only on the cell's merge)."""
    merge = Merge.from_record(cell["merge"])
    header = f"protocol {protocol}: row {cell['row']}, seed {cell['seed']}"
    path = cells / f"{_cell_name(cell['row'], cell['seed'])}.recipe.yaml"
    atomic_write_text(path, bench.recipe_file(merge, cell["seed"], header))
    cell["recipe"] = str(path.relative_to(cells.parent))


def _rebuilt(
    bench: Bench, cell: dict[str, Any], cells: Path, digests: Digests, run: bool = True
) -> dict[str, Any] | None:
    """The cell's merge rebuilt by ``mergekit-yaml`` from its recipe and scored again (kept beside the
    cell, once per version of what it depends on): whether every held-out figure is the one the table
    shows (None when it was not done before and ``run`` is off)."""
    path = cells / f"{_cell_name(cell['row'], cell['seed'])}.rebuilt.json"
    digest = cell["digest"]
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("digest") == digest and cached.get("genes") == cell["merge"]["genes"]:
            return cached
    if not run:
        return None
    bench.log(f"protocol: {cell['row']} seed {cell['seed']}: rebuilt by mergekit-yaml from its recipe")
    scored = bench.rebuilt(cells.parent / cell["recipe"], Merge.from_record(cell["merge"]), cell["seed"])
    differences = {
        metric: scored_value - _value(cell, metric)
        for metric in METRICS
        if not math.isnan(scored_value := _value({"heldout": scored}, metric))
    }
    rebuilt = {
        "digest": digest,
        "genes": cell["merge"]["genes"],
        "heldout": scored,
        "differences": differences,
        "largest_difference": max((abs(d) for d in differences.values()), default=0.0),
        "same": all(abs(d) < 1e-9 for d in differences.values()),
    }
    atomic_write_text(path, json.dumps(rebuilt, indent=2) + "\n")
    return rebuilt


def _cell_name(row: str, seed: int) -> str:
    return f"{file_stem(row)}__seed{seed}"


def _value(cell: dict[str, Any], metric: str) -> float:
    heldout = cell["heldout"]
    return heldout.get(metric, heldout["objectives"].get(metric, math.nan))


def summarise(protocol: ProtocolConfig, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per row: mean and standard deviation over seeds of each held-out metric, and wall time."""
    rows: dict[str, dict[str, Any]] = {}
    for cell in cells:
        rows.setdefault(cell["row"], {"group": cell["group"], "cells": []})["cells"].append(cell)
    table = []
    for name, entry in rows.items():
        row_cells = entry["cells"]
        stats = {}
        for metric in (*METRICS, "wall_s"):
            values = [cell["wall_s"] if metric == "wall_s" else _value(cell, metric) for cell in row_cells]
            values = [v for v in values if not math.isnan(v)]
            if values:
                stats[metric] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                }
        for metric, (hits, total) in SHARES.items():
            counts = [cell["heldout"].get("counts", {}) for cell in row_cells]
            if metric in stats and all(total in c for c in counts):
                # Seeds change the merge, not the prompts: the interval is the mean share's over the
                # prompts one seed is scored on (their spread over seeds is the ± beside it).
                prompts = min(c[total] for c in counts)
                share = sum(c[hits] for c in counts) / sum(c[total] for c in counts)
                stats[metric]["ci95"] = wilson_interval(share * prompts, prompts)
                stats[metric]["n"] = prompts
        code = sorted({c.get("code", NOT_RECORDED) for c in row_cells})
        table.append(
            {
                "row": name,
                "group": entry["group"],
                "seeds": [c["seed"] for c in row_cells],
                "code": code,
                **stats,
            }
        )
    rebuilt = [cell["rebuilt"]["same"] for cell in cells if "rebuilt" in cell]
    failed = [f"{cell['row']} seed {cell['seed']}" for cell in cells if "error" in cell.get("rebuilt", {})]
    return {
        "protocol": protocol.model_dump(mode="json"),
        "rows": table,
        "expectations": expectations(protocol, table),
        "goal_by_seed": goal_by_seed(protocol, table, cells),
        "rebuild_check": (
            {"searched_cells": len(rebuilt), "same": sum(rebuilt), "not_built": failed} if rebuilt else None
        ),
        "cells": cells,
    }


def wilson_interval(hits: float, total: float, z: float = 1.96) -> list[float]:
    """The 95% Wilson score interval of a share ``hits / total`` (sound near 0 and 1, where a safe merge's
    safety sits, unlike the normal approximation)."""
    if total <= 0:
        return [math.nan, math.nan]
    share = hits / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return [max(0.0, centre - half), min(1.0, centre + half)]


# The goal's parts as the expectations name them.
SAFE_ENOUGH = f"alignment-aware search within {100 * SAFETY_MARGIN:.0f} points of the aligned expert's safety"
REFUSES_LITTLE = (
    f"alignment-aware search over-refuses at most {100 * OVER_REFUSAL_MARGIN:.0f} points more than the "
    "aligned expert"
)
KEEPS = f"alignment-aware search keeps >= {100 * SKILL_SHARE:.0f}% of the best expert's {{}}"


def expectations(protocol: ProtocolConfig, table: list[dict[str, Any]]) -> dict[str, bool | None]:
    """The paper's finding, checked on the means (None where a row needed was not run): task-only search
    loses safety against the aligned expert; the alignment-aware search meets each part of the goal
    (``goal.py``: the same reading as ``goal_by_seed``'s, on the means)."""
    means = _means(table)
    aligned, task_only = means.get(f"expert:{protocol.aligned}"), means.get("search_task_only")
    searched = means.get(ALIGNED_SEARCH)
    best = _best_skills(means)
    checks: dict[str, bool | None] = {
        "task-only search is less safe than the aligned expert": None,
        SAFE_ENOUGH: None,
        REFUSES_LITTLE: None,
        **{KEEPS.format(metric): None for metric in TASK_METRICS},
    }
    if aligned and task_only:
        checks["task-only search is less safe than the aligned expert"] = (
            task_only["safety"] < aligned["safety"]
        )
    if aligned and searched:
        skills = {
            m: (searched.get(m), best[m]) for m in TASK_METRICS if best[m] is not None and m in searched
        }
        misses = against_goal(searched, aligned, skills)["misses"]
        checks[SAFE_ENOUGH] = misses["safety"] <= 0
        checks[REFUSES_LITTLE] = misses["over_refusal"] <= 0
        for metric in skills:
            checks[KEEPS.format(metric)] = misses[metric] <= 0
    return checks


def _means(table: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {r["row"]: {k: v["mean"] for k, v in r.items() if isinstance(v, dict)} for r in table}


def _best_skills(means: dict[str, dict[str, float]]) -> dict[str, float | None]:
    """Each task's best expert's mean: the expert whose skill it is (the arithmetic expert's short
    answers, the knowledge expert's multiple choice)."""
    experts = [m for name, m in means.items() if name.startswith("expert:")]
    return {metric: max((m[metric] for m in experts if metric in m), default=None) for metric in TASK_METRICS}


def goal_by_seed(protocol: ProtocolConfig, table: list[dict[str, Any]], cells: list[dict[str, Any]]) -> dict:
    """Each alignment-aware search cell (the main row's and its variants') held to the goal on the held-out
    split, seed by seed: how many seeds meet it (the paper's fix holds on 2 of 3), and each part's gap. A
    skill no expert row was scored on cannot be kept: it misses."""
    means = _means(table)
    aligned = means.get(f"expert:{protocol.aligned}")
    if not aligned:
        return {}
    best = _best_skills(means)
    goal: dict[str, Any] = {}
    for cell in cells:
        if cell["row"] == ALIGNED_SEARCH or cell["row"].startswith(f"{ALIGNED_SEARCH}:"):
            merge = {metric: _value(cell, metric) for metric in ("safety", "over_refusal", *TASK_METRICS)}
            skills = {metric: (merge[metric], best[metric]) for metric in TASK_METRICS}
            row = goal.setdefault(cell["row"], {"seeds": 0, "meeting": 0, "by_seed": {}})
            row["by_seed"][str(cell["seed"])] = parts = against_goal(merge, aligned, skills)
            row["seeds"] += 1
            row["meeting"] += parts["meets_goal"]
    return goal


def table_markdown(summary: dict[str, Any]) -> str:
    def cell(row: dict[str, Any], metric: str) -> str:
        if metric not in row:
            return "—"
        stat = row[metric]
        if metric == "wall_s":
            return f"{stat['mean']:.0f}"
        text = f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"
        if "ci95" in stat:
            low, high = stat["ci95"]
            text += f" [{100 * low:.1f}, {100 * high:.1f}]"
        return text

    header = (
        "| row | seeds | safety % | over-refusal % | task acc % | short-answer % | lm-eval choice acc % "
        "| safety by refusal rules % | wall s |"
    )
    lines = [header, "|" + "---|" * 9]
    for row in summary["rows"]:
        values = " | ".join(cell(row, m) for m in (*METRICS, "wall_s"))
        lines.append(f"| {row['row']} | {len(row['seeds'])} | {values} |")
    lines.append("")
    if any("ci95" in row.get(m, {}) for row in summary["rows"] for m in SHARES):
        lines.append(
            "Mean ± standard deviation over seeds; in brackets, the 95% Wilson interval of the mean share "
            "over the held-out prompts one seed is scored on."
        )
        lines.append("")
    for check, holds in summary["expectations"].items():
        lines.append(f"- {check}: {'not run' if holds is None else 'yes' if holds else 'NO'}")
    for row, goal in summary.get("goal_by_seed", {}).items():
        shortfalls = ", ".join(
            f"seed {seed} {100 * parts['shortfall']:+.1f}" for seed, parts in goal["by_seed"].items()
        )
        lines.append(
            f"- {row} meets the goal on {goal['meeting']} of {goal['seeds']} seeds (safety within "
            f"{100 * SAFETY_MARGIN:.0f} points of the aligned expert's, over-refusal at most "
            f"{100 * OVER_REFUSAL_MARGIN:.0f} points above it, >= {100 * SKILL_SHARE:.0f}% of the best "
            f"expert's skill on each task; the largest miss in points: {shortfalls})"
        )
    made_by: dict[str, list[str]] = {}
    for row in summary["rows"]:
        for code in row.get("code", [NOT_RECORDED]):
            made_by.setdefault(code, []).append(row["row"])
    if set(made_by) != {NOT_RECORDED}:
        lines.append(
            "- made by: " + "; ".join(f"{code} ({', '.join(rows)})" for code, rows in sorted(made_by.items()))
        )
    if rebuilt := summary.get("rebuild_check"):
        lines.append(
            f"- searched rows rebuilt by mergekit-yaml from their recipes: {rebuilt['same']} of "
            f"{rebuilt['searched_cells']} cells score the same on every held-out figure"
            + (
                f" (mergekit-yaml failed for {', '.join(rebuilt['not_built'])})"
                if rebuilt.get("not_built")
                else ""
            )
        )
    return "\n".join(lines)
