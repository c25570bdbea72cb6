"""mergekit interop: write a merge as a mergekit YAML config and materialise it with ``mergekit-yaml``.

Running the real CLI (not its internals) is the point: what we report is what a user reproduces with
plain mergekit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from mergesearch.errors import UserError
from mergesearch.io import atomic_dir, atomic_write_text
from mergesearch.merge.recipe import INPUT_SIDE, MergeRecipe
from mergesearch.merge.resident import ResidentMerger
from mergesearch.merge.spec import get_method
from mergesearch.merge.tokenizer import TokenizerChoice
from mergesearch.model_files import weight_files


def mergekit_config(
    method: str,
    base: str | Path,
    experts: Mapping[str | Path, Mapping[str, float]],
    dtype: str = "float32",
    extra: Mapping[str, object] | None = None,
) -> dict:
    """A mergekit config dict: ``experts`` maps each model path to its parameters (weight, density...)."""
    return {
        "merge_method": method,
        "base_model": str(base),
        "models": [{"model": str(path), "parameters": dict(params)} for path, params in experts.items()],
        "dtype": dtype,
        **(dict(extra) if extra else {}),
    }


def _setting(recipe: MergeRecipe, per_group: Sequence[float]) -> float | list[dict]:
    """A scalar for one group; else mergekit filter conditions that give each tensor its group's value."""
    if len(recipe.groups) == 1:
        return float(per_group[0])
    conditions: list[dict] = [
        {"filter": f"layers.{layer}.", "value": float(per_group[g])}
        for g, layers in enumerate(recipe.groups)
        for layer in layers
    ]
    conditions += [{"filter": key, "value": float(per_group[0])} for key in INPUT_SIDE]
    head = per_group[0] if recipe.head_group == "first" else per_group[-1]
    return conditions + [{"value": float(head)}]


# Files a merged model folder takes from the base model besides its tokenizer's (``merge/tokenizer.py``).
MODEL_SIDE_FILES = ("config.json", "generation_config.json")


def _weightless(recipe: MergeRecipe, expert: int) -> bool:
    weights = recipe.expert_params.get("weight")
    return weights is not None and all(group[expert] == 0 for group in weights)


def recipe_to_mergekit(
    recipe: MergeRecipe, base: str | Path, experts: Mapping[str, str | Path], dtype: str = "float32"
) -> dict:
    """The mergekit config that makes exactly what the resident engine makes from ``recipe`` (names and
    parameters as the method declares them for mergekit). Experts at weight 0 in every group are left out
    where the method declares that the same merge (not where it draws masks expert by expert)."""
    method = get_method(recipe.method)
    if method.mergekit is None:
        raise UserError(
            f"mergekit has no {recipe.method!r} merge method; materialise this recipe with mergesearch"
        )
    missing = [e for e in recipe.experts if e not in experts]
    if missing:
        raise UserError(f"no model path for expert(s) {', '.join(missing)}")
    names = {p.name: p.mergekit for p in method.params if p.mergekit}
    models = []
    for i, name in enumerate(recipe.experts):
        if (
            method.weightless_absent
            and _weightless(recipe, i)
            and any(not _weightless(recipe, j) for j in range(len(recipe.experts)))
        ):  # a closed expert of a gated pool: mergekit would load it to add nothing
            continue
        params = {
            names[p]: _setting(recipe, [group[i] for group in values])
            for p, values in recipe.expert_params.items()
        }
        models.append({"model": str(experts[name]), **({"parameters": params} if params else {})})
    shared = {names[p]: v for p, v in recipe.shared.items() if p in names}
    shared |= {names[p]: _setting(recipe, values) for p, values in recipe.group_params.items()}
    config: dict = {"merge_method": method.mergekit, "models": models, "dtype": dtype}
    base_model = {"base": base, "first_expert": experts[recipe.experts[0]], "none": None}
    if base_model[method.mergekit_base] is not None:
        config["base_model"] = str(base_model[method.mergekit_base])
    if shared:
        config["parameters"] = shared
    return config


def recipe_file(
    recipe: MergeRecipe,
    base: str | Path,
    experts: Mapping[str, str | Path],
    dtype: str,
    header: str,
    seed: int | None = None,
    tokenizer: TokenizerChoice | None = None,
) -> str:
    """``best/recipe.yaml``: the mergekit config, or our recipe where mergekit has no such method, with a
    comment that says whether ``mergekit-yaml`` rebuilds the very weights (of ``best/model``, of a protocol
    row)."""
    method = get_method(recipe.method)
    if method.mergekit is None:
        body: dict = {"recipe": recipe.model_dump(mode="json")}
        note = (
            f"mergekit has no {recipe.method!r}: rebuild with mergesearch's engine; "
            "the saved model is canonical"
        )
        return f"# {header}\n# {note}\n" + yaml.safe_dump(body, sort_keys=False)
    note = "`mergekit-yaml recipe.yaml OUT` rebuilds these merged weights"
    if method.randomized:
        # Both draw masks from torch's CPU generator seeded once, tensor by tensor in name order: the same
        # masks for single-file checkpoints (tested); shards are read in another order.
        sharded = any(len(weight_files(Path(folder))) > 1 for folder in (base, *experts.values()))
        note = (
            f"{recipe.method} draws random masks: a sharded checkpoint draws them in another order, so "
            "mergekit makes a merge of this recipe, not these weights; the saved model is canonical"
            if sharded
            else f"{recipe.method} draws random masks: `mergekit-yaml --random-seed {seed} recipe.yaml OUT` "
            "rebuilds these merged weights exactly (same masks, CPU)"
        )
    body = recipe_to_mergekit(recipe, base, experts, dtype) | (tokenizer.mergekit_keys() if tokenizer else {})
    return f"# {header}\n# {note}\n" + yaml.safe_dump(body, sort_keys=False)


def mergekit_executable() -> str:
    local = Path(sys.executable).with_name("mergekit-yaml")
    found = str(local) if local.exists() else shutil.which("mergekit-yaml")
    if not found:
        raise UserError("mergekit-yaml not found; install mergesearch's dependencies (`make install`)")
    return found


def _mergekit_yaml(arguments: list[str]) -> subprocess.CompletedProcess:
    """``mergekit-yaml ARGUMENTS``, the console script beside this interpreter, as a process of its own (the
    tests run it forked from a process that imported mergekit once: tests/fork_server.py)."""
    return subprocess.run([mergekit_executable(), *arguments], capture_output=True, text=True)


def run_mergekit_yaml(config: Mapping, out_dir: Path, seed: int | None = None) -> Path:
    """Materialise ``config`` with the ``mergekit-yaml`` CLI into ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        config_path = tmp.parent / f".{out_dir.name}.mergekit.yaml"
        atomic_write_text(config_path, yaml.safe_dump(dict(config), sort_keys=False))
        arguments = [str(config_path), str(tmp / "model"), "--quiet"]
        if seed is not None:
            arguments += ["--random-seed", str(seed)]
        try:
            done = _mergekit_yaml(arguments)
        finally:
            config_path.unlink(missing_ok=True)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"mergekit-yaml failed for {out_dir}: {last[0]}")
        for item in (tmp / "model").iterdir():
            item.rename(tmp / item.name)
        (tmp / "model").rmdir()
    return out_dir


SHARD_BYTES = 2 * 2**30  # a materialised model is written in shards of this size: memory stays one shard


def materialize(
    merger: ResidentMerger,
    recipe: MergeRecipe,
    base: str | Path,
    out_dir: Path,
    seed: int | None = None,
    tokenizer: TokenizerChoice | None = None,
) -> Path:
    """Write the merge of ``recipe`` as a model folder (weights from the engine, the config from the base,
    the tokenizer as ``tokenizer`` says: the base's by default): ``model.safetensors``, or shards of
    ``SHARD_BYTES`` with their index when the model is larger."""
    base, out_dir = Path(base), Path(out_dir)
    tokenizer = tokenizer or TokenizerChoice(base, "base")
    with atomic_dir(out_dir) as tmp:
        shards = _write_shards(merger.merged_tensors(recipe, seed), tmp)
        if len(shards) == 1:
            shards[0][0].rename(tmp / "model.safetensors")
        else:
            weight_map = {}
            for i, (path, keys) in enumerate(shards, start=1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                path.rename(tmp / name)
                weight_map.update(dict.fromkeys(keys, name))
            index = {"metadata": {}, "weight_map": weight_map}
            atomic_write_text(tmp / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")
        for name in MODEL_SIDE_FILES:
            if (base / name).is_file():
                shutil.copyfile(base / name, tmp / name)
        tokenizer.write_tokenizer_files(tmp)
        atomic_write_text(tmp / "mergesearch_recipe.json", recipe.model_dump_json(indent=2) + "\n")
    return out_dir


def _write_shards(tensors: Iterable[tuple[str, torch.Tensor]], folder: Path) -> list[tuple[Path, list[str]]]:
    """Save ``tensors`` in order into files of at most ``SHARD_BYTES`` (a bigger tensor gets its own)."""
    shards: list[tuple[Path, list[str]]] = []
    pending: dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        nonlocal pending, size
        path = folder / f"shard-{len(shards)}.tmp"
        save_file(pending, str(path), metadata={"format": "pt"})
        shards.append((path, list(pending)))
        pending, size = {}, 0

    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if pending and size + nbytes > SHARD_BYTES:
            flush()
        pending[name] = tensor.detach().to("cpu").contiguous()
        size += nbytes
    if pending or not shards:
        flush()
    return shards
