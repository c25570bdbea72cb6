"""Near-duplicate grouping: prompts whose word bigrams overlap by at least a Jaccard threshold share a group.

Up to ``EXACT_UP_TO`` prompts every pair is compared (exact at any threshold: LSH would find a pair at
0.5 Jaccard only 64% of the time). Beyond, candidate pairs come from MinHash locality-sensitive hashing
(64 hashes in 16 bands of 4: pairs at 0.7 Jaccard collide 98% of the time), then each candidate's exact
Jaccard is checked. Groups are the connected components (union-find). Used to keep near-duplicates on
one side of a split.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Sequence

import numpy as np

from mergesearch.data.schema import normalize_prompt

NUM_HASHES, BANDS = 64, 16
EXACT_UP_TO = 1500  # prompts: ~1.1M pairs, about a second
GROUPING_VERSION = 2  # bump when the groups (and so the splits) a set of prompts gets can change
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def shingles(text: str) -> frozenset[str]:
    words = ["^", *normalize_prompt(text).split(), "$"]
    return frozenset(f"{a} {b}" for a, b in zip(words, words[1:]))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _hash64(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")


def _signature(tokens: frozenset[str], mult: np.ndarray, add: np.ndarray) -> np.ndarray:
    values = np.fromiter((_hash64(t) for t in tokens), dtype=np.uint64, count=len(tokens))
    with np.errstate(over="ignore"):  # multiply-add modulo 2^64: a universal hash family
        mixed = (values[None, :] * mult[:, None] + add[:, None]) & _MASK
    return mixed.min(axis=1)


def near_duplicate_groups(texts: Sequence[str], threshold: float) -> list[int]:
    """A group label per text (the index of the group's first member); singletons label themselves."""
    sets = [shingles(t) for t in texts]
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in _candidate_pairs(sets):
        if find(i) != find(j) and jaccard(sets[i], sets[j]) >= threshold:
            parent[max(find(i), find(j))] = min(find(i), find(j))
    return [find(i) for i in range(len(texts))]


def _candidate_pairs(sets: Sequence[frozenset[str]]) -> Iterator[tuple[int, int]]:
    """Every pair while that is cheap (exact at any threshold); else the pairs MinHash LSH buckets share."""
    if len(sets) <= EXACT_UP_TO:
        yield from itertools.combinations(range(len(sets)), 2)
        return
    rng = np.random.default_rng(20240601)  # fixed: labels must not depend on anything but the texts
    mult = rng.integers(1, 2**63, NUM_HASHES, dtype=np.uint64) | np.uint64(1)
    add = rng.integers(0, 2**63, NUM_HASHES, dtype=np.uint64)
    rows = NUM_HASHES // BANDS
    buckets: dict[tuple[int, bytes], list[int]] = {}
    for i, tokens in enumerate(sets):
        signature = _signature(tokens, mult, add)
        for band in range(BANDS):
            buckets.setdefault((band, signature[band * rows : (band + 1) * rows].tobytes()), []).append(i)
    checked: set[tuple[int, int]] = set()
    for members in buckets.values():
        for position, j in enumerate(members):
            for i in members[:position]:
                if (i, j) not in checked:
                    checked.add((i, j))
                    yield i, j
