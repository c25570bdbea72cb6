"""A reproduction protocol's config: which search config it starts from, the seeds, the budgets."""

from __future__ import annotations

from pydantic import Field, model_validator

from mergesearch.config import Bounds, Frozen


class SearchRows(Frozen):
    """The evolutionary rows: one Tune search per (row, seed) over ``method``'s genome."""

    method: str = "ties"
    granularity: str = "global"
    searcher: str = "cma"
    trials: int = Field(default=30, ge=1)
    bounds: dict[str, Bounds] = {"weight": Bounds(low=0.0, high=1.5), "density": Bounds(low=0.1, high=1.0)}
    loss_alpha: float = 0.3  # the paper's α on the task loss


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
    grid: GridRows = GridRows()
    cocktail: CocktailRows = CocktailRows()
    heldout_max_prompts: int | None = None  # cap on held-out harmful/benign prompts and task items
    rows: list[str] | None = None  # a subset of the rows (None: all)

    @model_validator(mode="after")
    def _two_ends(self) -> ProtocolConfig:
        if self.aligned == self.misaligned:
            raise ValueError("aligned and misaligned must name two different experts")
        return self
