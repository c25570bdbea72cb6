"""A reproduction protocol's config: which search config it starts from, the seeds, the budgets."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from mergesearch.config import Bounds, Frozen, MergeSpaceConfig, Params
from mergesearch.registry import MERGE_METHODS

# The searched ranges when a protocol names none: weights up to 1.5 (a task vector may need more than its
# own size to survive a merge), densities from 0.1; each applies where the method searches that parameter.
DEFAULT_BOUNDS = {"weight": Bounds(low=0.0, high=1.5), "density": Bounds(low=0.1, high=1.0)}
VARIANT_NAME = re.compile(r"[A-Za-z0-9_]+")  # part of a row's name, of its cells' files and run dirs


class SearchRows(Frozen):
    """The evolutionary rows: one Tune search per (row, seed) over ``method``'s genome, with the
    method's shared settings ``params`` (TIES's ``normalize``, say) fixed for the search and the held-out
    merge alike."""

    method: str = "ties"
    granularity: Literal["global", "groups", "layer"] = "global"
    group_size: int = Field(default=1, ge=1)
    searcher: str = "cma"
    trials: int = Field(default=30, ge=1)
    bounds: dict[str, Bounds] | None = None  # None: DEFAULT_BOUNDS for the parameters the method searches
    params: Params = {}
    loss_alpha: float = 0.3  # the paper's α on the task loss
    # 0: each proposal follows the last result, so a seed's search takes the same path on every run (a
    # reproduction table reproduces); 1 keeps the evaluator busy while the searcher turns around, and the
    # order results reach it then depends on timing.
    queued_per_evaluator: int = Field(default=0, ge=0)
    # The best this many trials by search fitness are scored again on the whole search split and the best
    # there is the row's merge (as ``promotion.validate_top``); 0: the best by search fitness.
    validate_top: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _a_valid_space(self) -> SearchRows:
        self.space()  # an unknown method, bound or setting is named when the protocol loads
        return self

    def space(self) -> MergeSpaceConfig:
        """The merge space every search row explores."""
        fields = self.model_dump(include={"method", "granularity", "group_size", "params"})
        bounds = self.bounds
        if bounds is None:
            MergeSpaceConfig(**fields)  # an unknown method is named here, before the registry is asked
            searched = {p.name for p in MERGE_METHODS.get(self.method).scoped("expert", "group")}
            bounds = {name: b for name, b in DEFAULT_BOUNDS.items() if name in searched}
        return MergeSpaceConfig(**fields, bounds=bounds)


class GridRows(Frozen):
    """The grid-searched baselines: every combination scored on the search split, the best kept."""

    weights: list[float] = [0.25, 0.5, 1.0]  # per expert, TIES and DARE-TIES
    densities: list[float] = [0.5]
    slerp_t: list[float] = [0.1, 0.3, 0.5, 0.7, 0.9]


class CocktailRows(Frozen):
    """LM-Cocktail at T = 1 (as MergeAlign used it) and T = 5, with and without alignment examples."""

    examples: int = Field(default=8, ge=1)  # per data type, drawn by seed


class ProtocolConfig(Frozen):
    name: str
    search_config: str  # a search config: models, data, judge, fitness weights, engine settings
    aligned: str  # the aligned expert
    misaligned: str  # the misaligned task expert: SLERP's other end
    seeds: list[int] = Field(default=[0, 1, 2], min_length=1)
    search: SearchRows = SearchRows()
    # More alignment-aware searches over other spaces (a second lever at the full budget): each name adds
    # the row ``search_task_alignment:NAME``, searched with the alignment-aware fitness over its space.
    alignment_search_variants: dict[str, SearchRows] = {}
    grid: GridRows = GridRows()
    cocktail: CocktailRows = CocktailRows()
    heldout_max_prompts: int | None = None  # cap on held-out harmful/benign prompts and task items
    rows: list[str] | None = None  # a subset of the rows (None: all)

    # each searched cell's merge rebuilt by mergekit-yaml from its recipe and scored again (a check that
    # the table's searched rows are what their recipes build; a mergekit run and a held-out score each)
    rebuild_searched: bool = False

    def searches(self) -> dict[str, SearchRows]:
        """Each search space by the section that holds it: ``search``, ``alignment_search_variants.NAME``."""
        variants = self.alignment_search_variants.items()
        return {"search": self.search, **{f"alignment_search_variants.{k}": v for k, v in variants}}

    @model_validator(mode="after")
    def _two_ends(self) -> ProtocolConfig:
        if self.aligned == self.misaligned:
            raise ValueError("aligned and misaligned must name two different experts")
        bad = [name for name in self.alignment_search_variants if not VARIANT_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"alignment_search_variants: {bad[0]!r}: use letters, digits and _ (a row name)")
        return self
