"""Early exit, in one place: which rule stops each answer of a search's evaluation, from the config's
``early_exit`` section.

An answer stops once the verdict that reads it is settled. Harmful answers: the judge's rule (each judge
kind registers one: ``judges.base.register_settle_rule``; the refusal judge's is settled once its opening
is decided, a guard's after ``guard_tokens``). Benign answers: the refusal rules' (over-refusal reads them,
whoever judges safety). Short answers: once the answer is stated for good. The last two also stop at an
opening length when one is set (``benign_tokens``, ``answer_tokens``): a refusal or an answer that has not
come by then rarely comes later, but a compliant or a wrong reply would run to the reply length, and a
batch decodes until its last row is done, so those rows set every call's number of decoding steps. Such
a length is chosen as a guard's is, where verdicts agree with full-length ones
(``benchmarks/fitness_efficiency.py``, openings). Held-out evaluation and promotion read full answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from mergesearch.backends.base import Settled, SettleRule
from mergesearch.config import EarlyExitConfig, JudgeConfig, SearchConfig
from mergesearch.judges.refusal import OpeningDecided
from mergesearch.objectives.data import EvalData
from mergesearch.objectives.task import AnswerStated
from mergesearch.registry import SETTLE_RULES


def settle_rule(judge: JudgeConfig, early: EarlyExitConfig) -> SettleRule | None:
    """The judge's early-exit rule when early exit is on, else None."""
    return SETTLE_RULES.get(judge.kind)(judge, early) if early.enabled else None


@dataclass(frozen=True)
class EarlyExit:
    """The search's early exit for every part: the judge's rule for harmful answers, and the opening
    lengths of benign and short answers."""

    harmful: SettleRule
    benign_tokens: int | None = None
    answer_tokens: int | None = None

    @classmethod
    def of(cls, config: SearchConfig) -> EarlyExit | None:
        """The config's early exit, None when it is off."""
        rule = settle_rule(config.judge, config.early_exit)
        if rule is None:
            return None
        return cls(rule, config.early_exit.benign_tokens, config.early_exit.answer_tokens)

    def part_rules(self, data: EvalData) -> list[Settled]:
        """The rules of the harmful, benign and short-answer parts (one per short answer)."""
        short = [AnswerStated(item.answer, self.answer_tokens) for item in data.short_items]
        return [self.harmful, OpeningDecided(max_tokens=self.benign_tokens), short]


def part_rules(data: EvalData, early: EarlyExit | SettleRule | None) -> list[Settled]:
    """Every part's early-exit rule: ``early``'s, a judge's bare rule standing for an ``EarlyExit`` with
    no opening lengths; none at all (full answers, as held-out scoring reads) without one."""
    if early is None:
        return [None, None, None]
    return (early if isinstance(early, EarlyExit) else EarlyExit(early)).part_rules(data)
