"""A search from its config to its report, as one sequence every caller runs: the CLI's ``search``, the
protocol runner (``reproduce``) and the benchmarks.

``prepare``: the models resolved and checked, the promotion tasks and a local machine's memory plan
checked (before minutes of data generation), the data made, its split read. ``search_to_report``: the
search, the LM-Cocktail baselines, promotion and the report, each optional. Heavy libraries are imported
inside the steps that use them, so a bad input is answered before Tune, Ray or lm-eval's runner load.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergesearch.config import SearchConfig

if TYPE_CHECKING:
    from mergesearch.actors import KeptActors
    from mergesearch.search.run_dir import RunDir
    from mergesearch.setup import SearchSetup

Log = Callable[[str], None]


def prepare(
    config: SearchConfig,
    config_path: Path,
    data_run: RunDir,
    log: Log = print,
    check_promotion: bool = False,
    check_local_plan: bool = False,
    check: Callable[[SearchSetup], None] | None = None,
) -> SearchSetup:
    """The search's setup with its data: a data spec is generated into ``data_run`` (once).
    ``check_promotion``: name a mistyped lm-eval task now, not after the search; ``check_local_plan``:
    refuse a plan this machine cannot hold (a local search only; a cluster's is checked at start);
    ``check``: the caller's own checks of the resolved setup, before any data is made."""
    from mergesearch.search.pipeline import prepare_data
    from mergesearch.setup import SearchSetup

    setup = SearchSetup.prepare(config, log=log)  # every model checked before the run dir is made
    if check is not None:
        check(setup)
    if check_promotion:
        from mergesearch.objectives.lm_eval_tasks import check_task_datasets, check_tasks

        check_tasks(config.promotion.tasks, f"{config_path}: promotion.tasks")
        check_task_datasets(config.promotion.tasks, f"{config_path}: promotion.tasks")
    if check_local_plan and not os.environ.get("RAY_ADDRESS"):
        from mergesearch.plan import check_plan, plan_actors, this_machine

        check_plan(plan_actors(setup), [this_machine()], "this machine", together=True)
    setup = setup.with_data(prepare_data(config, config_path, data_run, log=log))
    setup.eval_data()  # the split read and checked before Tune is imported
    if config.promotion.validate_top:  # and the rows to validate on, before the search, not after it
        setup.validation_data()
    return setup


@dataclass(frozen=True)
class Steps:
    """Which steps follow the search."""

    baselines: bool = True
    promote: bool = True
    report: bool = True
    top_k: int | None = None  # candidates promoted; None: the config's ``promotion.top_k``


SEARCH_ONLY = Steps(baselines=False, promote=False, report=False)  # a protocol cell, a timed search


def search_to_report(
    setup: SearchSetup,
    run: RunDir,
    log: Log = print,
    steps: Steps = Steps(),
    kept: KeptActors | None = None,
) -> list[dict[str, Any]]:
    """Search (or resume) in ``run``, then the steps asked for; returns the promotion's leaderboard
    (empty when nothing was promoted). ``kept``: actors shared with other searches (``KeptActors``)."""
    from mergesearch.search.tuner import run_search

    run_search(setup, run, log=log, kept=kept)
    if steps.baselines:
        from mergesearch.search.baselines import run_baselines

        run_baselines(setup, run, log=log)
    board: list[dict[str, Any]] = []
    top_k = setup.config.promotion.top_k if steps.top_k is None else steps.top_k
    if steps.promote and top_k:
        from mergesearch.search.promote import promote

        board = promote(run, top_k=top_k, log=log, setup=setup)
    if steps.report:
        from mergesearch.report import write_report

        write_report(run)
    return board
