"""A search's set-up, done once at the edge: plug-ins imported, every model reference resolved to a
folder and checked, the genome space built. Actors and promotion receive it; nothing below resolves.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mergesearch.backends.base import only_pickle_weights
from mergesearch.config import DataConfig, MergeSpaceConfig, SearchConfig
from mergesearch.data.eval_split import load_eval_data, load_whole_split
from mergesearch.errors import UserError
from mergesearch.merge.genome import GenomeSpace
from mergesearch.merge.recipe_import import fit_to_space, read_mergekit_recipe
from mergesearch.merge.resident import check_compatible
from mergesearch.merge.tokenizer import TokenizerChoice, engine_folder
from mergesearch.model_files import model_config
from mergesearch.model_refs import resolve_model
from mergesearch.objectives.data import EvalData
from mergesearch.pool_file import with_pool
from mergesearch.registry import SEARCHERS, load_plugins
from mergesearch.runtime import cache_root

Log = Callable[[str], None]


@dataclass(frozen=True)
class SearchSetup:
    """``config`` with every model reference replaced by its folder (what the run dir records)."""

    config: SearchConfig
    space: GenomeSpace

    @property
    def base(self) -> Path:
        return Path(self.config.models.base)

    @property
    def experts(self) -> dict[str, Path]:
        return {e.name: Path(e.path) for e in self.config.models.experts}

    @property
    def tokenizer(self) -> TokenizerChoice:
        """The merged model's tokenizer and chat template (``models.tokenizer_source``, ``chat_template``)."""
        models = self.config.models
        return TokenizerChoice.of(models.tokenizer_source, models.chat_template, self.base, self.experts)

    def engine_model(self) -> Path:
        """The folder the candidate engine starts from: the base, under the chosen tokenizer."""
        return engine_folder(self.base, self.tokenizer, cache_root())

    @classmethod
    def prepare(cls, config: SearchConfig, log: Log = print) -> SearchSetup:
        """Resolve and check before a run dir or an actor exists: a wrong path or a mismatched expert
        is one line, not a search of failed trials."""
        load_plugins(config.plugins)
        models = with_pool(config.models, log)
        base = _merge_input(resolve_model(models.base, "models.base", log), "models.base")
        experts = {
            e.name: _merge_input(
                resolve_model(e.path, f"models.experts.{e.name}", log), f"models.experts.{e.name}"
            )
            for e in models.experts
        }
        check_compatible(base, experts)
        judge = config.judge.model and str(resolve_model(config.judge.model, "judge.model", log))
        resolved = config.model_copy(
            update={
                "models": models.model_copy(
                    update={
                        "base": str(base),
                        "experts": [
                            e.model_copy(update={"path": str(experts[e.name])}) for e in models.experts
                        ],
                    }
                ),
                "judge": config.judge.model_copy(update={"model": judge or None}),
            }
        )
        setup = cls(resolved, genome_space(resolved, model_config(base)["num_hidden_layers"]))
        _ = setup.tokenizer  # a tokenizer source or chat template that cannot be used is named here
        return setup

    def with_merge(self, merge: MergeSpaceConfig, experts: tuple[str, ...] | None = None) -> SearchSetup:
        """The same models and data with another merge space (and, given ``experts``, only those)."""
        models = self.config.models
        if experts is not None:
            models = models.model_copy(update={"experts": [e for e in models.experts if e.name in experts]})
        config = self.config.model_copy(update={"merge": merge, "models": models})
        return dataclasses.replace(self, config=config, space=genome_space(config, self.space.num_layers))

    def with_data(self, data: DataConfig) -> SearchSetup:
        return dataclasses.replace(self, config=self.config.model_copy(update={"data": data}))

    def eval_data(self) -> EvalData:
        """The split the fitness scores on, checked: a missing dataset, or a weighted objective without
        rows (safety weighted, no harmful prompts), is one line before a search starts, not failed trials."""
        data = self.config.data
        if not data.path:
            raise UserError(
                f"{self.config.name}: data.path is not set (make one: `mergesearch data generate`)"
            )
        loaded = load_eval_data(data.path, data.split, data.max_alignment_prompts, data.max_task_prompts)
        loaded.require([name for name, weight in self.config.fitness.weights.items() if weight])
        search = self.config.search
        if SEARCHERS.get(search.name).multi_objective:
            loaded.require(search.objectives, "search.objectives: {name}", "leave it out")
        return loaded

    def validation_data(self, asked_by: str = "promotion.validate_top") -> EvalData:
        """The whole search split, which ``asked_by`` (a ``validate_top`` setting) scores the best trials
        on again; one line naming it when the split holds no row past the fitness's."""
        data = self.config.data
        return load_whole_split(
            data.path, data.split, data.max_alignment_prompts, data.max_task_prompts, asked_by
        )

    def activate(self) -> None:
        """In a fresh process (a Ray worker): import the config's plug-ins before using the space."""
        load_plugins(self.config.plugins)


def genome_space(config: SearchConfig, num_layers: int) -> GenomeSpace:
    """The genome the config's merge space and experts define; around a mergekit recipe's merge when
    ``merge.from_recipe`` names one (``merge/recipe_import.py``)."""
    merge = config.merge
    make = functools.partial(
        GenomeSpace,
        merge.method,
        [e.name for e in config.models.experts],
        num_layers,
        merge.granularity,
        merge.group_size,
        bounds={name: (b.low, b.high) for name, b in merge.bounds.items()},
        shared=merge.params,
        normalize_weights=merge.weights_sum_to_one,
        gates=merge.gates,
        choices=merge.choices,
    )
    if merge.from_recipe is None:
        return make()
    pool = {e.name: Path(e.path) for e in config.models.experts}
    imported = read_mergekit_recipe(merge.from_recipe, pool, Path(config.models.base))
    recipe = fit_to_space(imported, make(), merge.params, "merge.from_recipe")
    start = make(head_group=recipe.head_group).encode(recipe)
    try:
        return make(head_group=recipe.head_group, centre=start, radius=merge.recipe_radius)
    except UserError as err:
        raise UserError(f"merge.from_recipe ({merge.from_recipe}): {err}") from None


def _merge_input(folder: Path, field: str) -> Path:
    """The merge pool reads safetensors only (memory-mapped, no code runs): pickle weights are named."""
    if only_pickle_weights(folder):
        raise UserError(
            f"{field}: {folder} has only pickle weights (.bin); the merge pool reads safetensors: convert it "
            "(`model.save_pretrained(dir, safe_serialization=True)`)"
        )
    return folder
