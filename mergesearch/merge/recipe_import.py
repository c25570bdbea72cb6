"""A mergekit recipe (the YAML ``mergekit-yaml`` reads) as a MergeRecipe: the way in for a user who already
has a merge that works.

mergekit resolves each parameter per tensor: a scalar; a gradient (a list of numbers interpolated over the
layers, at t = layer / (layers − 1), and at t = 0 for every tensor outside the layers); or filter
conditions (``{filter: self_attn, value: ...}``, the first whose filter is in the tensor's name). The
same rules are applied here to every tensor of the base model, then the values are grouped by layer:
what mergesearch cannot express (a value per tensor type inside a layer, embeddings that differ from
their layer group, ``slices``, LoRA references, a method it lacks) is refused in one line naming the key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergesearch.config import read_yaml
from mergesearch.errors import UserError
from mergesearch.merge.export import materialize
from mergesearch.merge.genome import GenomeSpace, layer_groups
from mergesearch.merge.recipe import INPUT_SIDE, LAYER, MergeRecipe
from mergesearch.merge.resident import DTYPES, ResidentMerger
from mergesearch.merge.spec import MergeMethod, ParamSpec, get_method
from mergesearch.merge.tokenizer import TokenizerChoice
from mergesearch.model_files import model_config, tensor_shapes
from mergesearch.registry import MERGE_METHODS

# Keys of a mergekit config this reader takes; the others mergekit has are refused by name.
KNOWN_KEYS = (
    "merge_method",
    "base_model",
    "models",
    "parameters",
    "dtype",
    "tokenizer_source",
    "chat_template",
)
# Settings mergekit takes that change how it computes, not what: accepted and left out.
IGNORED_SETTINGS = {"int8_mask": "a memory-saving mask dtype in mergekit; the same merge"}


@dataclass(frozen=True)
class ImportedRecipe:
    """A mergekit recipe read for the resident engine: the recipe, the folder the engine takes as its base
    (the recipe's ``base_model``; the first model where the method has none: task vectors are then taken
    from it, and the merge of xᵢ = b + τᵢ is the same), the experts' folders by name, and the keys it
    passes on as they are (``dtype``, ``tokenizer_source``, ``chat_template``)."""

    recipe: MergeRecipe
    base: Path
    experts: dict[str, Path]
    dtype: str
    tokenizer_source: str | None
    chat_template: str | None
    source: str  # the recipe file, for messages


def mergekit_method(name: object, where: str) -> MergeMethod:
    """Our method that mergekit calls ``name``."""
    by_mergekit = {get_method(m).mergekit: get_method(m) for m in MERGE_METHODS if get_method(m).mergekit}
    if name not in by_mergekit:
        known = ", ".join(sorted(by_mergekit))
        raise UserError(f"{where}: merge_method {name!r} is not one mergesearch merges (it merges: {known})")
    return by_mergekit[str(name)]


def _number(value: Any) -> Any:
    """A YAML string that is a number (``1e-5`` without a dot loads as a string) as that number, as
    mergekit's validation reads it; anything else as it is."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def setting_at(setting: Any, tensor: str, t: float, where: str) -> Any:
    """A mergekit parameter setting's value for ``tensor`` at gradient position ``t`` (module docstring)."""
    if isinstance(setting, (bool, int, float, str)):
        return _number(setting)
    if isinstance(setting, Mapping):
        setting = [setting]
    if isinstance(setting, list):
        setting = [_number(v) for v in setting]
    if not isinstance(setting, list) or not setting:
        raise UserError(f"{where}: expected a number, a gradient (a list of numbers) or filter conditions")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in setting):
        scaled = t * (len(setting) - 1)
        low = int(scaled)
        high = min(len(setting) - 1, low + 1)
        return (1 - (scaled - low)) * setting[low] + (scaled - low) * setting[high]
    if all(isinstance(v, (bool, str)) for v in setting):
        return setting[int(t * (len(setting) - 1))]
    for i, condition in enumerate(setting):
        if not isinstance(condition, Mapping) or "value" not in condition:
            raise UserError(f"{where}[{i}]: a filter condition takes `value` (and `filter`)")
        unknown = sorted(set(condition) - {"filter", "value"})
        if unknown:
            raise UserError(f"{where}[{i}].{unknown[0]}: a filter condition takes only `filter` and `value`")
        pattern = condition.get("filter")
        if pattern is None or pattern == "*" or str(pattern) in tensor:
            return setting_at(condition["value"], tensor, t, f"{where}[{i}].value")
    return None


def _position(tensor: str, num_layers: int) -> float:
    """Where mergekit reads a gradient for ``tensor``: its layer's share of depth, 0 outside the layers."""
    match = LAYER.search(tensor)
    if not match:
        return 0.0
    return int(match.group(1)) / (num_layers - 1) if num_layers > 1 else 1.0


class _Resolver:
    """Resolves one parameter (per model, with the recipe's global ``parameters`` as its fallback, as
    mergekit does) over every tensor, and reduces it to one value per layer plus the head's placement."""

    def __init__(self, tensors: Sequence[str], num_layers: int, source: str) -> None:
        self.tensors, self.num_layers, self.source = tensors, num_layers, source

    def per_layer(self, settings: Sequence[tuple[str, Any]], param: ParamSpec) -> tuple[list[Any], set[str]]:
        """One value per layer and the head placements that fit (``last``, ``first``); ``settings``: the
        (where, setting) pairs in precedence order. A parameter set nowhere takes its declared default."""
        by_layer: dict[int, Any] = {}
        outside: dict[str, Any] = {}
        for tensor in self.tensors:
            value, where = None, ""
            for where, setting in settings:
                value = setting_at(setting, tensor, _position(tensor, self.num_layers), where)
                if value is not None:
                    break
            if value is None:
                if param.default is None:
                    at = settings[-1][0] if settings else f"{self.source}: parameters.{param.mergekit}"
                    raise UserError(f"{at}: {param.mergekit} is not set for tensor {tensor!r}")
                value = param.default
            match = LAYER.search(tensor)
            if match is None:
                outside[tensor] = value
                continue
            layer = int(match.group(1))
            if layer in by_layer and by_layer[layer] != value:
                raise UserError(
                    f"{where}: gives tensors of layer {layer} different values ({by_layer[layer]} and "
                    f"{value}, at {tensor!r}); mergesearch's parameters are one value per layer"
                )
            by_layer[layer] = value
        missing = [i for i in range(self.num_layers) if i not in by_layer]
        if missing:
            raise UserError(
                f"{self.source}: the base has no tensors named `layers.{missing[0]}.` "
                f"(of its {self.num_layers} layers); mergesearch merges decoder layers by that name"
            )
        layers = [by_layer[i] for i in range(self.num_layers)]
        heads = {"last", "first"}
        for tensor, value in outside.items():
            if any(key in tensor for key in INPUT_SIDE):
                if value != layers[0]:
                    raise UserError(
                        f"{settings[0][0] if settings else self.source}: the embeddings ({tensor!r}) take "
                        f"{value}, layer 0 takes {layers[0]}; mergesearch merges them with the first layers"
                    )
                continue
            heads &= {h for h, at in (("last", layers[-1]), ("first", layers[0])) if value == at}
            if not heads:
                raise UserError(
                    f"{settings[0][0] if settings else self.source}: {tensor!r} takes {value}, neither the "
                    f"first layer's ({layers[0]}) nor the last's ({layers[-1]})"
                )
        return layers, heads


def _folder(reference: object, where: str, relative_to: Path) -> Path:
    if not isinstance(reference, str) or not reference:
        raise UserError(f"{where}: expected a model folder")
    if "+" in reference:
        raise UserError(f"{where}: {reference!r} applies a LoRA (model+lora); merge it into the model first")
    path = Path(reference).expanduser()
    return path if path.is_absolute() or path.exists() else relative_to / path


def _pool_name(folder: Path, pool: Mapping[str, Path], where: str) -> str:
    """The pool expert a recipe's model is: the same folder, or, for a reference that is no folder here (a
    recipe written on another machine names a hub id or another path), the same folder name."""
    for name, path in pool.items():
        if Path(path).resolve() == folder.resolve():
            return name
    for name, path in pool.items():
        if not folder.exists() and folder.name in (Path(path).name, name):
            return name
    known = ", ".join(f"{n} ({Path(p).name})" for n, p in pool.items())
    raise UserError(f"{where}: {str(folder)!r} is none of the pool's experts by folder or name ({known})")


def _same_model(a: Path, b: Path) -> bool:
    """The same folder; or, where one of them is no folder here (a recipe written elsewhere), the same
    folder name (``runs/sft/final`` and ``runs/dpo/final``, both here, are two models)."""
    if a.resolve() == b.resolve():
        return True
    return (not a.exists() or not b.exists()) and a.name == b.name


def read_mergekit_recipe(
    path: str | Path, pool: Mapping[str, Path] | None = None, base: Path | None = None
) -> ImportedRecipe:
    """Read a mergekit YAML. ``pool`` and ``base``: a search's experts by name and its base (each recipe
    model is matched to one of them, by folder or folder name: a recipe written elsewhere names other
    paths); without them (``eval --from-recipe``) the recipe's own folders are read, named by folder."""
    path = Path(path)
    source = str(path)
    raw = read_yaml(path, "recipe file")
    if not isinstance(raw, Mapping):
        raise UserError(f"{source}: expected a mergekit recipe (a mapping with merge_method and models)")
    if "slices" in raw or "modules" in raw:
        key = "slices" if "slices" in raw else "modules"
        raise UserError(f"{source}: {key}: mergesearch merges whole models, not layer slices or modules")
    unknown = sorted(set(raw) - set(KNOWN_KEYS))
    if unknown:
        raise UserError(
            f"{source}: {unknown[0]}: not a key mergesearch reads (it reads: {', '.join(KNOWN_KEYS)})"
        )
    method = mergekit_method(raw.get("merge_method"), source)
    dtype = raw.get("dtype", "float32")  # unset: the base's own, once its config is read
    if dtype not in DTYPES:
        raise UserError(f"{source}: dtype: {dtype!r} is not one the engine merges in ({', '.join(DTYPES)})")
    models = raw.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, Mapping) for m in models):
        raise UserError(f"{source}: models: expected a list of {{model: FOLDER, parameters: ...}}")
    here = path.parent
    entries: list[tuple[Path, Mapping[str, Any], str]] = []
    for i, entry in enumerate(models):
        extra = sorted(set(entry) - {"model", "parameters"})
        if extra:
            raise UserError(f"{source}: models[{i}].{extra[0]}: a model entry takes `model` and `parameters`")
        params = entry.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise UserError(f"{source}: models[{i}].parameters: expected a mapping")
        entries.append(
            (_folder(entry.get("model"), f"{source}: models[{i}].model", here), params, f"models[{i}]")
        )
    base_ref = raw.get("base_model")
    recipe_base = _folder(base_ref, f"{source}: base_model", here) if base_ref is not None else None
    if method.mergekit_base == "base" and recipe_base is None:
        raise UserError(
            f"{source}: base_model: {method.mergekit} merges task vectors from a base model; name it"
        )
    if method.mergekit_base == "first_expert":  # slerp: from the base model (t=0) to the other one
        first = recipe_base
        if first is None or not any(_same_model(folder, first) for folder, _, _ in entries):
            raise UserError(f"{source}: base_model: slerp interpolates from one of its two models; name it")
        entries.sort(key=lambda e: not _same_model(e[0], first))
    elif recipe_base is not None and method.mergekit_base == "none":
        # mergekit feeds the base model in as one more input of a method that takes no base (linear,
        # karcher), weighed like the others (its entry's parameters, else the global ones)
        if not any(_same_model(folder, recipe_base) for folder, _, _ in entries):
            entries.insert(0, (recipe_base, {}, "base_model"))
    elif recipe_base is not None:  # the base itself listed among the models takes no part of its own
        entries = [e for e in entries if not _same_model(e[0], recipe_base)]
    if pool is not None and base is not None:  # a search: its own base model
        if method.mergekit_base == "base" and not _same_model(recipe_base, base):
            raise UserError(f"{source}: base_model: {str(recipe_base)!r} is not the search's base ({base})")
        engine_base = base
    else:
        engine_base = recipe_base if recipe_base is not None else entries[0][0]
    if pool is None:  # the recipe's own folders: each named by its key when it is not a model
        for folder, _, where in entries:
            if not (folder / "config.json").is_file():
                raise UserError(f"{source}: {where}.model: {folder} is not a model folder (no config.json)")
        names = [folder.name for folder, _, _ in entries]
        if len(set(names)) < len(names):
            names = [f"{n}_{i}" for i, n in enumerate(names)]
        experts = {n: folder for n, (folder, _, _) in zip(names, entries)}
    else:
        names = [_pool_name(folder, pool, f"{source}: {where}.model") for folder, _, where in entries]
        twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if twice is not None:
            raise UserError(f"{source}: models: two entries are the pool's expert {twice!r}")
        experts = {n: Path(pool[n]) for n in names}
    method.check_experts(len(experts))
    if not (engine_base / "config.json").is_file():
        raise UserError(f"{source}: base_model: {engine_base} is not a model folder (no config.json)")
    config = model_config(engine_base)
    if "num_hidden_layers" not in config:
        raise UserError(
            f"{source}: {engine_base}: config.json has no num_hidden_layers (mergesearch merges decoder "
            "models with numbered layers)"
        )
    num_layers = int(config["num_hidden_layers"])
    if "dtype" not in raw:  # mergekit merges and writes in the checkpoint's own dtype
        stored = config.get("torch_dtype") or config.get("dtype")
        dtype = stored if stored in DTYPES else "float32"
    resolver = _Resolver(sorted(tensor_shapes(engine_base)), num_layers, source)
    recipe = _recipe(raw, method, entries, tuple(experts), resolver, source)
    return ImportedRecipe(
        recipe=recipe,
        base=engine_base,
        experts=experts,
        dtype=dtype,
        tokenizer_source=raw.get("tokenizer_source"),
        chat_template=raw.get("chat_template"),
        source=source,
    )


def _recipe(
    raw: Mapping[str, Any],
    method: MergeMethod,
    entries: Sequence[tuple[Path, Mapping[str, Any], str]],
    experts: tuple[str, ...],
    resolver: _Resolver,
    source: str,
) -> MergeRecipe:
    by_mergekit = {p.mergekit: p for p in method.params if p.mergekit}
    shared_settings = raw.get("parameters") or {}
    if not isinstance(shared_settings, Mapping):
        raise UserError(f"{source}: parameters: expected a mapping")
    for key in shared_settings:
        if key not in by_mergekit and key not in IGNORED_SETTINGS:
            known = ", ".join(sorted(by_mergekit)) or "none"
            raise UserError(
                f"{source}: parameters.{key}: {method.mergekit} has no such parameter here ({known})"
            )
    for _, params, where in entries:
        for key in params:
            param = by_mergekit.get(key)
            if param is None or param.scope != "expert":
                per_model = ", ".join(p.mergekit or "" for p in method.scoped("expert")) or "none"
                raise UserError(
                    f"{source}: {where}.parameters.{key}: not a per-model parameter of {method.mergekit} "
                    f"(per model: {per_model})"
                )
    heads = {"last", "first"}
    per_layer_expert: dict[str, list[list[Any]]] = {}
    for param in method.scoped("expert"):
        columns = []
        for _, params, where in entries:
            settings = []  # the model's own setting first, then the recipe's global one (mergekit's order)
            if param.mergekit in params:
                settings.append((f"{source}: {where}.parameters.{param.mergekit}", params[param.mergekit]))
            if param.mergekit in shared_settings:
                settings.append((f"{source}: parameters.{param.mergekit}", shared_settings[param.mergekit]))
            values, fits = resolver.per_layer(settings, param)
            heads &= fits
            columns.append([float(v) for v in values])
        per_layer_expert[param.name] = [list(row) for row in zip(*columns)]  # [layer][expert]
    per_layer_group: dict[str, list[Any]] = {}
    shared: dict[str, Any] = {}
    for param in method.scoped("group", "shared"):
        if param.mergekit not in shared_settings:
            if param.scope == "group":
                per_layer_group[param.name] = [param.default] * resolver.num_layers
            continue
        settings = [(f"{source}: parameters.{param.mergekit}", shared_settings[param.mergekit])]
        values, fits = resolver.per_layer(settings, param)
        if param.scope == "group":
            heads &= fits
            per_layer_group[param.name] = [float(v) for v in values]
        elif len(set(map(repr, values))) > 1 or fits != {"last", "first"}:
            raise UserError(f"{source}: parameters.{param.mergekit}: one value for the whole merge here")
        else:
            shared[param.name] = values[0]
    if not heads:
        raise UserError(
            f"{source}: parameters: the final norm and LM head follow the first layer in one parameter and "
            "the last in another; mergesearch places them with one group"
        )
    per_layer = MergeRecipe(
        method=method.name,
        experts=experts,
        groups=layer_groups(resolver.num_layers, "layer"),
        expert_params={p: tuple(tuple(row) for row in v) for p, v in per_layer_expert.items()},
        group_params={p: tuple(v) for p, v in per_layer_group.items()},
        shared=shared,
        head_group="last" if "last" in heads else "first",
    )
    try:  # one group when no value varies with depth: the recipe a global search starts from
        return per_layer.regrouped(layer_groups(resolver.num_layers, "global"))
    except ValueError:
        return per_layer


def fit_to_space(
    imported: ImportedRecipe, space: GenomeSpace, shared: Mapping[str, Any], field: str
) -> MergeRecipe:
    """The imported recipe as a recipe of ``space`` (its experts in pool order, its layer groups), so that
    it encodes to a genome: experts the recipe leaves out at weight 0 (other parameters at their
    defaults), a method or setting that differs from the config's refused in one line."""
    recipe = imported.recipe
    method = get_method(space.method)
    field = f"{field} ({imported.source})"
    if recipe.method != space.method:
        raise UserError(f"{field}: the recipe merges with {recipe.method}, merge.method is {space.method}")
    for param in method.scoped("shared"):  # set or left at mergekit's default, on both sides
        theirs = recipe.shared.get(param.name, param.default)
        if shared.get(param.name, param.default) != theirs:
            raise UserError(
                f"{field}: the recipe's {param.name} is {theirs!r}, merge.params' "
                f"{shared.get(param.name, param.default)!r}; set the same"
            )
    missing = [e for e in space.experts if e not in recipe.experts]
    if missing and "weight" not in {p.name for p in method.scoped("expert")}:
        raise UserError(
            f"{field}: {method.name} merges every expert of the pool; the recipe leaves out {missing[0]}"
        )
    at = {e: i for i, e in enumerate(recipe.experts)}

    def column(param: ParamSpec, values: tuple[float, ...]) -> tuple[float, ...]:
        absent = 0.0 if param.name == "weight" else param.default
        return tuple(values[at[e]] if e in at else absent for e in space.experts)

    widened = recipe.model_copy(
        update={
            "experts": space.experts,
            "expert_params": {
                p: tuple(column(method.param(p), row) for row in v) for p, v in recipe.expert_params.items()
            },
            "shared": dict(shared),
        }
    )
    try:
        fitted = widened.regrouped(space.groups)
    except ValueError as err:
        raise UserError(f"{field}: {err}; merge.granularity: layer takes it as it is") from None
    for g, weights in enumerate(fitted.expert_params.get("weight", ()) if space.normalize_weights else ()):
        if abs(sum(weights) - 1) > 1e-9:
            raise UserError(
                f"{field}: its weights sum to {sum(weights):g} in layer group {g}; merge.weights_sum_to_one "
                "would start elsewhere (unset it, or give weights that sum to 1)"
            )
    return fitted


def materialize_imported(
    imported: ImportedRecipe, out: Path, seed: int | None = None, log: Callable[[str], None] = print
) -> Path:
    """The recipe's merge as a model folder: the resident engine reading each tensor from disk (one
    tensor's worth of memory), the tokenizer and chat template as the recipe's keys say (``tokenizer.py``)."""
    tokenizer = TokenizerChoice.of(
        imported.tokenizer_source or "base",
        imported.chat_template,
        imported.base,
        imported.experts,
        imported.source,
    )
    merger = ResidentMerger(imported.base, imported.experts, dtype=imported.dtype, log=log, pool="disk")
    log(f"merge: {imported.recipe.method} of {', '.join(imported.experts)} into {out}")
    return materialize(merger, imported.recipe, imported.base, out, seed, tokenizer)
