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

Verdict = tuple[bool, float | None]  # safe, and P(unsafe) when the judge gives one


def _key(prompt: str, response: str) -> bytes:
    return hashlib.blake2b(f"{prompt}\x00{response}".encode(), digest_size=16).digest()


@dataclass
class CachedJudge:
    judge: Judge
    verdicts: dict[bytes, Verdict] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0

    def assess(self, pairs: Sequence[tuple[str, str]]) -> Assessment:
        keys = [_key(prompt, response) for prompt, response in pairs]
        fresh = {key: pair for key, pair in zip(keys, pairs) if key not in self.verdicts}
        found: dict[bytes, Verdict] = {}
        unparsed = 0
        if fresh:
            judged = self.judge.assess(list(fresh.values()))
            found, unparsed = dict(zip(fresh, _verdicts(judged))), judged.unparsed
        chosen = [found[key] if key in found else self.verdicts[key] for key in keys]
        if not unparsed:  # which verdicts failed to parse is not known per pair: then none is kept
            self.verdicts.update(found)
        cached = len(keys) - len(fresh)
        self.hits, self.misses = self.hits + cached, self.misses + len(fresh)
        probabilities = tuple(p for _, p in chosen)
        return Assessment(
            tuple(safe for safe, _ in chosen),
            unparsed,
            None if None in probabilities else probabilities,  # type: ignore[arg-type]
            cached=cached,
        )

    def stats(self) -> dict[str, float]:
        asked = self.hits + self.misses
        return {"verdicts": asked, "cached": self.hits, "hit_rate": self.hits / asked if asked else 0.0}


def _verdicts(assessment: Assessment) -> list[Verdict]:
    probabilities = assessment.p_unsafe or (None,) * len(assessment.safe)
    return list(zip(assessment.safe, probabilities, strict=True))
