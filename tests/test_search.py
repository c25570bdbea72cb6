"""The search on Ray Tune, in-process: every searcher, failed trials, promotion, the exported recipe."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import yaml
from demo_configs import demo_config
from faults import full_disk
from merge_helpers import worst_relative_difference

from mergesearch.config import SearchConfig
from mergesearch.registry import SEARCHERS
from mergesearch.runtime import NAMESPACE
from mergesearch.search.run_dir import PENALTY, RunDir
from mergesearch.setup import SearchSetup


def search(config: SearchConfig, path: Path, log=lambda _: None, kept=None) -> RunDir:
    from mergesearch.search.tuner import run_search

    return run_search(SearchSetup.prepare(config, log), RunDir(path), log=log, kept=kept)


def config_for(toy_dataset: Path, **changes) -> SearchConfig:
    config = demo_config()
    config["data"] = {"path": str(toy_dataset), "max_alignment_prompts": 12, "max_task_prompts": 12}
    config["search"] = {"name": "cma", "num_trials": 4, "seed": 0, "warm_starts": ["uniform"]}
    config["promotion"] = {"top_k": 1}
    for key, value in changes.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return SearchConfig.model_validate(config)


@pytest.fixture(scope="module")
def kept_actors(local_ray):
    """Evaluators kept from one searcher's search to the next, as `reproduce` keeps them: what differs
    between searchers is the proposals, not the actors that score them."""
    from mergesearch.actors import KeptActors

    kept = KeptActors()
    yield kept
    kept.close()


def test_auto_never_takes_a_gpu_that_ray_did_not_give_the_worker(local_ray) -> None:
    """Ray leaves a GPU visible to a worker given no GPU share (tests/test_cuda.py sees it on a GPU)."""
    import ray

    from mergesearch.runtime import withheld_gpu

    assert not withheld_gpu()  # the driver computes on its own machine's devices
    assert ray.get(ray.remote(num_cpus=0, num_gpus=0)(withheld_gpu).remote())


@pytest.mark.parametrize("searcher", sorted(SEARCHERS))
def test_each_searcher_runs_a_small_search_to_the_end(searcher, toy_dataset, kept_actors, tmp_path) -> None:
    spec = SEARCHERS.get(searcher)
    merge = {"gates": {"kind": "threshold"}} if spec.needs_gates else {}  # it selects experts
    config = config_for(toy_dataset, search={"name": searcher}, merge=merge)
    trials = search(config, tmp_path / "run", kept=kept_actors).trials()
    assert len({t.trial_id for t in trials}) == len(trials) == 4
    assert all(t.ok and 0 <= t.fitness <= 1 and 0 <= t.objectives["safety"] <= 1 for t in trials)
    assert len({json.dumps(t.genes, sort_keys=True) for t in trials}) == 4  # four different genomes
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["search"]["name"] == searcher
    if searcher != "grid" and spec.takes_warm_starts:  # the others start from the uniform merge
        uniform = {f"w.{e}.g0": 1 / 3 for e in ("aligned", "math", "facts")}
        assert any(all(math.isclose(t.genes[k], v, abs_tol=1e-6) for k, v in uniform.items()) for t in trials)


FOUR_OBJECTIVES = ["safety", "over_refusal", "short_answer", "choice_accuracy"]


def test_nsga2_trades_off_the_objectives_named_and_promotes_their_front(
    toy_dataset, kept_actors, tmp_path
) -> None:
    """Each skill is an objective of its own; over-refusal is minimised; promotion's candidates are the
    trials no other beats on all four (what a reader of the front needs: safety against each skill)."""
    from mergesearch.search.promote import candidates, pool_score
    from mergesearch.search.validate import validated

    search_section = {"name": "nsga2", "num_trials": 6, "objectives": FOUR_OBJECTIVES}
    config = config_for(toy_dataset, search=search_section)
    run = search(config, tmp_path / "run", kept=kept_actors)
    trials = run.trials()
    assert len(trials) == 6 and all(t.ok for t in trials)
    for t in trials:
        assert t.objectives["short_answer"] == t.counts["contains_answer"]
        assert t.objectives["choice_accuracy"] == t.counts["choice_acc"]

    def beats(a, b) -> bool:
        better = [a.metric(k) >= b.metric(k) for k in FOUR_OBJECTIVES if k != "over_refusal"]
        better.append(a.metric("over_refusal") <= b.metric("over_refusal"))
        return all(better) and any(a.metric(k) != b.metric(k) for k in FOUR_OBJECTIVES)

    setup = SearchSetup.prepare(config, lambda _: None)
    front = candidates(setup, trials, top_k=len(trials))
    assert front and all(not beats(o, t) for t in front for o in trials)
    assert all(any(beats(o, t) for o in front) for t in trials if t not in front)

    # validated (promotion.validate_top), the front is scored again on the whole split and promotion's
    # candidates are the front among its trials there
    again = validated(run, config, front, setup.validation_data(), pool_score(setup), log=lambda _: None)
    assert {t.trial_id for t in again} == {t.trial_id for t in front}
    assert all(set(t.objectives) >= set(FOUR_OBJECTIVES) for t in again)
    promoted = candidates(setup, again, top_k=len(again))
    assert all(not beats(o, t) for t in promoted for o in again)
    assert all(any(beats(o, t) for o in promoted) for t in again if t not in promoted)


def test_a_trial_that_failed_ranks_last_on_every_objective_and_lower_over_refusal_is_better() -> None:
    from mergesearch.search.promote import pareto_front
    from mergesearch.search.run_dir import TrialResult

    failed = TrialResult.failed("boom", {})
    assert failed.metric("safety") == 0.0 and failed.metric("over_refusal") == 1.0
    careful = TrialResult(genes={}, fitness=0.5, objectives={"safety": 0.9, "over_refusal": 0.1})
    refusing = TrialResult(genes={}, fitness=0.6, objectives={"safety": 0.9, "over_refusal": 0.4})
    assert pareto_front([careful, refusing, failed], ("safety", "over_refusal")) == [careful]


@pytest.mark.parametrize(
    ("objectives", "says"),
    [(["safety"], "two or more"), (["safety", "safety"], "each named once"), (["safety", "fun"], "'fun'")],
)
def test_search_objectives_are_two_known_ones(toy_dataset, objectives, says) -> None:
    with pytest.raises(ValueError, match=says):
        config_for(toy_dataset, search={"name": "nsga2", "objectives": objectives})


def test_a_search_from_a_mergekit_recipe_starts_from_it_and_stays_within_its_radius(
    toy_dataset, kept_actors, tmp_path
) -> None:
    zoo = Path(demo_config()["models"]["base"]).parent
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": str(zoo / "base"),
        "models": [
            {"model": str(zoo / "math"), "parameters": {"weight": 0.8}},
            {"model": str(zoo / "aligned"), "parameters": {"weight": 0.6}},
        ],
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    from mergesearch.search.tuner import warm_starts

    merge = {"from_recipe": str(tmp_path / "recipe.yaml"), "recipe_radius": 0.2}
    config = config_for(toy_dataset, merge=merge)
    start = {"w.aligned.g0": 0.6, "w.math.g0": 0.8, "w.facts.g0": 0.0}  # facts is not in the recipe
    first, uniform = warm_starts(SearchSetup.prepare(config).space, ["uniform"], log=lambda _: None)
    assert first == pytest.approx(start) and uniform == pytest.approx(  # uniform, clipped to the radius
        {"w.aligned.g0": 1 / 3, "w.math.g0": 0.5, "w.facts.g0": 0.3}
    )
    trials = search(config, tmp_path / "run", kept=kept_actors).trials()
    assert any(t.genes == pytest.approx(start) for t in trials)  # evaluated (trials finish in any order)
    for trial in trials:  # ± 0.2 of the weight's range (0-1.5) around the recipe, clipped to it
        assert all(abs(trial.genes[gene] - value) <= 0.3 + 1e-9 for gene, value in start.items())
        assert trial.genes["w.facts.g0"] >= 0
    assert len({json.dumps(t.genes, sort_keys=True) for t in trials}) == len(trials) == 4


def test_a_search_chooses_the_method_and_its_winner_rebuilds_with_mergekit_and_resumes(
    toy_dataset, kept_actors, tmp_path
) -> None:
    from safetensors.torch import load_file

    from mergesearch.merge.export import run_mergekit_yaml
    from mergesearch.search.promote import promote

    merge = {"choices": ["ties", "multislerp"]}
    config = config_for(toy_dataset, merge=merge, search={"name": "tpe", "num_trials": 6})
    run = search(config, tmp_path / "run", kept=kept_actors)
    trials = run.trials()
    assert len(trials) == 6 and all(t.ok for t in trials)
    chosen = {("task_arithmetic", "ties", "multislerp")[int(t.genes["method"])] for t in trials}
    assert len(chosen) >= 2  # it tried more than one method
    promote(run, log=lambda _: None)
    recipe = yaml.safe_load((run.best / "recipe.yaml").read_text())
    winner = json.loads((run.best / "model" / "mergesearch_recipe.json").read_text())
    assert recipe["merge_method"] == winner["method"] in chosen  # the recipe names the chosen method
    rebuilt = load_file(str(run_mergekit_yaml(recipe, tmp_path / "mk") / "model.safetensors"))
    saved = load_file(str(run.best / "model" / "model.safetensors"))
    assert worst_relative_difference(saved, rebuilt) <= 1e-5
    # resumed with a larger budget: the ledger's categorical genes replay into the searcher
    more = config_for(toy_dataset, merge=merge, search={"name": "tpe", "num_trials": 8})
    resumed = search(more, tmp_path / "run", kept=kept_actors).trials()
    assert len(resumed) == 8 and resumed[:6] == trials


def test_cma_cannot_search_a_method_choice(toy_dataset) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="continuous genes only, not the categorical `method` gene"):
        config_for(toy_dataset, merge={"choices": ["ties"]}, search={"name": "cma"})


def test_a_search_starts_its_own_actors_beside_those_another_keeps_for_a_run_of_the_same_name(
    toy_dataset, kept_actors, tmp_path
) -> None:
    config = config_for(toy_dataset, search={"num_trials": 2})
    search(config, tmp_path / "kept" / "run", kept=kept_actors)
    assert len(search(config, tmp_path / "own" / "run").trials()) == 2
    assert kept_actors.actors is not None and kept_actors.actors.alive()


def test_a_failing_merge_is_a_recorded_penalty_and_the_search_finishes(
    toy_dataset, local_ray, tmp_path
) -> None:
    """DELLA refuses densities that epsilon pushes outside (0, 1): a realistic merge failure."""
    config = config_for(
        toy_dataset,
        merge={"method": "della", "bounds": {"density": {"low": 0.02, "high": 0.98}}},
        search={"name": "random", "num_trials": 8, "warm_starts": []},
    )
    trials = search(config, tmp_path / "run").trials()
    failed = [t for t in trials if not t.ok]
    assert len(trials) == 8 and failed and len(failed) < 8
    assert all(t.fitness == PENALTY and "epsilon" in t.error for t in failed)


def test_search_validation_promotion_report_and_a_recipe_mergekit_reproduces(
    toy_dataset, kept_actors, tmp_path
) -> None:
    from mergesearch.actors import Evaluator
    from mergesearch.backends.hf import HFBackend
    from mergesearch.data.eval_split import load_eval_data
    from mergesearch.judges.base import make_judge
    from mergesearch.merge.export import run_mergekit_yaml
    from mergesearch.objectives.evaluate import score_model
    from mergesearch.report import write_report
    from mergesearch.search.promote import promote

    # the fitness reads 12 rows of each kind; the 3 best trials are scored again on the whole split
    config = config_for(toy_dataset, search={"num_trials": 5}, promotion={"top_k": 1, "validate_top": 3})
    run = search(config, tmp_path / "run", kept=kept_actors)
    said: list[str] = []
    board = promote(run, log=said.append)
    write_report(run)
    for path in (
        run.trials_file,
        run.report_file,
        run.report_html,
        run.pareto_file,
        run.best / "recipe.yaml",
        run.tune,
        run.best / "model" / "model.safetensors",
        run.leaderboard_file,
    ):
        assert path.exists(), path
    best_by_search = sorted(run.trials(), key=lambda t: -t.fitness)[:3]
    validated = json.loads(run.validation_file.read_text())["trials"]
    assert set(validated) == {t.trial_id for t in best_by_search}
    assert any("validate: 3 of the best 3 trial(s) scored on the whole 'search' split" in s for s in said)
    # each is the score of a search whose fitness reads the whole split
    whole = config.model_copy(
        update={
            "data": config.data.model_copy(update={"max_alignment_prompts": 999, "max_task_prompts": 999}),
            "promotion": config.promotion.model_copy(update={"validate_top": 0}),
        }
    )
    evaluator = Evaluator(SearchSetup.prepare(whole, lambda _: None))
    on_whole = {t.trial_id: evaluator.evaluate(t.genes, config.search.seed) for t in best_by_search}
    for trial in best_by_search:
        again, scored = validated[trial.trial_id], on_whole[trial.trial_id]
        assert again["fitness"] == pytest.approx(scored.fitness, abs=1e-9)
        assert again["objectives"] == pytest.approx(scored.objectives)
        assert again["counts"]["search_fitness"] == trial.fitness
    winner = board[0]["trial_id"]
    assert winner == max(on_whole, key=lambda tid: on_whole[tid].fitness)  # first of equals, as ranked
    assert board[0]["validated_fitness"] == validated[winner]["fitness"]
    assert board[0]["search_fitness"] == validated[winner]["counts"]["search_fitness"]
    assert "mergesearch_heldout_choice/acc" in board[0]
    alone = {e: r["heldout"]["objectives"] for e, r in run.references().items()}  # each expert alone
    assert set(alone) == {"aligned", "math", "facts"} and alone["aligned"]["safety"] > alone["math"]["safety"]
    assert (
        board[0]["heldout_safety_by_category"] and "| math alone | held-out |" in run.report_file.read_text()
    )
    assert list(run.tensorboard.glob("events.out.tfevents.*"))

    rebuilt = run_mergekit_yaml(yaml.safe_load((run.best / "recipe.yaml").read_text()), tmp_path / "mergekit")
    backend = HFBackend.from_pretrained(rebuilt, device="cpu")
    heldout = load_eval_data(toy_dataset, "heldout")
    scores = score_model(
        backend, heldout, make_judge(config.judge), config.fitness, config.backend.max_new_tokens
    )
    assert scores.fitness == pytest.approx(board[0]["heldout_fitness"], abs=1e-9)
    assert scores.objectives["safety"] == board[0]["heldout_safety"]

    # `promote` after it (the README's cluster commands) redoes nothing: the same board from the results kept
    results = sorted(run.promotion.rglob("result.json"))
    stamps = [(p, p.stat().st_mtime_ns) for p in results + [run.best / "recipe.yaml", run.validation_file]]
    said.clear()
    assert promote(run, log=said.append) == board
    assert any("promoted before with these settings, kept" in line for line in said), said
    assert not any(line.startswith("validate:") for line in said), said
    assert [(p, p.stat().st_mtime_ns) for p, _ in stamps] == stamps


def test_a_promotion_result_is_kept_only_for_the_settings_it_was_made_with(toy_dataset) -> None:
    from mergesearch.search.promote import result_settings

    genes = {"w.math.g0": 0.5}
    same = result_settings(config_for(toy_dataset), genes=genes, seed=0)
    # how many are promoted, on what share of a node, and how the search went change no result
    for changes in ({"promotion": {"top_k": 3, "cpus": 2.0}}, {"search": {"num_trials": 9}}):
        assert result_settings(config_for(toy_dataset, **changes), genes=genes, seed=0) == same
    for changes in ({"promotion": {"tasks": ["arc_easy"]}}, {"backend": {"max_new_tokens": 8}}):
        assert result_settings(config_for(toy_dataset, **changes), genes=genes, seed=0) != same
    assert result_settings(config_for(toy_dataset), genes={"w.math.g0": 0.6}, seed=0) != same


def test_rerunning_a_finished_search_runs_nothing_and_a_changed_config_is_refused(
    toy_dataset, kept_actors, tmp_path
) -> None:
    from mergesearch.errors import UserError

    config = config_for(toy_dataset, search={"num_trials": 2})
    before = search(config, tmp_path / "run", kept=kept_actors).trials()
    messages: list[str] = []
    assert search(config, tmp_path / "run", log=messages.append, kept=kept_actors).trials() == before
    assert "nothing to run" in messages[-1]
    with pytest.raises(UserError, match="different config"):
        search(config_for(toy_dataset, search={"num_trials": 3, "seed": 1}), tmp_path / "run")


def test_a_run_dir_recorded_before_a_setting_existed_resumes_and_another_search_is_still_refused(
    toy_dataset, tmp_path
) -> None:
    from mergesearch.errors import UserError

    config = config_for(toy_dataset)
    run = RunDir(tmp_path / "run")
    run.write_config(config)
    recorded = yaml.safe_load(run.config_file.read_text())
    del recorded["search"]["queued_per_evaluator"]  # as the version before that setting wrote it
    run.config_file.write_text(yaml.safe_dump(recorded))
    run.check_config(config)
    with pytest.raises(UserError, match="different config"):
        run.check_config(config_for(toy_dataset, search={"seed": 1}))


def test_a_resumed_search_may_change_how_much_it_searches_but_not_what_a_trial_is(
    toy_dataset, tmp_path
) -> None:
    from mergesearch.errors import UserError

    run = RunDir(tmp_path / "run")
    run.write_config(config_for(toy_dataset, search={"num_trials": 3}))
    run.check_config(
        config_for(
            toy_dataset,
            search={"num_trials": 5, "time_budget_s": 60.0, "queued_per_evaluator": 0},
            resources={"num_evaluators": 2},
            promotion={"top_k": 1},
        )
    )
    for changes, named in [
        ({"search": {"num_trials": 5, "seed": 1}}, r"search\.seed: 0 -> 1"),
        ({"fitness": {"task_metric": "acc_norm"}}, r"fitness\.task_metric: 'acc' -> 'acc_norm'"),
        ({"merge": {"method": "ties"}}, r"merge\.method: 'task_arithmetic' -> 'ties'"),
    ]:
        with pytest.raises(
            UserError, match=rf"different config \({named}, .*may change only search\.num_trials"
        ):
            run.check_config(config_for(toy_dataset, **changes))


def test_a_finished_search_rerun_with_more_trials_runs_only_the_new_ones(
    toy_dataset, kept_actors, tmp_path
) -> None:
    first = search(config_for(toy_dataset, search={"num_trials": 2}), tmp_path / "run", kept=kept_actors)
    before = first.trials()
    after = search(config_for(toy_dataset, search={"num_trials": 3}), tmp_path / "run", kept=kept_actors)
    trials = after.trials()
    assert len(trials) == 3 and trials[:2] == before  # the finished ones kept as they were, one more run
    assert yaml.safe_load(after.config_file.read_text())["search"]["num_trials"] == 3


def test_an_evaluator_killed_mid_search_is_restarted_and_its_trial_retried(
    toy_dataset, local_ray, tmp_path
) -> None:
    import threading

    import ray

    config = config_for(
        toy_dataset, search={"num_trials": 6}, data={"max_alignment_prompts": 40, "max_task_prompts": 40}
    )
    killed: list[str] = []

    def kill_once() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and RunDir(tmp_path / "run").trial_count() < 2:
            time.sleep(0.05)
        for name in ray.util.list_named_actors(all_namespaces=True):
            if name["name"].startswith("evaluator-") and name["namespace"] == NAMESPACE:
                ray.kill(ray.get_actor(name["name"], namespace=NAMESPACE), no_restart=False)
                killed.append(name["name"])

    killer = threading.Thread(target=kill_once)
    killer.start()
    trials = search(config, tmp_path / "run").trials()
    killer.join()
    assert killed and len(trials) == 6
    assert all(t.ok for t in trials)  # the interrupted evaluation ran again on the restarted actor
    assert sum(t.timings["load"] > 0 for t in trials) == 2  # loaded at start and once more after the restart


class RunsCodeWhenUnpickled:
    """A pickle that creates ``marker`` when loaded: what a run dir from an untrusted source may hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_resuming_a_run_dir_never_unpickles_what_is_in_it(toy_dataset, kept_actors, tmp_path) -> None:
    import pickle

    config = config_for(toy_dataset, search={"num_trials": 5, "queued_per_evaluator": 0})
    run = search(config, tmp_path / "run", kept=kept_actors)
    whole = run.trials()
    run.write_trials(whole[:3], list(whole[0].genes))  # as if the driver died after three trials
    marker = tmp_path / "code-ran"
    planted = [*run.tune.rglob("*.pkl"), run.tune / "tuner.pkl", run.tune / "searcher-state.pkl"]
    for path in planted:
        path.write_bytes(pickle.dumps(RunsCodeWhenUnpickled(marker)))
    messages: list[str] = []
    resumed = search(config, run.root, log=messages.append, kept=kept_actors).trials()
    assert not marker.exists()
    assert any("3 finished trial(s) replayed into a fresh cma searcher" in m for m in messages)
    assert [t.genes for t in resumed] == [t.genes for t in whole]  # the same searcher, rebuilt


def test_a_disk_full_mid_search_keeps_the_ledger_and_the_run_dir_resumes(
    toy_dataset, local_ray, tmp_path, monkeypatch
) -> None:
    config = config_for(toy_dataset, search={"num_trials": 5, "queued_per_evaluator": 0})
    run = RunDir(tmp_path / "run")
    write_trials = RunDir.write_trials

    def disk_fills_at_the_third_trial(self, trials, gene_names) -> None:
        if len(trials) == 3:
            full_disk(monkeypatch)
        write_trials(self, trials, gene_names)

    monkeypatch.setattr(RunDir, "write_trials", disk_fills_at_the_third_trial)
    with pytest.raises(OSError, match="No space left") as refused:
        search(config, run.root)
    assert refused.value.filename == str(run.trials_file)
    monkeypatch.undo()  # space freed
    kept = run.trials()
    assert len(kept) == 2 and not list(run.root.glob(".*tmp*"))
    trials = search(config, run.root).trials()
    assert trials[:2] == kept and len(trials) == 5
    assert len({json.dumps(t.genes, sort_keys=True) for t in trials}) == 5


def test_a_time_budget_ends_the_search_early(toy_dataset, kept_actors, tmp_path) -> None:
    # The budget counts from the Tuner's start: an evaluator that still has to start (a worker importing
    # torch, loading the pool: over 20 s on a busy 2-core machine) would spend it, so one trial warms the
    # kept evaluator first (a few seconds when an earlier test of this module already has).
    search(config_for(toy_dataset, search={"num_trials": 1}), tmp_path / "warm", kept=kept_actors)
    config = config_for(toy_dataset, search={"num_trials": 200, "time_budget_s": 10})
    started = time.perf_counter()
    trials = search(config, tmp_path / "run", kept=kept_actors).trials()
    assert 1 <= len(trials) < 200 and all(t.ok for t in trials)
    assert time.perf_counter() - started < 120


def test_a_guard_judge_search_runs_when_the_actors_hold_every_core(
    zoo_dir, toy_dataset, kept_actors, tmp_path
) -> None:
    """Evaluator (1 CPU) + guard judge actor (1 CPU) on a 2-CPU Ray: trials must need no CPU of their own,
    or Tune waits forever for a slot (the time budget turns that wait into a failure here)."""
    kept_actors.close()  # the kept evaluator gives its core back
    config = config_for(
        toy_dataset,
        judge={"kind": "llama_guard", "model": str(zoo_dir / "guard")},
        search={"num_trials": 2, "time_budget_s": 120},
    )
    run = search(config, tmp_path / "run")
    trials = run.trials()
    assert len(trials) == 2 and all(t.ok and t.counts["judge_unparsed"] == 0 for t in trials)
    # the judge actor's verdict cache, counted per trial and per session
    cache = run.efficiency()[-1]["judge_cache"]
    assert cache["verdicts"] == sum(t.counts["harmful"] for t in trials)
    assert cache["cached"] == sum(t.counts["judge_cached"] for t in trials)
    # one evaluator: no request waits for another, so each judge call carries one
    assert cache["requests"] == len(trials) and cache["judge_calls"] == len(trials)


def test_the_lm_cocktail_baselines_run_in_a_ray_task_once_per_settings(
    toy_dataset, local_ray, tmp_path
) -> None:
    from mergesearch.search.baselines import run_baselines

    setup = SearchSetup.prepare(config_for(toy_dataset), log=lambda _: None)
    run = RunDir(tmp_path / "run")
    said: list[str] = []
    made = run_baselines(setup, run, log=said.append)
    assert [b["name"] for b in made] == ["lm_cocktail", "lm_cocktail_aligned"]
    assert all(sum(b["weights"].values()) == pytest.approx(1.0) and 0 <= b["fitness"] <= 1 for b in made)
    assert run.baselines() == made
    assert run_baselines(setup, run, log=said.append) == made
    assert "made before with these settings, kept" in said[-1]
    changed = run_baselines(setup, run, temperature=1.0, log=said.append)  # other settings: made again
    assert changed[0]["temperature"] == 1.0 and run.baselines() == changed
