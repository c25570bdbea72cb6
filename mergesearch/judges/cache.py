"""A verdict cache: one (prompt, response) pair is judged once per search, whichever genome produced it.

Neighbouring genomes often answer a harmful prompt in the same words (refusals especially), and a guard
model decodes its verdict greedily, so a cached verdict is the verdict the judge would give again. The
judge actor holds one cache for every evaluator it serves. Keys are hashes of the pair: no text is kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from mergesearch.judges.base import Assessment, Judge


@dataclass(frozen=True)
class Verdict:
    safe: bool
    parsed: bool
    p_unsafe: float | None  # when the judge gives one


def _key(prompt: str, response: str) -> bytes:
    return hashlib.blake2b(f"{prompt}\x00{response}".encode(), digest_size=16).digest()


@dataclass
class CachedJudge:
    """``judge`` behind the cache; ``enabled`` False: every pair goes to the judge (what the cache saves
    is measured against that)."""

    judge: Judge
    enabled: bool = True
    verdicts: dict[bytes, Verdict] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0

    def assess(self, pairs: Sequence[tuple[str, str]]) -> Assessment:
        if not self.enabled:
            self.misses += len(pairs)
            return self.judge.assess(list(pairs))
        keys = [_key(prompt, response) for prompt, response in pairs]
        fresh = {key: pair for key, pair in zip(keys, pairs) if key not in self.verdicts}
        found = dict(zip(fresh, _verdicts(self.judge.assess(list(fresh.values()))))) if fresh else {}
        # an unparsed verdict is not the verdict the judge would give again: it is judged again next time
        self.verdicts.update({key: v for key, v in found.items() if v.parsed})
        chosen = [found.get(key) or self.verdicts[key] for key in keys]
        first = {key: i for i, key in reversed(list(enumerate(keys)))}  # a repeat in the batch is a hit
        from_cache = tuple(key not in found or first[key] != i for i, key in enumerate(keys))
        self.hits, self.misses = self.hits + from_cache.count(True), self.misses + len(found)
        probabilities = tuple(v.p_unsafe for v in chosen)
        return Assessment(
            tuple(v.safe for v in chosen),
            tuple(v.parsed for v in chosen),
            None if None in probabilities else probabilities,  # type: ignore[arg-type]
            from_cache,
        )

    def close(self) -> None:
        self.judge.close()

    def stats(self) -> dict[str, float]:
        asked = self.hits + self.misses
        return {"verdicts": asked, "cached": self.hits, "hit_rate": self.hits / asked if asked else 0.0}


def _verdicts(assessment: Assessment) -> list[Verdict]:
    count = len(assessment.safe)
    parsed = assessment.parsed or (True,) * count
    probabilities = assessment.p_unsafe or (None,) * count
    return [Verdict(*v) for v in zip(assessment.safe, parsed, probabilities, strict=True)]
