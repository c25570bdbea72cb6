"""Prompt sets and datasets on disk: de-duplication, deterministic splits, the dataset card, stats.

A folder holds ``rows.parquet`` and ``card.json`` and appears atomically. The card records what was
asked for, what was produced, every row dropped and why, and the hash of the config that made it;
``stats`` recomputes the counts from the rows and checks them against the card.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mergesearch.data.near_dup import near_duplicate_groups
from mergesearch.data.schema import (
    CARD_FILE,
    ROWS_FILE,
    SCHEMA_VERSION,
    SPLITS,
    Row,
    normalize_prompt,
    read_rows,
    to_table,
)
from mergesearch.errors import UserError
from mergesearch.io import atomic_dir

UNSPLIT = "unsplit"


def drop_duplicates(rows: Iterable[Row]) -> tuple[list[Row], int]:
    """The first row of each normalised prompt (across types and categories), and how many were removed."""
    seen: set[str] = set()
    kept, removed = [], 0
    for row in rows:
        key = normalize_prompt(row.prompt)
        if key in seen:
            removed += 1
        else:
            seen.add(key)
            kept.append(row)
    return kept, removed


def split_by_group(
    prompts: Sequence[str], shares: Mapping[str, float], threshold: float, seed: int
) -> tuple[list[str], int]:
    """A part name per prompt, drawn per near-duplicate group (so a group never straddles two parts) from
    ``shares`` (in order, summing to 1) by a hash of the group's smallest prompt: independent of order and
    of where the prompts were made. Returns the names and the number of groups with more than one member."""
    labels = near_duplicate_groups(list(prompts), threshold)
    members: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        members.setdefault(label, []).append(i)
    bounds = list(itertools.accumulate(shares.values()))
    part_of: dict[int, str] = {}
    for label, indices in members.items():
        anchor = min(normalize_prompt(prompts[i]) for i in indices)
        draw = int(hashlib.sha256(f"{seed}|{anchor}".encode()).hexdigest()[:15], 16) / 16**15
        part_of[label] = next((name for name, b in zip(shares, bounds) if draw < b), list(shares)[-1])
    return [part_of[label] for label in labels], sum(len(v) > 1 for v in members.values())


def assign_splits(
    rows: Sequence[Row], heldout_share: float, threshold: float, seed: int
) -> tuple[list[Row], int]:
    """Each row in ``search`` or ``heldout``, decided per near-duplicate group (``split_by_group``)."""
    parts, groups = split_by_group(
        [r.prompt for r in rows], {"heldout": heldout_share, "search": 1 - heldout_share}, threshold, seed
    )
    return [row.with_(split=part) for row, part in zip(rows, parts)], groups


def count_rows(rows: Iterable[Row]) -> dict[str, dict[str, dict[str, int]]]:
    """Rows per type, category and split (``unsplit`` for prompt sets)."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for row in rows:
        split = row.split or UNSPLIT
        by_split = counts.setdefault(row.type, {}).setdefault(row.category, {})
        by_split[split] = by_split.get(split, 0) + 1
    return {
        t: {c: dict(sorted(s.items())) for c, s in sorted(cats.items())} for t, cats in sorted(counts.items())
    }


def write_rows(out: Path, rows: Sequence[Row], card: dict[str, Any]) -> dict[str, Any]:
    """Write rows and their card atomically; the card gains the counts and the rows' content hash."""
    rows = sorted(rows, key=lambda r: r.id)
    ids = [r.id for r in rows]
    if len(set(ids)) != len(ids):
        raise UserError(f"{out}: duplicate row ids (the same prompt twice in one type and category)")
    card = {"schema_version": SCHEMA_VERSION, **card, "rows": len(rows), "counts": count_rows(rows)}
    with atomic_dir(Path(out)) as tmp:
        pq.write_table(to_table(rows), tmp / ROWS_FILE)
        card["rows_sha256"] = hashlib.sha256((tmp / ROWS_FILE).read_bytes()).hexdigest()
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return card


def read_card(path: Path) -> dict[str, Any]:
    file = Path(path) / CARD_FILE
    if not file.is_file():
        raise UserError(f"{path}: no {CARD_FILE} here (not a mergesearch prompt set or dataset)")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{file}: not valid JSON ({err.msg} at line {err.lineno})") from None


def stats(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Counts recomputed from the rows, and every way they disagree with the card (empty: consistent)."""
    path = Path(path)
    card, rows = read_card(path), read_rows(path)
    counts = count_rows(rows)
    problems = []
    if card.get("rows") != len(rows):
        problems.append(f"card says {card.get('rows')} rows, {ROWS_FILE} has {len(rows)}")
    if card.get("counts") != counts:
        problems.append("per-type/category/split counts differ from the card")
    if (
        card.get("rows_sha256")
        and hashlib.sha256((path / ROWS_FILE).read_bytes()).hexdigest() != card["rows_sha256"]
    ):
        problems.append(f"{ROWS_FILE} changed since the card was written")
    if len({normalize_prompt(r.prompt) for r in rows}) != len(rows):
        problems.append("duplicate prompts")
    splits = {split: {normalize_prompt(r.prompt) for r in rows if r.split == split} for split in SPLITS}
    if splits["search"] & splits["heldout"]:
        problems.append("a prompt is in both splits")
    return {"rows": len(rows), "counts": counts}, problems


def format_counts(counts: dict[str, dict[str, dict[str, int]]]) -> str:
    """A plain table: type, category, then one column per split."""
    splits = sorted(
        {s for cats in counts.values() for by in cats.values() for s in by},
        key=lambda s: (s not in SPLITS, s),
    )
    header = ["type", "category", *splits, "total"]
    lines = [header]
    for type_, cats in counts.items():
        for category, by_split in cats.items():
            lines.append(
                [type_, category, *(str(by_split.get(s, 0)) for s in splits), str(sum(by_split.values()))]
            )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)
