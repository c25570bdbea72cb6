"""Shared fixtures: the toy zoo is built once (cached by recipe hash) and evaluated once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergesearch.runtime import offline_and_quiet

offline_and_quiet()


@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    from mergesearch.zoo.build import build_zoo
    from mergesearch.zoo.recipe import ZooRecipe

    return build_zoo(ZooRecipe())


@pytest.fixture(scope="session")
def zoo_scores(zoo_dir: Path) -> dict:
    """Held-out scores of every zoo model, measured fresh each session (never read from a cache)."""
    from mergesearch.zoo.evaluate import evaluate_zoo

    return evaluate_zoo(zoo_dir)


@pytest.fixture(scope="session")
def recipe():
    from mergesearch.zoo.recipe import ZooRecipe

    return ZooRecipe()
