"""Model and dataset references in configs, resolved once, at the edge (the CLI or a search's set-up step).

A reference is a folder path or ``<scheme>:<name>`` (``zoo:math``) or a bare scheme (``smollm2``). The
schemes are registries that the layers owning the models and data fill (the zoo registers ``zoo``,
``smollm2`` and ``smollm2_family``), so nothing below the edge builds models or writes datasets: judges,
backends and objectives get folders.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from mergesearch.errors import UserError
from mergesearch.model_files import model_config, tensor_shapes
from mergesearch.registry import DATASET_SCHEMES, MODEL_SCHEMES

Log = Callable[[str], None]


class ModelScheme(Protocol):
    def __call__(self, name: str, field: str, log: Log) -> Path:
        """The folder ``<scheme>:<name>`` names (built or converted on first use)."""
        ...


def resolve_model(ref: str, field: str = "model", log: Log = print) -> Path:
    """The model folder a reference names; ``field`` names it in the one-line error."""
    scheme, colon, name = ref.partition(":")
    if Path(ref).expanduser().exists() or not (colon or scheme in MODEL_SCHEMES):
        return check_model_folder(Path(ref).expanduser(), field)
    if scheme not in MODEL_SCHEMES:
        raise UserError(
            f"{field}: {ref} is neither a folder nor a known model scheme ({', '.join(MODEL_SCHEMES)})"
        )
    return MODEL_SCHEMES.get(scheme)(name, field, log)


def check_model_folder(folder: Path, field: str) -> Path:
    """A Hugging Face model folder: a readable config.json, and safetensors weights whose headers parse and
    whose files are as long as their headers say (a truncated download is named here, before any load)."""
    if not (folder / "config.json").is_file():
        raise UserError(f"{field}: {folder} is not a Hugging Face model folder (no config.json)")
    try:
        model_config(folder)
        if not any(folder.glob("*.bin")):  # pickle-only folders are named where they are loaded
            tensor_shapes(folder)
    except UserError as err:
        raise UserError(f"{field}: {err}") from None
    return folder.resolve()


def resolve_dataset(ref: str, field: str = "data.path", log: Log = print) -> Path:
    """The dataset folder a reference names: a path as written, or ``<scheme>[:<name>]`` (written by the
    layer that registered the scheme on first use)."""
    scheme, _, name = ref.partition(":")
    if Path(ref).expanduser().exists() or scheme not in DATASET_SCHEMES:
        return Path(ref).expanduser()
    return DATASET_SCHEMES.get(scheme)(name, field, log)
