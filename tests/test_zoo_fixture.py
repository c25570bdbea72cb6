"""The shipped zoo: every machine unpacks the same weights, checked against their recorded hashes, and a
recipe that drifted from the fixture is noticed here rather than by a 9-minute retraining."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergesearch.errors import UserError
from mergesearch_zoo.build import build_zoo
from mergesearch_zoo.fixture import DITHER, FIXTURE_DIR, FIXTURE_MANIFEST, fixture_for, pack_zoo
from mergesearch_zoo.layout import MEMBERS, read_manifest
from mergesearch_zoo.recipe import TRAIN_SEED_VARIABLE, ZooRecipe, default_recipe, smoke_recipe


@pytest.fixture(scope="module")
def trained_smoke(tmp_path_factory) -> Path:
    return build_zoo(smoke_recipe(), tmp_path_factory.mktemp("trained") / "zoo", log=lambda _: None)


@pytest.fixture(scope="module")
def packed_smoke(trained_smoke: Path, tmp_path_factory) -> Path:
    """The smoke zoo packed as a fixture of its own."""
    return pack_zoo(trained_smoke, tmp_path_factory.mktemp("fixture") / "toy_zoo", log=lambda _: None)


def test_the_shipped_fixture_holds_the_default_recipe() -> None:
    """Changing the recipe or the builder without packing a new fixture would send every machine back
    to training (and to its own zoo): `mergesearch zoo build --train --out DIR`, then `zoo pack`."""
    assert fixture_for(ZooRecipe(), FIXTURE_DIR) == FIXTURE_DIR
    assert fixture_for(ZooRecipe(train_seed=1), FIXTURE_DIR) is None


def test_the_fixture_is_small_enough_to_ship() -> None:
    size = sum(p.stat().st_size for p in FIXTURE_DIR.rglob("*") if p.is_file())
    assert size <= 12 * 2**20


def test_an_unpacked_zoo_rounds_back_to_the_fixtures_weights_exactly(tmp_path: Path) -> None:
    zoo = build_zoo(ZooRecipe(), tmp_path / "zoo", log=lambda _: None)
    assert read_manifest(zoo)["source"] == "fixture (float16 weights)"
    for member in MEMBERS:
        shipped = load_file(FIXTURE_DIR / member.name / "model.safetensors")
        unpacked = load_file(zoo / member.name / "model.safetensors")
        assert shipped.keys() == unpacked.keys()
        for name, tensor in unpacked.items():
            assert tensor.dtype == torch.float32
            assert torch.equal(tensor.to(torch.float16), shipped[name]), f"{member.name}: {name}"
            wide = shipped[name].to(torch.float32)
            assert bool(((tensor - wide).abs() <= DITHER * wide.abs()).all()), f"{member.name}: {name}"


def test_unpacked_task_vectors_have_as_few_tied_magnitudes_as_trained_ones(tmp_path: Path) -> None:
    """TIES and Breadcrumbs trim by magnitude; float16 alone ties most of a task vector's entries (84%
    of this tensor's), leaving which survive a trim to a sort's tie rule. The trained float32 zoo ties
    0.3% of them, the unpacked one 0.4%."""
    zoo = build_zoo(ZooRecipe(), tmp_path / "zoo", log=lambda _: None)
    base, math = (load_file(zoo / m / "model.safetensors") for m in ("base", "math"))
    name = "model.layers.0.mlp.down_proj.weight"

    def tied_share(vector: torch.Tensor) -> float:
        magnitudes = vector.abs().reshape(-1)
        return 1 - magnitudes.unique().numel() / magnitudes.numel()

    assert tied_share(math[name] - base[name]) < 0.01
    assert tied_share(math[name].half().float() - base[name].half().float()) > 0.5  # what the dither undoes


def test_packing_rounds_to_half_precision_and_unpacking_gives_those_weights(
    trained_smoke: Path, packed_smoke: Path, tmp_path: Path
) -> None:
    trained = trained_smoke
    unpacked = build_zoo(smoke_recipe(), tmp_path / "unpacked", log=lambda _: None, fixture=packed_smoke)
    assert read_manifest(unpacked)["source"].startswith("fixture")
    for member in MEMBERS:
        a = load_file(trained / member.name / "model.safetensors")
        b = load_file(unpacked / member.name / "model.safetensors")
        for name in a:
            assert torch.equal(a[name].to(torch.float16), b[name].to(torch.float16)), name
        for other in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            assert (trained / member.name / other).read_bytes() == (
                unpacked / member.name / other
            ).read_bytes()


def test_train_ignores_the_fixture(packed_smoke: Path, tmp_path: Path) -> None:
    zoo = build_zoo(smoke_recipe(), tmp_path / "zoo", log=lambda _: None, train=True, fixture=packed_smoke)
    assert read_manifest(zoo)["source"] == "trained here"


def test_a_damaged_fixture_file_is_named_and_nothing_is_left_behind(
    packed_smoke: Path, tmp_path: Path
) -> None:
    damaged = shutil.copytree(packed_smoke, tmp_path / "damaged")
    weights = damaged / "math" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(
        UserError, match=r"math/model.safetensors: missing or not the file the fixture recorded"
    ):
        build_zoo(smoke_recipe(), tmp_path / "zoo", log=lambda _: None, fixture=damaged)
    left = [p.name for p in tmp_path.iterdir() if not p.name.startswith(".zoo.lock")]
    assert left == ["damaged"]  # no zoo, no staging folder


def test_a_fixture_of_another_recipe_is_not_used(packed_smoke: Path, tmp_path: Path) -> None:
    manifest = json.loads((packed_smoke / FIXTURE_MANIFEST).read_text())
    assert manifest["digest"] == smoke_recipe().digest()
    other = smoke_recipe().model_copy(update={"train_seed": 5})
    assert fixture_for(other, packed_smoke) is None


def test_the_training_seed_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv(TRAIN_SEED_VARIABLE, raising=False)
    assert default_recipe() == ZooRecipe()
    monkeypatch.setenv(TRAIN_SEED_VARIABLE, "3")
    assert default_recipe() == ZooRecipe(train_seed=3)
    assert default_recipe().world() == ZooRecipe().world()  # another machine, the same world
    monkeypatch.setenv(TRAIN_SEED_VARIABLE, "three")
    with pytest.raises(UserError, match=f"{TRAIN_SEED_VARIABLE}: expected a training seed"):
        default_recipe()
