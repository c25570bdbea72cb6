"""Choosing among a search's best trials on the whole search split (``promotion.validate_top``): which
trials are scored again, how they rank, and what is kept between runs. The scores here are given, as a
table of what each genome scores on the whole split, so that the ranking and the bookkeeping are seen
apart from any model; tests/test_search.py runs the same on the toy zoo's evaluators, end to end."""

from __future__ import annotations

import math

from demo_configs import demo_config

from mergesearch.config import SearchConfig
from mergesearch.objectives.data import EvalData
from mergesearch.objectives.evaluate import Scores
from mergesearch.search.run_dir import RunDir, TrialResult
from mergesearch.search.validate import best_by_fitness, validated

WHOLE = EvalData(harmful=("h",) * 5, benign=("b",), choice_items=(), short_items=(), tagged=())


def trial(index: int, search_fitness: float, weight: float | None = None) -> TrialResult:
    return TrialResult(
        genes={"w.a.g0": weight if weight is not None else index / 10},
        fitness=search_fitness,
        objectives={"safety": search_fitness},
        trial_id=f"t{index}",
        index=index,
    )


class OnTheWholeSplit:
    """What each genome scores on the whole split (by its one gene), and which genomes were asked for."""

    def __init__(self, by_weight: dict[float, float]) -> None:
        self.by_weight = by_weight
        self.asked: list[float] = []

    def __call__(self, genomes, data):
        assert data is WHOLE
        for genes in genomes:
            self.asked.append(genes["w.a.g0"])
            fitness = self.by_weight[genes["w.a.g0"]]
            yield Scores(objectives={"safety": fitness}, fitness=fitness)


def a_run(tmp_path, trials: list[TrialResult]) -> tuple[RunDir, SearchConfig]:
    run = RunDir(tmp_path / "run")
    config = SearchConfig.model_validate(demo_config())
    run.write_config(config)
    run.write_trials(trials, ["w.a.g0"])
    return run, config


def test_the_best_by_search_fitness_are_ranked_by_their_fitness_on_the_whole_split(tmp_path) -> None:
    trials = [trial(0, 0.9), trial(1, 0.8), trial(2, 0.7), trial(3, 0.95)]
    run, config = a_run(tmp_path, trials)
    chosen = best_by_fitness(run.trials(), 3)
    assert [t.trial_id for t in chosen] == ["t3", "t0", "t1"]  # the luckiest on the rows the search read
    score = OnTheWholeSplit({0.3: 0.6, 0.0: 0.7, 0.1: 0.8})
    ranked = validated(run, config, chosen, WHOLE, score, log=lambda _: None)
    assert [t.trial_id for t in ranked] == ["t1", "t0", "t3"]
    assert [t.fitness for t in ranked] == [0.8, 0.7, 0.6]
    assert [t.counts["search_fitness"] for t in ranked] == [0.8, 0.9, 0.95]  # what the search recorded
    assert ranked[0].genes == trials[1].genes and ranked[0].objectives == {"safety": 0.8}


def test_a_genome_whose_score_failed_ranks_last_as_failed(tmp_path) -> None:
    run, config = a_run(tmp_path, [trial(0, 0.9), trial(1, 0.8)])
    score = OnTheWholeSplit({0.0: math.nan, 0.1: 0.5})
    ranked = validated(run, config, best_by_fitness(run.trials(), 2), WHOLE, score, log=lambda _: None)
    assert [t.trial_id for t in ranked] == ["t1", "t0"]
    assert ranked[1].status == "failed" and not ranked[1].full


def test_each_score_is_kept_and_only_what_is_missing_is_scored_again(tmp_path) -> None:
    trials = [trial(0, 0.9), trial(1, 0.8), trial(2, 0.7)]
    run, config = a_run(tmp_path, trials)
    score = OnTheWholeSplit({0.0: 0.5, 0.1: 0.6, 0.2: 0.7})
    said: list[str] = []
    first = validated(run, config, best_by_fitness(run.trials(), 2), WHOLE, score, said.append)
    assert score.asked == [0.0, 0.1] and run.validation_file.is_file()
    assert validated(run, config, best_by_fitness(run.trials(), 2), WHOLE, score, said.append) == first
    assert score.asked == [0.0, 0.1]  # nothing scored again
    validated(run, config, best_by_fitness(run.trials(), 3), WHOLE, score, said.append)
    assert score.asked == [0.0, 0.1, 0.2]  # one more validated: only it is scored

    assert validated(run, config, best_by_fitness(run.trials(), 1), WHOLE, score, said.append)
    assert validated(run, config, best_by_fitness(run.trials(), 3), WHOLE, score, said.append)
    assert score.asked == [0.0, 0.1, 0.2]  # fewer asked for: the rest are still kept

    # another fitness: every score made again
    weights = {"safety": 1.0, "task_accuracy": 0.5}
    refit = config.model_copy(update={"fitness": config.fitness.model_copy(update={"weights": weights})})
    validated(run, refit, best_by_fitness(run.trials(), 1), WHOLE, score, said.append)
    assert score.asked == [0.0, 0.1, 0.2, 0.0]

    # a trial id recorded with another genome (a run dir searched again): scored again, never reused
    again, _ = a_run(tmp_path, [trial(0, 0.9, weight=0.2)])
    ranked = validated(again, refit, best_by_fitness(again.trials(), 1), WHOLE, score, said.append)
    assert score.asked[-1] == 0.2 and ranked[0].fitness == 0.7


def test_a_validation_file_of_another_version_is_scored_again(tmp_path) -> None:
    run, config = a_run(tmp_path, [trial(0, 0.9)])
    score = OnTheWholeSplit({0.0: 0.5})
    validated(run, config, best_by_fitness(run.trials(), 1), WHOLE, score, log=lambda _: None)
    torn = run.validation_file.read_text().replace('"genes"', '"genome"')
    run.validation_file.write_text(torn)
    validated(run, config, best_by_fitness(run.trials(), 1), WHOLE, score, log=lambda _: None)
    assert score.asked == [0.0, 0.0]
