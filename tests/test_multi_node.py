"""A search on a simulated 3-node Ray cluster (``ray.cluster_utils.Cluster``: a head that runs no work, as
a real cluster's head is set up, and two workers, all sharing this machine's disk as their storage)
loses no trial when a node dies under it: not the node of an evaluator, not the node of the judge, and
not when the router's process dies."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from demo_configs import demo_config

from mergesearch.config import SearchConfig
from mergesearch.runtime import NAMESPACE
from mergesearch.search.run_dir import RunDir, TrialResult
from mergesearch.setup import SearchSetup

TRIALS = 8
WORKER_CPUS = 3  # room for both evaluators and the judge on one worker once the other is gone
# A killed node is declared dead after about 3 s rather than Ray's default of about 15 s.
FAST_FAILURE_DETECTION = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 3,
}


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "_system_config": FAST_FAILURE_DETECTION},
    )
    for _ in range(2):
        cluster.add_node(num_cpus=WORKER_CPUS)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=NAMESPACE)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def config_for(toy_dataset: Path, zoo_dir: Path) -> SearchConfig:
    config = demo_config(judge={"kind": "llama_guard", "model": str(zoo_dir / "guard")})
    config["data"] = {"path": str(toy_dataset), "max_alignment_prompts": 40, "max_task_prompts": 40}
    config["search"] = {"name": "cma", "num_trials": TRIALS, "seed": 0, "warm_starts": ["uniform"]}
    config["resources"] = {"num_evaluators": 2}
    return SearchConfig.model_validate(config)


def actors(class_name: str) -> list[dict]:
    """The live actors of one class (``ray._private.state``: the GCS's table, no dashboard needed)."""
    import ray._private.state as state

    return [
        a
        for a in state.actors().values()
        if a["ActorClassName"].endswith(class_name) and a["State"] == "ALIVE"
    ]


def node_of(cluster, node_id: str):
    (node,) = [n for n in cluster.worker_nodes if n.node_id == node_id]
    return node


def search_killing(run: Path, config: SearchConfig, kill: Callable[[], None]) -> list[TrialResult]:
    """Run the search of ``config`` in ``run``, calling ``kill`` once two trials are in the ledger."""
    from mergesearch.search.tuner import run_search

    failures: list[BaseException] = []
    over = threading.Event()

    def when_two_done() -> None:
        while not over.is_set() and RunDir(run).trial_count() < 2:
            time.sleep(0.05)
        try:
            assert not over.is_set(), "the search ended before two trials were recorded"
            kill()
        except BaseException as error:  # seen by the test, not lost in the thread
            failures.append(error)

    killer = threading.Thread(target=when_two_done)
    killer.start()
    try:
        setup = SearchSetup.prepare(config, lambda _: None)
        trials = run_search(setup, RunDir(run), log=lambda _: None).trials()
    finally:
        over.set()
        killer.join()
    assert not failures, failures
    return trials


def assert_exact_budget(trials: list[TrialResult]) -> None:
    assert len(trials) == TRIALS and len({t.trial_id for t in trials}) == TRIALS
    assert all(t.ok for t in trials), [t.error for t in trials if not t.ok]  # no trial lost to a penalty
    assert len({json.dumps(t.genes, sort_keys=True) for t in trials}) == TRIALS  # none proposed twice


def wait_restarted(class_name: str, count: int) -> list[dict]:
    """The ``count`` live actors of ``class_name`` once one of them has been restarted."""
    deadline = time.time() + 120
    while time.time() < deadline:
        alive = actors(class_name)
        if len(alive) == count and any(a["NumRestarts"] > 0 for a in alive):
            return alive
        time.sleep(0.2)
    raise AssertionError(f"no {class_name} came back within 120 s")


# The default run keeps the one-node case: test_search kills an evaluator mid-search.
@pytest.mark.slow  # ~50 s on a 3-node cluster: `make test-slow` (CI)
def test_a_node_killed_under_an_evaluator_loses_no_trial(cluster, zoo_dir, toy_dataset, tmp_path) -> None:
    seen: dict[str, list] = {}

    def kill_an_evaluators_node() -> None:
        evaluators = actors("Evaluator")
        seen["nodes"] = sorted(a["Address"]["NodeID"] for a in evaluators)
        cluster.remove_node(node_of(cluster, evaluators[0]["Address"]["NodeID"]), allow_graceful=False)
        seen["killed_at"] = [RunDir(tmp_path / "run").trial_count()]
        seen["after"] = wait_restarted("Evaluator", 2)

    trials = search_killing(tmp_path / "run", config_for(toy_dataset, zoo_dir), kill_an_evaluators_node)
    assert len(set(seen["nodes"])) == 2  # the evaluators were spread, one per worker
    assert seen["killed_at"][0] < TRIALS  # mid-search
    assert len({a["Address"]["NodeID"] for a in seen["after"]}) == 1  # both now on the surviving worker
    assert_exact_budget(trials)
    assert sum(t.timings["load"] > 0 for t in trials) == 3  # two loads at start, one after the restart


# The default run keeps the one-node case: test_search kills an evaluator mid-search.
@pytest.mark.slow  # ~50 s on a 3-node cluster: `make test-slow` (CI)
def test_a_node_killed_under_the_judge_and_a_killed_router_lose_no_trial(
    cluster, zoo_dir, toy_dataset, tmp_path
) -> None:
    import ray

    cluster.add_node(num_cpus=WORKER_CPUS)  # the first test left one worker
    cluster.wait_for_nodes()
    seen: dict[str, list] = {}

    def kill_the_judges_node_then_the_router() -> None:
        (judge,) = actors("JudgeServer")
        cluster.remove_node(node_of(cluster, judge["Address"]["NodeID"]), allow_graceful=False)
        seen["judge"] = wait_restarted("JudgeServer", 1)
        (router,) = actors("Router")
        ray.kill(ray.get_actor(router["Name"], namespace=NAMESPACE), no_restart=False)
        seen["router"] = wait_restarted("Router", 1)

    trials = search_killing(
        tmp_path / "run", config_for(toy_dataset, zoo_dir), kill_the_judges_node_then_the_router
    )
    assert seen["judge"] and seen["router"]
    assert_exact_budget(trials)
