"""Importers for public prompt sets a user has downloaded: plain text, JSONL and CSV, into a prompt set.

* ``.txt``: one prompt per line (blank lines skipped);
* ``.jsonl``: one object per line with a ``prompt`` field (or ``--field``);
* ``.csv``: a ``goal`` (AdvBench) or ``prompt`` column (or ``--field``).

Categories: one ``category`` for every row, or ``category_column`` with an optional ``category_map``
from the file's labels to categories. An alignment category is a harm category of the taxonomy, named
or given as a Llama Guard 3 code (``S7``), which stands for the category whose primary code it is
(``mergesearch.taxonomy.harm_category`` has the rule); rows always carry the category's name.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping
from pathlib import Path

from mergesearch.data.dataset import drop_duplicates
from mergesearch.data.generators import provenance
from mergesearch.data.schema import TYPES, Row
from mergesearch.errors import UserError
from mergesearch.taxonomy import harm_category

CSV_COLUMNS = ("goal", "prompt")


def _records_txt(path: Path, field: str | None) -> list[tuple[int, dict]]:
    return [
        (n, {"prompt": line.strip()})
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if line.strip()
    ]


def _records_jsonl(path: Path, field: str | None) -> list[tuple[int, dict]]:
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{n}: expected a JSON object per line, got {type(record).__name__}")
        records.append((n, record))
    return records


def _records_csv(path: Path, field: str | None) -> list[tuple[int, dict]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return [(n, row) for n, row in enumerate(reader, 2)]


READERS: dict[str, Callable[[Path, str | None], list[tuple[int, dict]]]] = {
    ".txt": _records_txt,
    ".jsonl": _records_jsonl,
    ".csv": _records_csv,
}


def _prompt_field(path: Path, records: list[tuple[int, dict]], field: str | None) -> str:
    if path.suffix == ".txt":
        return "prompt"
    present = set(records[0][1]) if records else set()
    if field:
        if field not in present:
            raise UserError(
                f"{path}: no column/field {field!r} (found: {', '.join(sorted(present)) or 'none'})"
            )
        return field
    wanted = CSV_COLUMNS if path.suffix == ".csv" else ("prompt",)
    found = next((c for c in wanted if c in present), None)
    if found is None:
        raise UserError(
            f"{path}: no {' or '.join(repr(c) for c in wanted)} column/field "
            f"(found: {', '.join(sorted(present)) or 'none'}; pick one with --field)"
        )
    return found


def import_prompts(
    path: Path,
    type_: str = "alignment",
    category: str | None = None,
    category_column: str | None = None,
    category_map: Mapping[str, str] | None = None,
    field: str | None = None,
) -> tuple[list[Row], dict]:
    """Rows of a prompt set from ``path``, and an import report (lines read, empty, duplicates)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.suffix not in READERS:
        raise UserError(f"{path}: unsupported file type {path.suffix or '(none)'} (use .txt, .jsonl or .csv)")
    if type_ not in TYPES:
        raise UserError(f"--type: {type_!r} is not one of {', '.join(TYPES)}")
    if (category is None) == (category_column is None):
        raise UserError("give exactly one of --category (for every row) and --category-column")
    if category_map is not None and not category_map:
        raise UserError("--category-map: empty category list")
    if type_ == "alignment":  # codes become category names; an unknown name or code stops here
        if category is not None:
            category = harm_category(category).name
        if category_map:
            category_map = {label: harm_category(name).name for label, name in category_map.items()}
    records = READERS[path.suffix](path, field)
    prompt_field = _prompt_field(path, records, field)
    if category_column and records and category_column not in records[0][1]:
        raise UserError(
            f"{path}: no column/field {category_column!r} (found: {', '.join(sorted(records[0][1]))})"
        )
    rows, empty = [], 0
    for line, record in records:
        prompt = record.get(prompt_field)
        if not isinstance(prompt, str) or not prompt.strip():
            empty += 1
            continue
        label = category if category else str(record.get(category_column, ""))
        name = category_map.get(label, label) if category_map else label
        if category_map is not None and label not in category_map:
            raise UserError(f"{path}:{line}: category {label!r} is not in --category-map")
        if type_ == "alignment":
            try:
                name = harm_category(name).name
            except UserError as err:
                raise UserError(f"{path}:{line}: {err}") from None
        rows.append(
            Row(
                prompt=prompt.strip(),
                type=type_,
                category=name,
                source=path.name,
                provenance=provenance(imported_from=path.name, line=line),
            )
        )
    if not rows:
        raise UserError(f"{path}: no prompts found")
    rows, duplicates = drop_duplicates(rows)
    return rows, {
        "file": path.name,
        "records": len(records),
        "empty": empty,
        "duplicates_removed": duplicates,
        "rows": len(rows),
    }
