"""ResidentMerger: base weights and every expert's task vector loaded once, merged per genome in place.

mergekit re-reads every tensor and re-plans for each merge; a search makes hundreds. Here the base and
the task vectors stay in memory for the whole search, and a recipe is written straight into a live
model's own parameters, one tensor at a time: the only extra memory per merge is one tensor's worth of
work buffers, never a second model. Where the pool lives (``PoolPlace``): with the live model (``gpu``:
its device), in host RAM (``host``: pinned when the model is on a GPU; each tensor's slice is copied to
the model's device as it is merged), or nowhere (``disk``: read from the safetensors files per merge,
for a one-off merge such as promotion's, in one tensor's worth of memory).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import safe_open

from mergesearch.config import TaskVectorsConfig
from mergesearch.errors import UserError
from mergesearch.merge.compact import (
    CompactTaskVectors,
    expansion_bytes,
    get_form,
    load_bytes,
    pool_bytes,
)
from mergesearch.merge.recipe import MergeRecipe
from mergesearch.merge.spec import MergeMethod, get_method
from mergesearch.model_files import model_config, tensor_shapes, weight_files

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PoolPlace = Literal["gpu", "host", "disk"]


def iter_tensors(
    folder: Path, dtype: torch.dtype, device: torch.device
) -> Iterator[tuple[str, torch.Tensor]]:
    """A model's tensors one at a time, each in ``dtype`` on ``device``."""
    for file in weight_files(folder):
        with safe_open(str(file), "pt", device="cpu") as fh:
            for key in fh.keys():
                yield key, fh.get_tensor(key).to(device=device, dtype=dtype)


def read_tensors(
    folder: Path, dtype: torch.dtype, device: torch.device, pin: bool = False
) -> dict[str, torch.Tensor]:
    return {key: t.pin_memory() if pin else t for key, t in iter_tensors(folder, dtype, device)}


def sorted_magnitudes(tensor: torch.Tensor) -> torch.Tensor:
    """|tensor|, flattened and sorted ascending, in float32 (the order TIES' cut is looked up in).

    On a CPU the sort goes through numpy: its vectorised sort (x86-simd-sort) is faster than
    ``torch.sort`` on these magnitudes (``benchmarks/merge_speed.py``, ``magnitude_sort``), and a pool
    sorts every expert's worth before its first merge. Sorted values are the same whichever sort made
    them (``test_merge_engine``)."""
    magnitudes = tensor.detach().abs().reshape(-1).float()
    if magnitudes.device.type != "cpu":
        return magnitudes.sort().values
    return torch.from_numpy(np.sort(magnitudes.numpy()))


class DiskTensors(Mapping[str, torch.Tensor]):
    """A model's tensors (or, with ``minus``, its task vector) read from disk on each access."""

    def __init__(self, folder: Path, dtype: torch.dtype, minus: DiskTensors | None = None) -> None:
        self.dtype, self.minus = dtype, minus
        self.file_of: dict[str, Path] = {}
        for file in weight_files(folder):
            with safe_open(str(file), "pt", device="cpu") as fh:
                self.file_of.update(dict.fromkeys(fh.keys(), file))

    def raw(self, key: str) -> torch.Tensor:
        with safe_open(str(self.file_of[key]), "pt", device="cpu") as fh:
            return fh.get_tensor(key)

    def __getitem__(self, key: str) -> torch.Tensor:
        tensor = self.raw(key)
        if self.minus is not None:
            tensor = tensor.float().sub_(self.minus.raw(key).float())
        return tensor.to(self.dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self.file_of)

    def __len__(self) -> int:
        return len(self.file_of)


def _tokenizer_vocab(folder: Path) -> dict | None:
    path = Path(folder) / "tokenizer.json"
    return json.loads(path.read_text()).get("model", {}).get("vocab") if path.is_file() else None


def check_compatible(base: Path, experts: Mapping[str, Path]) -> None:
    """Experts must share the base's architecture, shapes, vocabulary size and tokenizer."""
    base_config, base_vocab = model_config(base), _tokenizer_vocab(base)
    for name, folder in experts.items():
        config = model_config(folder)
        for key in ("architectures", "hidden_size", "num_hidden_layers", "vocab_size"):
            if config.get(key) != base_config.get(key):
                raise UserError(
                    f"expert {name!r} ({folder}): {key} is {config.get(key)!r}, "
                    f"the base has {base_config.get(key)!r}"
                )
        vocab = _tokenizer_vocab(folder)
        if base_vocab is not None and vocab is not None and vocab != base_vocab:
            raise UserError(
                f"expert {name!r} ({folder}): its tokenizer differs from the base's "
                "(token ids would not line up)"
            )


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            fields = dict(line.split(":", 1) for line in fh)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


class ResidentMerger:
    """Holds the base and one task vector per expert; merges recipes into models or streams them out."""

    def __init__(
        self,
        base: str | Path,
        experts: Mapping[str, str | Path],
        dtype: str = "float32",
        device: str | torch.device = "cpu",
        log: Callable[[str], None] = print,
        memory_limit_bytes: int | None = None,
        sort_magnitudes: bool = False,
        pool: PoolPlace = "gpu",
        task_vectors: TaskVectorsConfig | None = None,
    ) -> None:
        """``device``: where merges are computed (the live model's device); ``pool``: where the base and
        task vectors are kept (module docstring). ``sort_magnitudes``: also keep each dense task vector's
        |τ| sorted (one more copy per expert), so magnitude-trimming methods (TIES) look their threshold
        up instead of selecting it per merge. ``task_vectors``: the form the pool keeps them in
        (``merge/compact.py``; a ``disk`` pool reads them exactly, whatever the form)."""
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype]
        self.pool = pool
        self.form = task_vectors or TaskVectorsConfig()
        self.expert_names = tuple(experts)
        base, expert_dirs = Path(base), {n: Path(p) for n, p in experts.items()}
        check_compatible(base, expert_dirs)
        self.num_layers = model_config(base).get("num_hidden_layers")
        shapes = self._check_same_tensors(base, expert_dirs)
        # Sorting a compact form's expansion would keep a dense copy per expert: the saving undone.
        sort_magnitudes = sort_magnitudes and pool != "disk" and self.form.form == "dense"
        element = torch.empty((), dtype=self.dtype).element_size()
        dense_bytes = element * sum(math.prod(shape) for shape in shapes.values())
        tau_bytes = pool_bytes(shapes, element, self.form)
        per_expert = tau_bytes + (dense_bytes if sort_magnitudes else 0)
        self.estimate_bytes = 0 if pool == "disk" else dense_bytes + len(expert_dirs) * per_expert
        # Work memory on the merge's device: compact task vectors expanded one tensor at a time.
        self.expansion_bytes = expansion_bytes(shapes, element, len(expert_dirs), self.form)
        # and on the pool's while it loads
        self.load_bytes = load_bytes(shapes, len(expert_dirs) * dense_bytes if sort_magnitudes else 0)
        storage = self.device if pool == "gpu" else torch.device("cpu")
        if pool != "disk":
            limit = memory_limit_bytes if memory_limit_bytes is not None else available_memory(storage)
            work = max(self.load_bytes, self.expansion_bytes if storage == self.device else 0)
            needed = self.estimate_bytes + work
            log(
                f"resident merger: base + {len(expert_dirs)} {self.form.form} task vectors need about "
                f"{needed / 2**20:.0f} MiB on {storage} ({limit / 2**20:.0f} MiB available)"
            )
            if needed > limit:
                raise UserError(
                    f"the pool does not fit: base + {len(expert_dirs)} task vectors need "
                    f"{needed / 2**30:.2f} GiB in {dtype} on {storage}, "
                    f"{limit / 2**30:.2f} GiB available; use fewer experts, bfloat16, a sparse or low_rank "
                    "merge.task_vectors form, merge.pool_device: host, or a bigger device"
                )
        self.base: Mapping[str, torch.Tensor]
        self.task_vectors: dict[str, Mapping[str, torch.Tensor]]
        if pool == "disk":
            on_disk = DiskTensors(base, self.dtype)
            self.base = on_disk
            self.task_vectors = {n: DiskTensors(f, self.dtype, minus=on_disk) for n, f in expert_dirs.items()}
        else:
            self._load(base, expert_dirs, storage, pin=storage.type == "cpu" and self.device.type == "cuda")
        # Genome-independent factors (TSV-M's SVDs) of the latest method and shared parameters, by tensor:
        # filled on the first merge, reused by every later genome; one factorisation is kept at a time.
        self._factors_of: tuple[str, str] | None = None
        self._factors: dict[str, Any] = {}
        self.sorted_magnitudes: dict[str, dict[str, torch.Tensor]] = (
            {
                name: {k: sorted_magnitudes(tau).to(self.dtype) for k, tau in taus.items()}
                for name, taus in self.task_vectors.items()
            }
            if sort_magnitudes
            else {}
        )

    def _load(self, base: Path, expert_dirs: Mapping[str, Path], storage: torch.device, pin: bool) -> None:
        self.base = read_tensors(base, self.dtype, storage, pin)
        self._check_finite("base", self.base)
        self.task_vectors = {}
        form = get_form(self.form.form)
        for name, folder in expert_dirs.items():
            held: dict[str, Any] = {}
            # Tensor by tensor: a whole expert in float32 next to the pool would not fit where the pool
            # just does (an 8B expert in float32 is four times its bfloat16 pool share).
            for key, weight in iter_tensors(folder, torch.float32, storage):  # subtract in fp32
                self._check_finite(name, {key: weight})
                tau = weight.sub_(self.base[key].float())  # the expert's tensor becomes its task vector
                kept = form.compress(tau, self.dtype, self.form)
                held[key] = kept.pin_memory() if pin else kept
            self.task_vectors[name] = (
                held if form.name == "dense" else CompactTaskVectors(held, device=self.device)
            )

    @staticmethod
    def _check_same_tensors(base: Path, expert_dirs: Mapping[str, Path]) -> dict[str, tuple[int, ...]]:
        """Every expert has the base's tensors with the base's shapes (headers only); the base's shapes."""
        shapes = tensor_shapes(base)
        for name, folder in expert_dirs.items():
            theirs = tensor_shapes(folder)
            if set(theirs) != set(shapes):
                extra = sorted(set(theirs) ^ set(shapes))[0]
                raise UserError(
                    f"expert {name!r} ({folder}): tensor {extra!r} is in only one of the expert and the base"
                )
            for key, shape in theirs.items():
                if shape != shapes[key]:
                    raise UserError(
                        f"expert {name!r}: tensor {key!r} has shape {shape}, the base {shapes[key]}"
                    )
        return shapes

    @staticmethod
    def _check_finite(name: str, tensors: Mapping[str, torch.Tensor]) -> None:
        for key, tensor in tensors.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise UserError(f"{name}: tensor {key!r} contains NaN or Inf values")

    def _tensor_jobs(
        self, recipe: MergeRecipe, seed: int | None
    ) -> Iterator[tuple[str, MergeMethod, torch.Tensor, list[torch.Tensor], dict]]:
        """Per tensor: its name, the method, the base, the task vectors and the method's keyword arguments."""
        if recipe.experts != self.expert_names:
            raise UserError(
                f"recipe experts {recipe.experts} differ from the resident pool {self.expert_names}"
            )
        if self.num_layers is not None and recipe.num_layers != self.num_layers:
            raise UserError(f"recipe covers {recipe.num_layers} layers, the models have {self.num_layers}")
        method = get_method(recipe.method)
        generator = (
            torch.Generator(device=self.device).manual_seed(seed)
            if method.randomized and seed is not None
            else None
        )
        use_sorted = method.uses_magnitude_order and bool(self.sorted_magnitudes)
        if method.factorize is not None and self._factors_of != (
            method.name,
            repr(sorted(recipe.shared.items())),
        ):
            self._factors_of, self._factors = (method.name, repr(sorted(recipe.shared.items()))), {}
        here = self._to_device
        per_expert = [p.name for p in method.scoped("expert")]
        for key in self.base:
            base = here(self.base[key])
            kwargs = {**recipe.params_for(key), "generator": generator}
            names = self.expert_names
            if method.skips_weightless:  # only the experts that take part are read (at least one)
                taking_part = [i for i, w in enumerate(kwargs["weight"]) if w != 0] or [0]
                names = tuple(names[i] for i in taking_part)
                kwargs |= {p: [kwargs[p][i] for i in taking_part] for p in per_expert if p in kwargs}
            taus = [here(self.task_vectors[name][key]) for name in names]
            if use_sorted:
                kwargs["sorted_magnitudes"] = [here(self.sorted_magnitudes[name][key]) for name in names]
            if method.factorize is not None:
                if self.pool == "disk":
                    self._factors = {}  # a one-off merge keeps no factors: one tensor's worth at a time
                if key not in self._factors:
                    factors = method.factors_for(base, taus, kwargs)
                    self._factors[key] = (
                        factors.to(torch.promote_types(self.dtype, torch.float32))
                        if factors is not None
                        else None
                    )
                kwargs["factors"] = self._factors[key]
            yield key, method, base, taus, kwargs

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A pool slice on the merge's device (a copy from pinned host RAM overlaps the previous merge)."""
        return tensor if tensor.device == self.device else tensor.to(self.device, non_blocking=True)

    def merged_tensors(
        self, recipe: MergeRecipe, seed: int | None = None
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Each merged tensor in turn, by name (for export, or for a model to copy from)."""
        for key, method, base, taus, kwargs in self._tensor_jobs(recipe, seed):
            yield key, method(base, taus, **kwargs)

    @torch.no_grad()
    def merge_into(self, model: torch.nn.Module, recipe: MergeRecipe, seed: int | None = None) -> None:
        """Write the merge of ``recipe`` into ``model``'s own parameters, tensor by tensor."""
        params = dict(model.named_parameters())
        for key, method, base, taus, kwargs in self._tensor_jobs(recipe, seed):
            target = params.get(key)
            if target is None:
                if key == "lm_head.weight" and "model.embed_tokens.weight" in params:
                    continue  # tied to the embeddings, which are merged under their own name
                raise UserError(f"model has no parameter {key!r} to merge into")
            method.merge_into(target, base, taus, **kwargs)
