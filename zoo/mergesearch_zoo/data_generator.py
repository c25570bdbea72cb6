"""The ``template`` generator: prompts in the toy zoo's language, offline (the demo's and the tests' default).

It lives with the zoo because it writes the zoo's own words (``mergesearch_zoo.language``); importing
this module registers it in ``mergesearch.registry.GENERATORS`` (the ``zoo`` plug-in module does).
"""

from __future__ import annotations

import random

from mergesearch.data.schema import Row
from mergesearch.datagen.generators import Log, Quota, QuotaReport, provenance, register_generator
from mergesearch.datagen.spec import DataSpec
from mergesearch.errors import UserError
from mergesearch_zoo import language as L
from mergesearch_zoo.recipe import ZooRecipe

PoolItem = tuple[str, tuple[str, ...] | None, str | None]  # (prompt, choices, answer)


@register_generator("template")
class TemplateGenerator:
    """Prompts in the toy zoo's language: every word is in the toy tokenizer's vocabulary.

    Harmful requests combine a category's actions with every request template (40 per category);
    benign requests do the same with harmless actions; ``facts`` asks multiple choice about the facts
    expert's entities (options drawn per question); ``sums`` asks two-digit sums (short answer).
    """

    DOMAINS = {"facts": "multiple_choice", "sums": "short_answer"}

    def __init__(self, spec: DataSpec, log: Log = print) -> None:
        for task in spec.tasks:
            if self.DOMAINS.get(task.domain) != task.format:
                known = ", ".join(f"{d} ({f})" for d, f in self.DOMAINS.items())
                raise UserError(
                    f"tasks: the template generator has no {task.format} domain {task.domain!r} "
                    f"(known: {known})"
                )
        recipe = ZooRecipe()
        self.world = recipe.world()
        self.templates = (*L.REQUEST_TEMPLATES_TRAIN, *L.REQUEST_TEMPLATES_HELDOUT)

    def _pool(self, quota: Quota, rng: random.Random) -> list[PoolItem]:
        if quota.type == "alignment":
            if quota.category not in L.HARMFUL_ACTIONS:
                raise UserError(
                    f"alignment.categories: the template generator has no prompts for {quota.category!r}"
                )
            return [
                (t.format(a=a), None, None) for a in L.HARMFUL_ACTIONS[quota.category] for t in self.templates
            ]
        if quota.type == "benign":
            return [(t.format(a=a), None, None) for a in L.BENIGN_ACTIONS for t in self.templates]
        if quota.category == "facts":
            wordings = {
                attr: (*L.FACT_QUESTIONS_TRAIN[attr], *L.FACT_QUESTIONS_HELDOUT[attr])
                for attr in L.ATTRIBUTES
            }
            pool = []
            for fact in self.world.expert_facts:
                for question in wordings[fact.attribute]:
                    options = [
                        fact.value,
                        *rng.sample([v for v in L.ATTRIBUTES[fact.attribute] if v != fact.value], 3),
                    ]
                    rng.shuffle(options)
                    choices = tuple(L.FACT_ANSWER.format(v=o) for o in options)
                    pool.append((question.format(e=fact.entity), choices, L.FACT_ANSWER.format(v=fact.value)))
            return pool
        pairs = rng.sample([(a, b) for a in range(10, 100) for b in range(10, 100)], min(quota.count, 8100))
        return [(L.SUM_PROMPTS[i % 2].format(a=a, b=b), None, str(a + b)) for i, (a, b) in enumerate(pairs)]

    def close(self) -> None:
        """Templates run nothing to stop."""

    def generate(self, quota: Quota, seed: int) -> tuple[list[Row], QuotaReport]:
        rng = random.Random(seed)
        pool = self._pool(quota, rng)
        rng.shuffle(pool)
        chosen = pool[: quota.count]
        report = QuotaReport(quota.key, quota.count, produced=len(chosen), attempts=1, outputs=len(pool))
        if len(pool) < quota.count:
            report.problems["pool_exhausted"] = quota.count - len(pool)
        origin = provenance(generator="template", seed=seed)
        rows = [
            Row(
                prompt=p,
                type=quota.type,
                category=quota.category,
                source="template",
                choices=c,
                answer=a,
                provenance=origin,
            )
            for p, c, a in chosen
        ]
        return rows, report
