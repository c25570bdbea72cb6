"""A model folder's files, read without loading weights: config.json, the safetensors files (sharded or
not) and their headers. Everything that checks a model at the edge (``model_refs``) or plans memory
(``plan``) reads these; the merge engine loads the tensors they list."""

from __future__ import annotations

import json
from pathlib import Path

from mergesearch.errors import UserError


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder (sharded or not); a missing shard is named."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise UserError(f"{folder}: missing shard {missing[0]} (listed in model.safetensors.index.json)")
        return [folder / s for s in shards]
    single = folder / "model.safetensors"
    if not single.is_file():
        raise UserError(f"{folder}: no model.safetensors (or index) found")
    return [single]


def weights_stamp(folder: Path) -> list[tuple[str, int, int]]:
    """What tells one build of a model folder's weights from another without reading them (as make
    does): each weight file's name, size and modification time."""
    return [(file.name, (status := file.stat()).st_size, status.st_mtime_ns) for file in weight_files(folder)]


def tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from the safetensors headers (the first 8 + n bytes of each file; no weights
    read); a file shorter than its header says is named (a truncated download)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in weight_files(folder):
        with open(file, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if size > file.stat().st_size:
                raise UserError(f"{file}: not a safetensors file (its header length {size} exceeds the file)")
            try:
                header = json.loads(fh.read(size))
            except ValueError:
                raise UserError(f"{file}: not a safetensors file (unreadable header)") from None
        header.pop("__metadata__", None)
        end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
        if file.stat().st_size < 8 + size + end:
            raise UserError(
                f"{file}: truncated ({file.stat().st_size} bytes; its header needs {8 + size + end})"
            )
        shapes.update({name: tuple(entry["shape"]) for name, entry in header.items()})
    return shapes


def model_config(folder: Path) -> dict:
    """A model folder's config.json; a folder without one is named in the error."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise UserError(f"{folder}: not a Hugging Face model folder (no config.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def config_tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape as the architecture in config.json builds it (on PyTorch's meta device: no
    memory, no weights), for a folder whose weights are not there yet (a rehearsal before a download)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(
            f"{folder}: config.json does not build a causal LM ({str(err).splitlines()[0]})"
        ) from None
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):  # one tensor on disk
        shapes.pop("lm_head.weight", None)
    return shapes
