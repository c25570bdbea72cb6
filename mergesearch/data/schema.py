"""The dataset schema: one Parquet row per prompt, the same columns at every stage.

A *prompt set* (what generators and importers write) has ``response`` and ``split`` empty; a *dataset*
(what answering writes) has both. Objectives read datasets; ``mergesearch data stats`` checks them.

| column     | type          | meaning                                                                  |
|------------|---------------|--------------------------------------------------------------------------|
| id         | string        | content hash of type, category and normalised prompt (stable, unique)    |
| prompt     | string        | the user turn                                                            |
| response   | string | null | the kept answer: a refusal (alignment), the expert's answer (task, benign) |
| type       | string        | ``alignment`` (harmful request), ``task`` (domain question), ``benign``   |
|            |               | (harmless request, for over-refusal)                                     |
| category   | string        | a harm category of the taxonomy (alignment), a domain name (task), ``benign`` |
| source     | string        | the generator or imported file the prompt came from                      |
| choices    | list<string> | null | the options of a multiple-choice question                          |
| answer     | string | null   | the correct option text (multiple choice) or the short answer            |
| split      | string | null   | ``search`` or ``heldout``                                                |
| provenance | string        | JSON: generator, seed, answering expert, judge and its verdicts          |
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mergesearch.errors import UserError

SCHEMA_VERSION = 1
TYPES = ("alignment", "task", "benign")
SPLITS = ("search", "heldout")
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("response", pa.string()),
        ("type", pa.string()),
        ("category", pa.string()),
        ("source", pa.string()),
        ("choices", pa.list_(pa.string())),
        ("answer", pa.string()),
        ("split", pa.string()),
        ("provenance", pa.string()),
    ]
)
ROWS_FILE = "rows.parquet"
CARD_FILE = "card.json"


def normalize_prompt(text: str) -> str:
    """Case, spacing and trailing punctuation folded: what counts as the *same* prompt."""
    return re.sub(r"\s+", " ", text.lower()).strip().rstrip(" .?!")


def row_id(type_: str, category: str, prompt: str) -> str:
    return hashlib.sha256(f"{type_}\x1f{category}\x1f{normalize_prompt(prompt)}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Row:
    """One prompt, and once answered, its kept response and split."""

    prompt: str
    type: str
    category: str
    source: str
    choices: tuple[str, ...] | None = None
    answer: str | None = None
    response: str | None = None
    split: str | None = None
    provenance: str = "{}"
    id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", row_id(self.type, self.category, self.prompt))

    def with_(self, **changes: Any) -> Row:
        return replace(self, **changes)


def to_table(rows: Iterable[Row]) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in SCHEMA.names}
    for row in rows:
        values = asdict(row)
        for name in SCHEMA.names:
            value = values[name]
            columns[name].append(list(value) if name == "choices" and value is not None else value)
    return pa.table(columns, schema=SCHEMA)


def from_table(table: pa.Table) -> list[Row]:
    return [
        Row(**{**record, "choices": tuple(record["choices"]) if record["choices"] is not None else None})
        for record in table.to_pylist()
    ]


def read_rows(path: str | Path) -> list[Row]:
    """Rows of a prompt set or dataset folder (or a Parquet file); wrong columns are named."""
    path = Path(path)
    file = path / ROWS_FILE if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{path}: no {ROWS_FILE} here (not a mergesearch prompt set or dataset)")
    try:
        table = pq.read_table(file)
    except (pa.ArrowInvalid, OSError) as err:
        raise UserError(f"{file}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
    missing = [name for name in SCHEMA.names if name not in table.column_names]
    if missing:
        raise UserError(f"{file}: missing column {missing[0]!r} (a dataset needs: {', '.join(SCHEMA.names)})")
    for name in ("prompt", "type", "category"):
        nulls = table.column(name).null_count
        if nulls:
            raise UserError(f"{file}: column {name!r} has {nulls} empty (null) values")
    return from_table(table.select(SCHEMA.names).cast(SCHEMA))
