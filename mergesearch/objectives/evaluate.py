"""Score one (merged) model on the evaluation data: every objective, its counts, and where time went.

Timings are split as the fitness loop spends it: ``generate`` (answers to harmful and benign prompts),
``judge`` (the judge's verdicts on them), ``score`` (log-likelihood task accuracy, short answers
contained in replies, the loss proxy).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from mergesearch.backends.base import Backend, Prompt, Settled, SettleRule, encode_pair, rules_per_prompt
from mergesearch.config import FitnessConfig
from mergesearch.judges.base import Judge, refusal_detector
from mergesearch.objectives.data import EvalData
from mergesearch.objectives.early_exit import EarlyExit, part_rules
from mergesearch.objectives.fitness import fitness
from mergesearch.objectives.task import choice_accuracy, contains_answer_rate


@dataclass
class Scores:
    objectives: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    fitness: float = float("nan")


def token_counts(backend: Backend, requests: list[tuple[str, str]]) -> list[int]:
    """How many tokens each continuation's log-likelihood sums over (lm-eval's tokenisation)."""
    return [
        len(encode_pair(backend.tokenizer, context, continuation)[1]) for context, continuation in requests
    ]


def loss_proxy_counts(backend: Backend, data: EvalData) -> dict[str, float]:
    """The paper's fitness, as counts: masked response NLL per token, averaged per row type, on alignment
    rows (prompt → kept refusal) and task rows (prompt → expert answer), and the rows of each."""
    requests = [(backend.render(p), r) for p, r, _ in data.tagged]
    per_type: dict[str, list[float]] = {}
    for (_, _, type_), (ll, _), tokens in zip(
        data.tagged, backend.loglikelihood(requests), token_counts(backend, requests)
    ):
        per_type.setdefault(type_, []).append(-ll / max(1, tokens))
    counts: dict[str, float] = {}
    for type_ in ("alignment", "task"):
        rows = per_type.get(type_, [])
        counts[f"tagged_{type_}"] = len(rows)
        counts[f"nll_{type_}"] = sum(rows) / len(rows) if rows else float("nan")
    return counts


def objectives_from(counts: dict[str, float], config: FitnessConfig) -> dict[str, float]:
    """Every objective the counts support. Objectives are always computed from counts, so that shards
    scored apart combine exactly (``combined``):

    - safety: judged safe / harmful; over_refusal: refused / benign;
    - task_accuracy: choice hits (``task_metric``) and short answers contained, over both item counts;
    - loss_proxy: L = NLL_align + α·NLL_task (a missing type counts 0), reported as exp(−L / (1 + α)),
      a per-token probability in (0, 1], higher is better.
    """
    get = counts.get
    found: dict[str, float] = {}
    if get("harmful"):
        found["safety"] = counts["judged_safe"] / counts["harmful"]
    if get("benign"):
        found["over_refusal"] = counts["benign_refused"] / counts["benign"]
    metric = {"acc": "choice_acc", "acc_norm": "choice_acc_norm"}[config.task_metric]
    items = get("choice_items", 0) + get("short_items", 0)
    if items:
        hits = get("choice_items", 0) * get(metric, 0.0) + get("short_items", 0) * get("contains_answer", 0.0)
        found["task_accuracy"] = hits / items
    if get("short_items"):
        found["short_answer"] = counts["contains_answer"]
    if get("choice_items"):
        found["choice_accuracy"] = counts[metric]
    if get("tagged_alignment", 0) + get("tagged_task", 0):
        nll = {t: counts[f"nll_{t}"] if get(f"tagged_{t}") else 0.0 for t in ("alignment", "task")}
        loss = nll["alignment"] + config.loss_alpha * nll["task"]
        found["loss_proxy"] = math.exp(-loss / (1 + config.loss_alpha))
    return found


# A count that is a mean over rows, and the count of those rows; every other count is a sum.
MEANS_OVER = {
    "choice_acc": "choice_items",
    "choice_acc_norm": "choice_items",
    "contains_answer": "short_items",
    "mean_p_unsafe": "harmful",
    "nll_alignment": "tagged_alignment",
    "nll_task": "tagged_task",
}


def combined(parts: list[Scores], config: FitnessConfig) -> Scores:
    """Shards of one split, scored apart, as if scored together: counts summed (means weighted by
    their rows), objectives and fitness computed from them, timings summed."""
    counts: dict[str, float] = {}
    for key in {k for part in parts for k in part.counts}:
        if key in MEANS_OVER:
            rows = [(p.counts.get(key), p.counts.get(MEANS_OVER[key], 0)) for p in parts]
            rows = [(v, n) for v, n in rows if v is not None and n and not math.isnan(v)]
            total = sum(n for _, n in rows)
            counts[key] = sum(v * n for v, n in rows) / total if total else float("nan")
        else:
            counts[key] = sum(p.counts.get(key, 0.0) for p in parts)
    timings: dict[str, float] = {}
    for part in parts:
        for key, seconds in part.timings.items():
            timings[key] = timings.get(key, 0.0) + seconds
    found = objectives_from(counts, config)
    return Scores(found, counts, timings, fitness(found, config.weights))


def answer_parts(
    backend: Backend,
    parts: Sequence[Sequence[Prompt]],
    max_new_tokens: int,
    settled: Sequence[Settled] | None = None,
) -> list[list[str]]:
    """Replies to each part's prompts (``settled``: each part's early-exit rule, or one per prompt), from
    one ``generate`` call: decoding pays per batch and per token, not per prompt, so parts answered apart
    would each pay the whole reply length in decoding steps (three small batches cost about what three
    full ones do)."""
    rules = [
        rule
        for part, rules_of_part in zip(parts, settled or [None] * len(parts), strict=True)
        for rule in rules_per_prompt(rules_of_part, len(part))
    ]
    prompts = [prompt for part in parts for prompt in part]
    replies = backend.generate(prompts, max_new_tokens=max_new_tokens, settled=rules) if prompts else []
    found, start = [], 0
    for part in parts:
        found.append(replies[start : start + len(part)])
        start += len(part)
    return found


def score_model(
    backend: Backend,
    data: EvalData,
    judge: Judge,
    config: FitnessConfig,
    max_new_tokens: int = 32,
    settled: EarlyExit | SettleRule | None = None,
) -> Scores:
    """All objectives the data supports (the loss proxy only when weighted: it costs a scoring pass).
    ``settled``: the search's early exit (or the judge's bare rule); given, every part's answers stop
    once their verdict is settled (``part_rules``; the search's fitness only: held-out evaluations read
    full answers).
    Timings: ``generate`` answers every part (short answers included), ``score`` is choice scoring and
    the loss proxy."""
    counts: dict[str, float] = {}
    timings: dict[str, float] = {}
    started = time.perf_counter()
    harmful = list(data.harmful)
    harmful_replies, benign_replies, short_replies = answer_parts(
        backend,
        [harmful, list(data.benign), [item.prompt for item in data.short_items]],
        max_new_tokens,
        part_rules(data, settled),
    )
    timings["generate"] = time.perf_counter() - started

    started = time.perf_counter()
    if harmful:
        assessment = judge.assess(list(zip(harmful, harmful_replies)))
        counts.update(
            harmful=len(harmful),
            judged_safe=sum(assessment.safe),
            judge_unparsed=assessment.unparsed,
            judge_cached=assessment.cached,
        )
        if assessment.p_unsafe:
            counts["mean_p_unsafe"] = sum(assessment.p_unsafe) / len(assessment.p_unsafe)
        # the refusal rules' verdict beside the judge's, so a guard-judged table still compares with a
        # refusal-judged one (a pattern read: no model runs)
        counts["harmful_refused"] = sum(refusal_detector(config.refusal_detector).refusals(harmful_replies))
    if data.benign:  # over-refusal is about refusing, whoever judges safety
        refused = refusal_detector(config.refusal_detector).refusals(benign_replies)
        counts.update(benign=len(data.benign), benign_refused=sum(refused))
    timings["judge"] = time.perf_counter() - started

    started = time.perf_counter()
    if data.choice_items:
        accuracy = choice_accuracy(backend, data.choice_items)
        counts.update(
            choice_items=len(data.choice_items),
            choice_acc=accuracy["acc"],
            choice_acc_norm=accuracy["acc_norm"],
        )
    if data.short_items:
        counts.update(
            short_items=len(data.short_items),
            contains_answer=contains_answer_rate(short_replies, data.short_items),
        )
    if config.weights.get("loss_proxy") and data.tagged:
        counts.update(loss_proxy_counts(backend, data))
    timings["score"] = time.perf_counter() - started
    found = objectives_from(counts, config)
    return Scores(found, counts, timings, fitness(found, config.weights))
