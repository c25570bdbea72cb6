"""Many-expert pools: a pool file names the experts (globs allowed), gates select which take part, and a
closed expert changes the merge no more than leaving it out of the pool would."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import assert_one_line_error, run
from tiny_pools import write_pool

from mergesearch.config import GatesConfig, SearchConfig, gene_id, load_config
from mergesearch.errors import ConfigError, UserError
from mergesearch.merge.export import recipe_to_mergekit
from mergesearch.merge.genome import GenomeSpace
from mergesearch.merge.resident import ResidentMerger
from mergesearch.pool_file import expand_pool
from mergesearch.search.replay import LedgerReplay
from mergesearch.search.run_dir import TrialResult, genes_of
from mergesearch.search.searchers import ExpertGenes, SearchProblem, searcher
from mergesearch.search.select_then_search import SelectThenSearch
from mergesearch.setup import SearchSetup

POOL = ("law", "med-sft", "code", "noise")


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory) -> Path:
    return write_pool(
        tmp_path_factory.mktemp("pool"), lambda shape, g: 0.02 * torch.randn(shape, generator=g), POOL
    )


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------------------------ pool files
def test_a_pool_file_expands_globs_and_named_entries_in_order(pool_dir, tmp_path) -> None:
    pool = write(
        pool_dir / "pool.yaml",
        {"experts": [{"name": "legal", "path": "law"}, "*-sft", "[cn]o*", str(pool_dir / "base")]},
    )
    experts = expand_pool(pool)
    assert [e.name for e in experts] == ["legal", "med-sft", "code", "noise", "base"]  # the folder's name
    assert [Path(e.path) for e in experts] == [
        pool_dir / "law", pool_dir / "med-sft", pool_dir / "code", pool_dir / "noise", pool_dir / "base"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("experts", "message"),
    [
        (["nothing_here*"], "nothing_here* matches no model folder"),
        (["law", {"name": "law", "path": "code"}], "expert names repeat (law)"),
        ([], "experts: List should have at least 1 item"),
    ],
)
def test_a_bad_pool_file_is_one_line_naming_it(pool_dir, tmp_path, experts, message) -> None:
    pool = write(
        tmp_path / "bad.yaml", {"experts": [str(pool_dir / e) if isinstance(e, str) else e for e in experts]}
    )
    with pytest.raises(UserError) as err:
        expand_pool(pool)
    assert str(err.value).startswith(str(pool)) and message in str(err.value)


def test_a_search_config_names_its_pool_and_the_setup_lists_its_experts(pool_dir, tmp_path) -> None:
    pool = write(tmp_path / "pool.yaml", {"experts": [str(pool_dir / "*o*")]})
    config = write(
        tmp_path / "c.yaml", {"name": "p", "models": {"base": str(pool_dir / "base"), "pool": str(pool)}}
    )
    setup = SearchSetup.prepare(load_config(config), log=lambda _: None)
    assert list(setup.experts) == ["code", "noise"]
    assert setup.config.models.pool is None  # the run dir records the experts found, not the glob
    assert setup.space.experts == ("code", "noise")


def test_a_config_without_experts_or_pool_is_refused(tmp_path) -> None:
    config = write(tmp_path / "c.yaml", {"name": "p", "models": {"base": "b"}})
    with pytest.raises(ConfigError, match="models: .*list at least one expert, or name a pool file"):
        load_config(config)


def test_a_missing_pool_file_is_one_line_from_the_cli(tmp_path) -> None:
    config = write(
        tmp_path / "c.yaml", {"name": "p", "models": {"base": "b", "pool": str(tmp_path / "no.yaml")}}
    )
    assert_one_line_error(run("plan", str(config)), "models.pool", "no.yaml", "pool file not found")


# ------------------------------------------------------------------------------------ gates
def gated(kind: str = "threshold", k: int | None = None, groups: int = 2, **kw) -> GenomeSpace:
    return GenomeSpace("task_arithmetic", POOL, groups, "layer", gates=GatesConfig(kind=kind, k=k), **kw)


def genome_of(space: GenomeSpace, weights: list[float], gates: list[float]) -> dict[str, float]:
    genome = {space.gene("weight", e, g): w for e, w in zip(POOL, weights) for g in range(len(space.groups))}
    return genome | {f"gate.{gene_id(e)}": v for e, v in zip(POOL, gates)}


def test_threshold_gates_close_experts_below_one_half_in_every_group() -> None:
    space = gated()
    assert space.gene_names()[-4:] == ["gate.law", "gate.med_sft", "gate.code", "gate.noise"]  # gene ids
    genome = genome_of(space, [0.3, 0.8, 1.2, 0.9], [0.9, 0.49, 0.5, 0.1])
    assert space.open_experts(genome) == ("law", "code")
    recipe = space.decode(genome)
    assert recipe.expert_params["weight"] == ((0.3, 0.0, 1.2, 0.0), (0.3, 0.0, 1.2, 0.0))


def test_top_k_gates_open_the_k_highest_ties_to_the_earlier_expert() -> None:
    space = gated("top_k", 2)
    assert space.open_experts(genome_of(space, [1] * 4, [0.2, 0.7, 0.7, 0.9])) == ("med-sft", "noise")
    assert space.open_experts(genome_of(space, [1] * 4, [0.5] * 4)) == ("law", "med-sft")


def test_weights_sum_to_one_over_the_open_experts_only() -> None:
    space = gated(normalize_weights=True, groups=1)
    weights = lambda w, g: space.decode(genome_of(space, w, g)).expert_params["weight"]
    assert weights([1.0, 1.0, 3.0, 1.0], [1, 0, 1, 0]) == ((0.25, 0.0, 0.75, 0.0),)
    assert weights([0.0, 1.0, 0.0, 1.0], [1, 0, 1, 0]) == ((0.5, 0.0, 0.5, 0.0),)  # open at 0: equal shares
    assert weights([1.0, 1.0, 1.0, 1.0], [0, 0, 0, 0]) == ((0.0, 0.0, 0.0, 0.0),)  # none open: the base


def test_known_merges_encode_with_the_gates_they_need() -> None:
    space = gated()
    assert space.open_experts(space.uniform()) == POOL
    alone = space.expert_alone("code")
    assert space.open_experts(alone) == ("code",)
    recipe = space.decode(genome_of(space, [0.0, 0.7, 0.4, 0.0], [1, 1, 1, 1]))
    assert space.decode(space.encode(recipe)) == recipe
    assert space.open_experts(space.encode(recipe)) == ("med-sft", "code")


@pytest.mark.parametrize(
    ("merge", "message"),
    [
        (
            {"method": "slerp", "gates": {"kind": "threshold"}},
            "merge: .*gates: slerp has no per-expert weight",
        ),
        ({"gates": {"kind": "top_k"}}, "merge.gates: .*k: `top_k` gates take k"),
        ({"gates": {"kind": "threshold", "k": 2}}, "merge.gates: .*`threshold` gates take none"),
    ],
)
def test_gates_a_method_cannot_use_are_refused_in_the_config(tmp_path, merge, message) -> None:
    data = {"name": "g", "models": {"base": "b", "experts": [{"name": "a", "path": "p"}]}, "merge": merge}
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path / "c.yaml", data))


@pytest.mark.parametrize("gates", [None, {"kind": "top_k", "k": 2}])
def test_the_selecting_searcher_needs_threshold_gates(tmp_path, gates) -> None:
    """It picks the set itself, greedily: without gates it has nothing to pick, with top_k no k to honour."""
    data = {
        "name": "g",
        "models": {"base": "b", "experts": [{"name": "a", "path": "p"}]},
        "merge": {"gates": gates},
        "search": {"name": "select_cma"},
    }
    with pytest.raises(
        ConfigError, match=r"search.name: this searcher selects experts; set merge.gates: \{kind: threshold\}"
    ):
        load_config(write(tmp_path / "c.yaml", data))


def test_top_k_beyond_the_pool_is_refused_when_the_pool_is_known(pool_dir, tmp_path) -> None:
    data = {
        "name": "g",
        "models": {
            "base": str(pool_dir / "base"),
            "experts": [{"name": "law", "path": str(pool_dir / "law")}],
        },
        "merge": {"gates": {"kind": "top_k", "k": 3}},
    }
    with pytest.raises(UserError, match="merge.gates.k: 3 experts asked for, the pool has 1"):
        SearchSetup.prepare(SearchConfig.model_validate(data), log=lambda _: None)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "breadcrumbs_ties"])
def test_a_closed_expert_merges_as_if_it_were_not_in_the_pool(pool_dir, method) -> None:
    everyone = ResidentMerger(pool_dir / "base", {e: pool_dir / e for e in POOL}, log=lambda _: None)
    without = ("law", "code")
    some = ResidentMerger(pool_dir / "base", {e: pool_dir / e for e in without}, log=lambda _: None)
    space = GenomeSpace(method, POOL, 2, gates=GatesConfig())
    genome = {g: 0.7 for g in space.gene_names()} | {"gate.med_sft": 0.2, "gate.noise": 0.0}
    small = GenomeSpace(method, without, 2)
    small_genome = {g: 0.7 for g in small.gene_names()}
    mine = dict(everyone.merged_tensors(space.decode(genome)))
    for key, tensor in some.merged_tensors(small.decode(small_genome)):
        torch.testing.assert_close(mine[key], tensor, rtol=1e-6, atol=1e-6, msg=key)


# ------------------------------------------------------------------------------------ select, then search
REAL, BUDGET = ("law", "code", "noise"), 40  # the experts that help on this landscape


def select_problem(in_flight: int) -> tuple[GenomeSpace, SearchProblem]:
    space = GenomeSpace("task_arithmetic", POOL, 1, bounds={"weight": (0.0, 1.5)}, gates=GatesConfig())
    owned = {e: tuple(space.genes_of_expert(e)) for e in POOL}
    problem = SearchProblem(
        space.gene_bounds(), BUDGET, in_flight, seed=1, experts=ExpertGenes(owned, space.together)
    )
    return space, problem


def landscape(space: GenomeSpace, genome: dict[str, float]) -> float:
    """Each real expert adds up to 0.3 (most at weight 0.8), a distractor takes 0.2 away."""
    weights = dict(zip(POOL, space.decode(genome).expert_params["weight"][0]))
    return sum(0.3 * (1 - (w - 0.8) ** 2) if e in REAL else -0.2 for e, w in weights.items() if w > 0)


def run_select(search, space: GenomeSpace, trials: int, session: str = "a") -> list[TrialResult]:
    """Tune's order with one trial at a time in flight: ask while proposals come, then one result."""
    ledger: list[TrialResult] = []
    open_trials: dict[str, dict[str, float]] = {}
    made = 0
    while len(ledger) < trials:
        while made < trials and (proposal := search.suggest(f"{session}-{made}")) is not None:
            open_trials[f"{session}-{made}"] = proposal
            made += 1
        trial_id, genome = next(iter(open_trials.items()))
        del open_trials[trial_id]
        result = TrialResult(genes=genes_of(genome, space.gene_names()), fitness=landscape(space, genome))
        report = {**result.report(), "training_iteration": 1}
        search.on_trial_result(trial_id, report)
        search.on_trial_complete(trial_id, report)
        ledger.append(result)
    return ledger


def test_select_then_search_finds_the_real_experts_then_tunes_their_weights() -> None:
    space, problem = select_problem(1)
    search = SelectThenSearch(problem, searcher("cma").make)
    ledger = run_select(search, space, BUDGET)
    assert search.state["selected"] == REAL and search.state["stage"] == 2
    assert len(ledger) == 4 + 3 + 2 + 1 + (BUDGET - 10)  # rounds of 4, 3, 2 and 1 sets, then CMA
    best = max(ledger, key=lambda t: t.fitness)
    assert space.open_experts(best.genes) == REAL and best.fitness > landscape(space, space.together(REAL))


@pytest.mark.parametrize("killed_after", [5, 9, 14])  # in the selection's second round, its last, in CMA
@pytest.mark.parametrize("in_flight", [1, 2])
def test_select_then_search_resumed_from_its_ledger_proposes_what_it_would_have(
    killed_after, in_flight
) -> None:
    space, problem = select_problem(in_flight)
    gene_names = space.gene_names()

    def fresh() -> LedgerReplay:
        return LedgerReplay(SelectThenSearch(problem, searcher("cma").make), gene_names, in_flight, BUDGET)

    whole = run_select(fresh(), space, BUDGET)
    resumed = fresh()
    summary = resumed.replay(whole[:killed_after])
    assert summary.exact == killed_after and summary.told == summary.untold == 0
    rest = run_select(resumed, space, BUDGET - killed_after, session="b")
    assert [t.genes for t in rest] == [t.genes for t in whole[killed_after:]]


class Unreadable(dict):
    def __getitem__(self, key: str) -> torch.Tensor:
        raise AssertionError(f"a closed expert's {key} was read")


@pytest.mark.parametrize(
    ("method", "reads_closed"),
    [("task_arithmetic", False), ("breadcrumbs_ties", False), ("ties", True), ("dare_ties", True)],
)
def test_a_merge_reads_only_the_experts_that_take_part_unless_it_draws_masks(
    pool_dir, method, reads_closed
) -> None:
    """A gated 16-expert pool with 3 open merges 3 task vectors, not 16; a method that draws random masks
    expert by expert reads them all, so that leaving one out does not shift the others' draws, and so
    does TIES, whose fused kernel is compiled per expert count."""
    merger = ResidentMerger(pool_dir / "base", {e: pool_dir / e for e in POOL}, log=lambda _: None)
    merger.task_vectors["noise"] = Unreadable(merger.task_vectors["noise"])
    space = GenomeSpace(method, POOL, 2, gates=GatesConfig())
    closed = {g: 0.7 for g in space.gene_names()} | {"gate.noise": 0.0}
    if reads_closed:
        with pytest.raises(AssertionError, match="closed expert"):
            dict(merger.merged_tensors(space.decode(closed), seed=1))
    else:
        assert len(dict(merger.merged_tensors(space.decode(closed), seed=1))) == len(merger.base)
    with pytest.raises(AssertionError, match="closed expert"):  # open, it is read
        dict(merger.merged_tensors(space.decode(closed | {"gate.noise": 1.0}), seed=1))


@pytest.mark.parametrize(("method", "kept"), [("ties", ["law", "code"]), ("dare_ties", list(POOL))])
def test_a_gated_winners_mergekit_recipe_names_only_the_experts_it_merges(pool_dir, method, kept) -> None:
    space = GenomeSpace(method, POOL, 2, gates=GatesConfig())
    genome = {g: 0.7 for g in space.gene_names()} | {
        "gate.med_sft": 0.1,
        "gate.noise": 0.3,
    }  # med-sft's gene id
    config = recipe_to_mergekit(space.decode(genome), pool_dir / "base", {e: pool_dir / e for e in POOL})
    assert [Path(m["model"]).name for m in config["models"]] == kept


def test_a_pool_expert_keeps_its_folders_name_and_repeated_names_are_one_line(pool_dir, tmp_path) -> None:
    long = pool_dir.parent / "Meta-Llama-3.1-8B-Instruct-abliterated-law-sft"
    if not long.exists():
        long.symlink_to(pool_dir / "law", target_is_directory=True)
    assert [e.name for e in expand_pool(write(tmp_path / "p.yaml", {"experts": [str(long)]}))] == [
        "Meta-Llama-3.1-8B-Instruct-abliterated-law-sft"  # genes say Meta_Llama_3_1_8B_Instruct_...
    ]
    pool = write(tmp_path / "pool.yaml", {"experts": [str(pool_dir / "law")]})
    models = {"base": str(pool_dir / "base"), "experts": [{"name": "law", "path": "x"}], "pool": str(pool)}
    config = write(tmp_path / "c.yaml", {"name": "p", "models": models})
    with pytest.raises(
        UserError, match=r"models.pool \(.*pool.yaml\): experts: expert names must be unique, repeated: law"
    ):
        SearchSetup.prepare(load_config(config), log=lambda _: None)
