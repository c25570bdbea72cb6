"""Importers for public prompt sets: plain text, JSONL, CSV and PyRIT seed YAML, into a prompt set.

* ``.txt``: one prompt per line (blank lines skipped);
* ``.jsonl``: one object per line with a ``prompt`` field (or ``--field``);
* ``.csv``: a ``goal`` (AdvBench) or ``prompt`` column (or ``--field``);
* ``.parquet``: a ``prompt`` column (or ``--field``);
* ``.prompt``: a PyRIT seed dataset (YAML, a ``seeds`` list of ``value`` + ``harm_categories``), the
  format AdvBench ships in inside the ``pyrit`` wheel (``mergesearch.datagen.public``).

Task questions (``--type task``) keep their options and key: a ``choices`` field (a list; in a CSV a JSON
list, or columns ``A``, ``B``, ... as MMLU's files have them) and an ``answer`` field (the option's text,
its letter or its index), so an imported question is scored as a generated one is.

Categories: one ``category`` for every row, or ``category_column`` with an optional ``category_map``
from the file's labels to categories. A column holding a list of labels needs the map: its entries are
tried in order and the first label the row carries wins; a ``"*"`` entry takes rows whose labels the
map does not name.
An alignment category is a harm category of the taxonomy, named or given as a Llama Guard 3 code
(``S7``), which stands for the category whose primary code it is (``mergesearch.taxonomy.harm_category``
has the rule); rows always carry the category's name.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from mergesearch.data.dataset import drop_duplicates
from mergesearch.data.schema import TYPES, Row
from mergesearch.datagen.generators import provenance
from mergesearch.errors import UserError
from mergesearch.taxonomy import harm_category

CSV_COLUMNS = ("goal", "prompt")


def _check_text(path: Path) -> None:
    """Prompt files are UTF-8 text: another encoding, or binary bytes (a NUL), is named, not imported."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path}: not UTF-8 text (byte {err.start}: {err.reason}; re-save it as UTF-8)"
        ) from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise UserError(f"{path}: binary data (a NUL byte at offset {nul}), not a text prompt file")


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


def _records_parquet(path: Path, field: str | None) -> list[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise UserError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
    return list(enumerate(table.to_pylist(), 1))


def _records_seed_yaml(path: Path, field: str | None) -> list[tuple[int, dict]]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    seeds = document.get("seeds") if isinstance(document, dict) else None
    if not isinstance(seeds, list):
        raise UserError(f"{path}: not a PyRIT seed dataset (no `seeds` list)")
    for n, seed in enumerate(seeds, 1):
        if not isinstance(seed, dict):
            raise UserError(f"{path}: seed {n}: expected a mapping, got {type(seed).__name__}")
    return list(enumerate(seeds, 1))


READERS: dict[str, Callable[[Path, str | None], list[tuple[int, dict]]]] = {
    ".txt": _records_txt,
    ".jsonl": _records_jsonl,
    ".csv": _records_csv,
    ".parquet": _records_parquet,
    ".prompt": _records_seed_yaml,
}
TEXT_FILES = (".txt", ".jsonl", ".csv", ".prompt")
DEFAULT_FIELDS = {".csv": CSV_COLUMNS, ".prompt": ("value",)}
ANY_LABEL = "*"  # the category map's entry for rows that carry none of its labels


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
    wanted = DEFAULT_FIELDS.get(path.suffix, ("prompt",))
    found = next((c for c in wanted if c in present), None)
    if found is None:
        raise UserError(
            f"{path}: no {' or '.join(repr(c) for c in wanted)} column/field "
            f"(found: {', '.join(sorted(present)) or 'none'}; pick one with --field)"
        )
    return found


LETTERS = "ABCDEFGHIJ"


def _question(record: dict, where: str) -> tuple[tuple[str, ...] | None, str | None]:
    """A task question's options and key: ``choices`` (a list, a JSON list, or columns ``A``, ``B``, ...)
    and ``answer`` (the option's text, its letter or its 0-based index); a key that names no option is one
    line. No options: a short-answer question, its ``answer`` as given."""
    choices = record.get("choices")
    if isinstance(choices, str) and choices.strip().startswith("["):
        try:
            choices = json.loads(choices)
        except json.JSONDecodeError:
            raise UserError(f"{where}: choices: not a JSON list") from None
    if choices is None and "A" in record and "B" in record:
        choices = [record[c] for c in LETTERS if record.get(c) not in (None, "")]
    answer = record.get("answer")
    if choices is None:
        return None, None if answer in (None, "") else str(answer).strip()
    if not isinstance(choices, list) or len(choices) < 2:
        raise UserError(f"{where}: choices: expected a list of at least two options")
    options = tuple(str(c).strip() for c in choices)
    key = str(answer).strip() if answer is not None else ""
    if key in options:
        return options, key
    if key.isdigit() and int(key) < len(options):
        return options, options[int(key)]
    if len(key) == 1 and key.upper() in LETTERS[: len(options)]:
        return options, options[LETTERS.index(key.upper())]
    raise UserError(
        f"{where}: answer {answer!r} names none of the {len(options)} choices (text, letter or index)"
    )


def read_category_map(path: Path) -> dict[str, str]:
    """A YAML/JSON mapping of file labels to categories, in the file's order (its priority)."""
    from mergesearch.config import read_yaml

    mapping = read_yaml(path) or {}
    if not isinstance(mapping, dict):
        raise UserError(f"{path}: expected a mapping of file labels to categories")
    return {str(k): str(v) for k, v in mapping.items()}


def _label(value: object, category_map: Mapping[str, str] | None) -> str:
    """A row's label: the value itself, or for a list of labels the first the map lists (else ``*``)."""
    if not isinstance(value, list):
        label = str(value)
        return (
            ANY_LABEL if category_map and label not in category_map and ANY_LABEL in category_map else label
        )
    if not category_map:
        raise UserError(f"the category column holds lists of labels ({value[:3]}...): give --category-map")
    labels = {str(v) for v in value}
    first = next((key for key in category_map if key in labels), None)
    if first is None and ANY_LABEL in category_map:
        return ANY_LABEL
    return first if first is not None else ", ".join(sorted(labels))


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
        raise UserError(f"{path}: unsupported file type {path.suffix or '(none)'} (use {', '.join(READERS)})")
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
    if path.suffix in TEXT_FILES:
        _check_text(path)
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
        label = category if category else _label(record.get(category_column, ""), category_map)
        name = category_map.get(label, label) if category_map else label
        if category_map is not None and label not in category_map:
            raise UserError(f"{path}:{line}: category {label!r} is not in --category-map")
        if type_ == "alignment":
            try:
                name = harm_category(name).name
            except UserError as err:
                raise UserError(f"{path}:{line}: {err}") from None
        choices, answer = _question(record, f"{path}:{line}") if type_ == "task" else (None, None)
        rows.append(
            Row(
                prompt=prompt.strip(),
                type=type_,
                category=name,
                source=path.name,
                choices=choices,
                answer=answer,
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
