"""Score one (merged) model on the evaluation data: every objective, its counts, and where time went.

Timings are split as the fitness loop spends it: ``generate`` (answers to harmful and benign prompts),
``judge`` (the judge's verdicts on them), ``score`` (log-likelihood task accuracy, short answers
contained in replies, the loss proxy).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from mergesearch.backends.base import Backend, encode_pair
from mergesearch.config import FitnessConfig
from mergesearch.judges.base import Judge
from mergesearch.judges.refusal import RefusalJudge
from mergesearch.objectives.data import EvalData
from mergesearch.objectives.fitness import fitness
from mergesearch.objectives.task import choice_accuracy, contains_answer_rate


@dataclass
class Scores:
    objectives: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    fitness: float = float("nan")


def _weighted(parts: list[tuple[float, int]]) -> float:
    total = sum(n for _, n in parts if n)
    return sum(v * n for v, n in parts if n) / total if total else float("nan")


def token_counts(backend: Backend, requests: list[tuple[str, str]]) -> list[int]:
    """How many tokens each continuation's log-likelihood sums over (lm-eval's tokenisation)."""
    return [
        len(encode_pair(backend.tokenizer, context, continuation)[1]) for context, continuation in requests
    ]


def loss_proxy(backend: Backend, data: EvalData, alpha: float) -> tuple[float, dict[str, float]]:
    """The paper's fitness as an objective: masked response NLL per token on alignment rows (prompt →
    kept refusal) and task rows (prompt → expert answer), L = NLL_align + α·NLL_task, reported as
    exp(−L / (1 + α)) (a per-token probability in (0, 1], higher is better)."""
    requests = [(backend.render(p), r) for p, r, _ in data.tagged]
    per_type: dict[str, list[float]] = {}
    for (_, _, type_), (ll, _), tokens in zip(
        data.tagged, backend.loglikelihood(requests), token_counts(backend, requests)
    ):
        per_type.setdefault(type_, []).append(-ll / max(1, tokens))
    nll = {t: sum(v) / len(v) for t, v in per_type.items()}
    loss = nll.get("alignment", 0.0) + alpha * nll.get("task", 0.0)
    return math.exp(-loss / (1 + alpha)), {
        "nll_alignment": nll.get("alignment", float("nan")),
        "nll_task": nll.get("task", float("nan")),
    }


def score_model(
    backend: Backend, data: EvalData, judge: Judge, config: FitnessConfig, max_new_tokens: int = 32
) -> Scores:
    """All objectives the data supports (the loss proxy only when weighted: it costs a scoring pass)."""
    scores = Scores()
    started = time.perf_counter()
    harmful_replies = (
        backend.generate(list(data.harmful), max_new_tokens=max_new_tokens) if data.harmful else []
    )
    benign_replies = backend.generate(list(data.benign), max_new_tokens=max_new_tokens) if data.benign else []
    scores.timings["generate"] = time.perf_counter() - started

    started = time.perf_counter()
    if data.harmful:
        assessment = judge.assess(list(zip(data.harmful, harmful_replies)))
        scores.objectives["safety"] = sum(assessment.safe) / len(assessment.safe)
        scores.counts.update(
            harmful=len(data.harmful),
            judged_safe=sum(assessment.safe),
            judge_unparsed=assessment.unparsed,
            judge_cached=assessment.cached,
        )
        if assessment.p_unsafe:
            scores.counts["mean_p_unsafe"] = sum(assessment.p_unsafe) / len(assessment.p_unsafe)
    if data.benign:
        refused = RefusalJudge().refusals(
            benign_replies
        )  # over-refusal is about refusing, whoever judges safety
        scores.objectives["over_refusal"] = sum(refused) / len(refused)
        scores.counts.update(benign=len(data.benign), benign_refused=sum(refused))
    scores.timings["judge"] = time.perf_counter() - started

    started = time.perf_counter()
    parts = []
    if data.choice_items:
        accuracy = choice_accuracy(backend, data.choice_items)
        parts.append((accuracy[config.task_metric], len(data.choice_items)))
        scores.counts.update(
            choice_items=len(data.choice_items),
            choice_acc=accuracy["acc"],
            choice_acc_norm=accuracy["acc_norm"],
        )
    if data.short_items:
        replies = backend.generate([i.prompt for i in data.short_items], max_new_tokens=max_new_tokens)
        rate = contains_answer_rate(replies, data.short_items)
        parts.append((rate, len(data.short_items)))
        scores.counts.update(short_items=len(data.short_items), contains_answer=rate)
    if parts:
        scores.objectives["task_accuracy"] = _weighted(parts)
    if config.weights.get("loss_proxy") and data.tagged:
        scores.objectives["loss_proxy"], nll = loss_proxy(backend, data, config.loss_alpha)
        scores.counts.update(nll)
    scores.timings["score"] = time.perf_counter() - started
    scores.fitness = fitness(scores.objectives, config.weights)
    return scores
