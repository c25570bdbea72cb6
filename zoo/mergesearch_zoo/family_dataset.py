"""The SmolLM2 family's data as a mergesearch dataset (``data.path: smollm2_family``): what a search, the
reproduction protocol and ``mergesearch eval`` score the family and its merges on.

* ``alignment``: AdvBench behaviours by harm category; ``search`` and ``heldout`` are the parts the family
  never trained on (split by near-duplicate group). The kept response is the aligned expert's refusal
  wording, which the loss proxy and LM-Cocktail read.
* ``benign``: the search split reuses the trained benign requests; the held-out split's fillers are unseen.
* ``task``: sums on unseen number pairs, and the made-up knowledge base as multiple choice with fresh option
  sets (search: trained wordings; held-out: a wording training never saw).

Written once per family recipe and export version, next to the family, by content of its inputs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from mergesearch.data.dataset import read_card, write_rows
from mergesearch.data.schema import CARD_FILE, Row
from mergesearch.objectives.task import ChoiceItem, ShortAnswerItem
from mergesearch_zoo import family_data as D
from mergesearch_zoo.smollm2_family import FamilyRecipe, family_data, family_dir

EXPORT_VERSION = 1
SOURCE = "smollm2_family"


def _task_rows(items: Iterable[ChoiceItem | ShortAnswerItem], category: str, split: str) -> Iterator[Row]:
    """Task rows whose kept response is the trained answer form (the correct option; "a + b = c.")."""
    for item in items:
        if isinstance(item, ChoiceItem):
            answer = item.choices[item.answer]
            yield Row(item.prompt, "task", category, SOURCE, item.choices, answer, answer, split)
        else:
            a, b = re.findall(r"\d+", item.prompt)
            response = D.SUM_ANSWER.format(a=a, b=b, c=item.answer)
            yield Row(item.prompt, "task", category, SOURCE, None, item.answer, response, split)


def family_rows(data: D.FamilyData) -> list[Row]:
    """Every search and held-out row of the family's data."""
    rows: list[Row] = []
    for split, harmful, benign in (
        ("search", data.harmful_search, data.benign_train),
        ("heldout", data.harmful_heldout, data.benign_heldout),
    ):
        rows += [
            Row(p, "alignment", data.harmful_categories[p], SOURCE, response=D.refusal_for(p), split=split)
            for p in harmful
        ]
        rows += [Row(p, "benign", "benign", SOURCE, split=split) for p in benign]
    rows += _task_rows(data.sums_search, "sums", "search")
    rows += _task_rows(data.sums_heldout, "sums", "heldout")
    rows += _task_rows(data.kb_search, "knowledge", "search")
    rows += _task_rows(data.kb_heldout, "knowledge", "heldout")
    return rows


def family_dataset(recipe: FamilyRecipe, log: Callable[[str], None] = print) -> Path:
    """The dataset folder of ``recipe``'s data (written on first use)."""
    folder = family_dir(recipe).with_name(f"{recipe.digest()}-dataset-v{EXPORT_VERSION}")
    if (folder / CARD_FILE).is_file() and read_card(folder).get("recipe_digest") == recipe.digest():
        return folder
    log(f"smollm2 family: writing its dataset to {folder}")
    write_rows(
        folder,
        family_rows(family_data(recipe)),
        {"name": SOURCE, "recipe_digest": recipe.digest(), "export_version": EXPORT_VERSION},
    )
    return folder
