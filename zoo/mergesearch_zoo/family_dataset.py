"""The SmolLM2 family's data as a mergesearch dataset (``data.path: smollm2_family``): what a search, the
reproduction protocol and ``mergesearch eval`` score the family and its merges on.

* ``alignment``: AdvBench behaviours by harm category; ``search`` and ``heldout`` are the parts the family
  never trained on (split by near-duplicate group). The held-out split adds prompts of other sources and
  styles that nothing here trains on (``OTHER_HARMFUL``: HarmBench's instructions, Do-Not-Answer's
  questions), so that it can tell a few points of safety apart and does not sit as close to training as
  AdvBench's rewordings do. The kept response is the aligned expert's refusal wording, which the loss
  proxy and LM-Cocktail read.
* ``benign``: the search split reuses the trained benign requests; the held-out split is risky-sounding
  benign requests in wordings no training template uses (``family_data.RISKY_BENIGN_UNSEEN``).
* ``task``: sums on unseen number pairs, and the made-up knowledge base as multiple choice with fresh option
  sets (search: trained wordings; held-out: a wording training never saw).

Written once per family recipe and export version, next to the family, by content of its inputs.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from mergesearch.data.dataset import read_card, write_rows
from mergesearch.data.schema import CARD_FILE, Row
from mergesearch.objectives.task import ChoiceItem, ShortAnswerItem
from mergesearch_zoo import family_data as D
from mergesearch_zoo.smollm2_family import FamilyRecipe, family_data, family_dir

EXPORT_VERSION = 2  # 2: the held-out split's other harmful sources and unseen benign wordings
SOURCE = "smollm2_family"
# Held-out harmful prompts from public sets of another source and style: this many from each, drawn by the
# family's seed (150+ held-out harmful prompts in all, with AdvBench's held-out part).
OTHER_HARMFUL = {"harmbench": 50, "donotanswer": 50}


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


def other_harmful(seed: int) -> list[Row]:
    """``OTHER_HARMFUL``'s prompts, drawn by ``seed``, each row naming its public set as its source."""
    from mergesearch.datagen.public import public_set

    rng = random.Random(seed)
    rows = []
    for name, count in OTHER_HARMFUL.items():
        drawn, _ = public_set(name).load()
        rows += [dataclasses.replace(r, source=name) for r in rng.sample(drawn, count)]
    return rows


def family_rows(data: D.FamilyData, other: list[Row]) -> list[Row]:
    """Every search and held-out row of the family's data; ``other``: more held-out harmful prompts."""
    rows: list[Row] = []
    for split, harmful, benign in (
        ("search", data.harmful_search, data.benign_train),
        ("heldout", data.harmful_heldout, D.RISKY_BENIGN_UNSEEN),
    ):
        rows += [
            Row(p, "alignment", data.harmful_categories[p], SOURCE, response=D.refusal_for(p), split=split)
            for p in harmful
        ]
        rows += [Row(p, "benign", "benign", SOURCE, split=split) for p in benign]
    rows += [
        Row(r.prompt, "alignment", r.category, r.source, response=D.refusal_for(r.prompt), split="heldout")
        for r in other
    ]
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
        family_rows(family_data(recipe), other_harmful(recipe.seed)),
        {"name": SOURCE, "recipe_digest": recipe.digest(), "export_version": EXPORT_VERSION},
    )
    return folder
