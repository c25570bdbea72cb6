"""Placement: a search whose actors the cluster cannot hold fails in one line (at once on a local Ray, after
``resources.placement_timeout_s`` on a joined cluster, whose autoscaler may add nodes), and
``num_evaluators: auto`` takes what the cluster holds."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml
from cli_helpers import run
from demo_configs import demo_config

from mergesearch.config import SearchConfig
from mergesearch.errors import UserError
from mergesearch.plan import GIB, NodeType
from mergesearch.search.placement import place_search, with_evaluators_that_fit
from mergesearch.setup import SearchSetup

WORKER = NodeType("worker", 2, 0, 16 * GIB, None)  # 2 CPUs, no GPU: what the simulated cluster's nodes are


def setup_with(toy_dataset: Path, **changes) -> SearchSetup:
    config = demo_config()
    config["data"] = {"path": str(toy_dataset)}
    config["search"] = {"name": "cma", "num_trials": 10}
    for key, value in changes.items():
        config[key] = {**config.get(key, {}), **value}
    return SearchSetup.prepare(SearchConfig.model_validate(config), log=lambda _: None)


@pytest.mark.parametrize(
    ("nodes", "trials", "expected"),
    [([WORKER, WORKER], 10, 4), ([WORKER], 10, 2), ([WORKER, WORKER], 3, 3)],
)
def test_auto_evaluators_take_what_the_cluster_holds_at_once_up_to_the_trials(
    toy_dataset, nodes, trials, expected
) -> None:
    setup = setup_with(toy_dataset, resources={"num_evaluators": "auto"}, search={"num_trials": trials})
    assert with_evaluators_that_fit(setup, nodes).config.resources.num_evaluators == expected


def test_auto_evaluators_on_a_cluster_that_holds_none_is_one_line(toy_dataset) -> None:
    setup = setup_with(toy_dataset, resources={"num_evaluators": "auto", "cpus_per_evaluator": 4})
    with pytest.raises(UserError, match=r"evaluator does not fit: asks for 4 CPU \+ 0 GPU"):
        with_evaluators_that_fit(setup, [WORKER, WORKER])


def test_a_joined_cluster_waits_for_its_autoscaler_then_places_the_search(toy_dataset, monkeypatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "ray://cluster:10001")
    setup = setup_with(toy_dataset, resources={"num_evaluators": 3, "placement_timeout_s": 60})
    views = iter([[WORKER], [WORKER], [WORKER, WORKER]])  # a second node joins on the third look
    said: list[str] = []
    settled, placements = place_search(setup, said.append, nodes=lambda: next(views), sleep=lambda _: None)
    assert settled.config.resources.num_evaluators == 3 and all(p.node == WORKER for p in placements)
    assert len(said) == 1 and "3 CPU together" in said[0] and "waiting up to 60 s" in said[0]


def test_a_joined_cluster_that_never_grows_fails_after_the_timeout(toy_dataset, monkeypatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "ray://cluster:10001")
    setup = setup_with(toy_dataset, resources={"num_evaluators": 3, "placement_timeout_s": 0.3})
    started = time.monotonic()
    with pytest.raises(
        UserError, match=r"ask for 3 CPU together.*there are 2;.*\[waited 0.3 s for more nodes"
    ):
        place_search(setup, lambda _: None, nodes=lambda: [WORKER])
    assert 0.3 <= time.monotonic() - started < 5


def test_a_local_ray_fails_at_once_whatever_the_timeout(toy_dataset, monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    setup = setup_with(toy_dataset, resources={"num_evaluators": 3, "placement_timeout_s": 600})
    started = time.monotonic()
    with pytest.raises(UserError, match="ask for 3 CPU together"):
        place_search(setup, lambda _: None, nodes=lambda: [WORKER])
    assert time.monotonic() - started < 5


@pytest.fixture(scope="module")
def cpu_cluster():
    """A simulated multi-node cluster: a head that runs no work and two 2-CPU workers, no GPU."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def test_from_the_cli_a_layout_needing_gpus_the_cluster_lacks_fails_in_one_line_within_its_timeout(
    cpu_cluster, toy_dataset, tmp_path
) -> None:
    config = demo_config(resolved=False)
    config["data"] = {"path": str(toy_dataset)}
    config["resources"] = {"num_evaluators": 2, "gpus_per_evaluator": 1, "placement_timeout_s": 4}
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    done = run(
        "search",
        str(path),
        "--run-dir",
        str(tmp_path / "run"),
        env={**os.environ, "RAY_ADDRESS": cpu_cluster.address},
    )
    took = time.monotonic() - started
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    *progress, last = done.stderr.strip().splitlines()
    assert last.startswith("error: plan (the Ray cluster): evaluator does not fit: asks for 1 CPU + 1 GPU")
    assert "no node has that" in last and "0 CPU, " in last and "[waited 4 s for more nodes" in last
    assert any("waiting up to 4 s for the autoscaler to add nodes" in line for line in progress)
    assert 4 <= took < 60, took  # the timeout, plus joining the cluster and preparing the search
    assert not (tmp_path / "run" / "trials.parquet").exists()


@pytest.mark.slow  # three CLI runs and a promotion on a 3-node cluster, 2-4 min: `make test-slow`
def test_from_the_cli_on_a_multi_node_cluster_a_resume_extends_and_promote_redoes_nothing(
    cpu_cluster, toy_dataset, tmp_path
) -> None:
    """The README's cluster commands in order on a simulated 3-node cluster: `search` (3 trials, promoted),
    the same with 5 trials (2 more run), then `promote` (nothing redone)."""
    from mergesearch.search.run_dir import RunDir

    config = demo_config(resolved=False)
    config["data"] = {"path": str(toy_dataset), "max_alignment_prompts": 12, "max_task_prompts": 12}
    config["search"] = {"name": "cma", "num_trials": 3, "seed": 0}
    config["promotion"] = {"top_k": 1}
    path, run_dir = tmp_path / "c.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "RAY_ADDRESS": cpu_cluster.address}
    first = run("search", str(path), "--run-dir", str(run_dir), "--no-baseline", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    before = RunDir(run_dir).trials()
    config["search"]["num_trials"] = 5
    path.write_text(yaml.safe_dump(config))
    more = run("search", str(path), "--run-dir", str(run_dir), "--no-baseline", env=env)
    assert more.returncode == 0, more.stderr[-3000:]
    trials = RunDir(run_dir).trials()
    assert len(trials) == 5 and trials[:3] == before and len({t.trial_id for t in trials}) == 5
    results = sorted(run_dir.glob("promotion/**/result.json"))
    stamps = [p.stat().st_mtime_ns for p in results]
    again = run("promote", str(run_dir), env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "promoted before with these settings, kept" in again.stderr
    assert [p.stat().st_mtime_ns for p in results] == stamps
