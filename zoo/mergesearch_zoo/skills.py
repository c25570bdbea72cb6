"""Held-out skill measurements of zoo models (and of merges of them).

Every set here is disjoint from training: unseen number pairs for sums; the expert's facts asked with
freshly drawn option sets (and, reported apart, with unseen question wordings); request prompts from
held-out (action, template) combinations and unseen templates; guard pairs built from those prompts.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from mergesearch.backends.hf import HFBackend
from mergesearch.judges.llama_guard import parse_verdict
from mergesearch.judges.refusal import RefusalJudge
from mergesearch_zoo import language as L
from mergesearch_zoo.recipe import ZooRecipe

OPTION_SEED_OFFSET = 7919  # option sets are drawn from a stream no training data came from


@dataclass(frozen=True)
class McqItem:
    prompt: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class SkillSets:
    sums: list[tuple[str, int]]
    facts: list[McqItem]
    facts_unseen_wording: list[McqItem]
    harmful: list[str]
    benign: list[str]
    guard_pairs: list[tuple[str, str, str]]  # (prompt, response, true verdict)

    @classmethod
    def build(cls, recipe: ZooRecipe, max_items: int | None = None) -> SkillSets:
        world = recipe.world()
        rng = random.Random(recipe.seed + OPTION_SEED_OFFSET)
        cap = (lambda xs: xs[:max_items]) if max_items else (lambda xs: xs)
        sums = [(L.sum_chat(a, b, i).prompt, a + b) for i, (a, b) in enumerate(world.sums_heldout)]
        facts = [_mcq(c, rng) for f in world.expert_facts for c in L.fact_chats(f)]
        unseen = [_mcq(c, rng) for f in world.expert_facts for c in L.fact_chats(f, L.FACT_QUESTIONS_HELDOUT)]
        pairs = []
        for prompt, category in world.harmful_heldout:
            pairs += [
                (prompt, r, L.guard_label("harmful", category, r))
                for r in (L.compliance_for(prompt), L.refusal_for(prompt))
            ]
        for prompt in world.benign_heldout:
            pairs += [(prompt, r, "safe") for r in (L.compliance_for(prompt), L.refusal_for(prompt))]
        return cls(
            sums=cap(sums),
            facts=cap(facts),
            facts_unseen_wording=cap(unseen),
            harmful=cap([p for p, _ in world.harmful_heldout]),
            benign=cap(world.benign_heldout),
            guard_pairs=cap(pairs),
        )


def _mcq(chat: L.Chat, rng: random.Random, n_options: int = 4) -> McqItem:
    correct = chat.response.split()[0]
    distractors = rng.sample([v for v in L.ATTRIBUTES[chat.category] if v != correct], n_options - 1)
    options = [correct, *distractors]
    rng.shuffle(options)
    return McqItem(chat.prompt, tuple(L.FACT_ANSWER.format(v=o) for o in options), options.index(correct))


_SUM_ANSWER = re.compile(r"equals\s*([\d\s]+)")


def parse_sum(reply: str) -> int | None:
    match = _SUM_ANSWER.search(reply)
    digits = match.group(1).replace(" ", "") if match else ""
    return int(digits) if digits else None


def sums_accuracy(backend: HFBackend, items: Sequence[tuple[str, int]]) -> float:
    replies = backend.generate([p for p, _ in items], max_new_tokens=16)
    return _mean(parse_sum(r) == answer for r, (_, answer) in zip(replies, items))


def mcq_accuracy(backend: HFBackend, items: Sequence[McqItem]) -> float:
    """lm-eval's ``acc``: the option with the highest log-likelihood is the model's answer."""
    requests = [(backend.render(item.prompt), choice) for item in items for choice in item.choices]
    scores = iter(ll for ll, _ in backend.loglikelihood(requests))
    hits = []
    for item in items:
        lls = [next(scores) for _ in item.choices]
        hits.append(max(range(len(lls)), key=lls.__getitem__) == item.answer)
    return _mean(hits)


def refusal_rate(backend: HFBackend, prompts: Sequence[str], judge: RefusalJudge | None = None) -> float:
    judge = judge or RefusalJudge()
    return _mean(judge.refusals(backend.generate(prompts, max_new_tokens=20)))


def chat_skills(backend: HFBackend, sets: SkillSets) -> dict[str, float]:
    """The five skills of a chat model: sums, facts (two ways), refusal, benign answering."""
    return {
        "sums": sums_accuracy(backend, sets.sums),
        "facts": mcq_accuracy(backend, sets.facts),
        "facts_unseen_wording": mcq_accuracy(backend, sets.facts_unseen_wording),
        "refusal": refusal_rate(backend, sets.harmful),
        "benign_answered": 1.0 - refusal_rate(backend, sets.benign),
    }


def guard_skills(backend: HFBackend, pairs: Sequence[tuple[str, str, str]]) -> dict[str, float]:
    """The guard's verdict agreement with the truth, category accuracy on unsafe pairs, unparsed share."""
    conversations = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r, _ in pairs
    ]
    verdicts = [parse_verdict(out) for out in backend.generate(conversations, max_new_tokens=6)]
    truths = [parse_verdict(label) for _, _, label in pairs]
    unsafe = [(v, t) for v, t in zip(verdicts, truths) if t.unsafe]
    return {
        "guard_agreement": _mean(v.unsafe == t.unsafe for v, t in zip(verdicts, truths)),
        "guard_category_accuracy": _mean(v.codes[:1] == t.codes[:1] for v, t in unsafe),
        "guard_unparsed": _mean(not v.parsed for v in verdicts),
    }


def task_vector_ratio(base_dir: Path, expert_dir: Path) -> float:
    """‖expert − base‖ / ‖base‖ over all weights: how far a fine-tune moved (small = mergeable)."""
    base, expert = (
        load_file(str(Path(base_dir) / "model.safetensors")),
        load_file(str(Path(expert_dir) / "model.safetensors")),
    )
    diff = sum(float(torch.sum((expert[k] - base[k]).double() ** 2)) for k in base)
    norm = sum(float(torch.sum(base[k].double() ** 2)) for k in base)
    return (diff / norm) ** 0.5


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else float("nan")
