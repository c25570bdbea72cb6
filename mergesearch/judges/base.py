"""What every judge is and returns, and how a judge is built from its config.

Judges register a factory in ``mergesearch.registry.JUDGES`` under their config ``kind``; this module
imports none of them (the built-in ones are the ``mergesearch.judges.builtin`` plug-in module, loaded by
the registry on the first miss). A judge that needs a model gets it as a folder (``config.model``,
resolved at the edge), never as a reference to resolve.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mergesearch.backends.base import SettleRule
from mergesearch.config import EarlyExitConfig, JudgeConfig
from mergesearch.registry import JUDGES, REFUSAL_DETECTORS, SETTLE_RULES

Log = Callable[[str], None]


@dataclass(frozen=True)
class Assessment:
    """Per (prompt, response) pair: judged safe (a refusal, for the refusal judge)? And, per pair, whether
    the judge's verdict parsed (None: all did), P(unsafe) when the judge gives one, and whether the
    verdict came from a verdict cache (None: none did). Per pair, so that one judge call made for several
    callers splits back into each caller's exact assessment (``part``)."""

    safe: tuple[bool, ...]
    parsed: tuple[bool, ...] | None = None
    p_unsafe: tuple[float, ...] | None = None
    from_cache: tuple[bool, ...] | None = None

    @property
    def unparsed(self) -> int:
        return 0 if self.parsed is None else self.parsed.count(False)

    @property
    def cached(self) -> int:
        return 0 if self.from_cache is None else self.from_cache.count(True)

    def part(self, start: int, stop: int) -> Assessment:
        """The assessment of pairs ``start:stop``."""

        def cut(flags: tuple | None) -> tuple | None:
            return None if flags is None else flags[start:stop]

        return Assessment(self.safe[start:stop], cut(self.parsed), cut(self.p_unsafe), cut(self.from_cache))


class Judge(Protocol):
    """Decides, per (prompt, response) pair, whether the response is safe."""

    def assess(self, pairs: Sequence[tuple[str, str]]) -> Assessment: ...

    def close(self) -> None:
        """Stop the judge's engine now (a guard model on vLLM runs in processes of its own); a second
        call does nothing. Owners close what they build: ``with contextlib.closing(make_judge(...))``."""
        ...


JudgeFactory = Callable[[JudgeConfig, str, Log], Judge]


class RefusalDetector(Protocol):
    """Reads replies to *benign* requests as refusals or not: what over-refusal counts. Not a safety
    judge: a guard model says whether a reply is harmful, not whether it declined."""

    def refusals(self, responses: Sequence[str]) -> list[bool]: ...


def register_refusal_detector(name: str) -> Callable[[Callable[[], RefusalDetector]], Any]:
    """Decorator: ``factory()`` builds the refusal detector ``name`` (``fitness.refusal_detector``,
    ``answer.refusal_detector``)."""
    return REFUSAL_DETECTORS.register(name)


@functools.cache
def refusal_detector(name: str) -> RefusalDetector:
    """The detector ``name``, built once per process (a model-based one loads its model once)."""
    factory: Callable[[], RefusalDetector] = REFUSAL_DETECTORS.get(name)
    return factory()


def register_judge(kind: str) -> Callable[[JudgeFactory], JudgeFactory]:
    """Decorator: ``factory(config, device, log)`` builds the judge of config ``kind``."""
    return JUDGES.register(kind)


def register_settle_rule(
    kind: str,
) -> Callable[[Callable[[JudgeConfig, EarlyExitConfig], SettleRule]], Any]:
    """Decorator: ``factory(judge, early_exit)`` is the early-exit rule of judge ``kind`` from the judge's
    settings and the ``early_exit`` section (no model is loaded); objectives/early_exit.py says when it
    applies."""
    return SETTLE_RULES.register(kind)


def make_judge(config: JudgeConfig, device: str = "cpu", log: Log = print) -> Judge:
    factory: JudgeFactory = JUDGES.get(config.kind)
    return factory(config, device, log)
