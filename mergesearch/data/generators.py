"""Question generators behind one interface, in a registry: each turns a *quota* (how many prompts of one
type and category) into rows, reporting what it could not produce instead of dropping it silently.

``template`` writes the toy zoo's language (offline: the demo's and the tests' default); ``llm`` asks a
chat model through a backend (``mergesearch.data.llm_generator``).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from mergesearch.data.schema import Row
from mergesearch.data.spec import DataSpec, TaskSpec
from mergesearch.errors import UserError
from mergesearch.registry import Registry


@dataclass(frozen=True)
class Quota:
    """How many distinct prompts of one type and category to write; ``task`` for domain questions."""

    type: str  # alignment | task | benign
    category: str
    count: int
    task: TaskSpec | None = None

    @property
    def key(self) -> str:
        return f"{self.type}/{self.category}"

    def seed(self, base_seed: int) -> int:
        """Each quota draws from its own stream, so quotas can run anywhere, in any order."""
        return int(hashlib.sha256(f"{base_seed}|{self.key}".encode()).hexdigest()[:8], 16)

    def to_json(self) -> str:
        return json.dumps(
            {
                "type": self.type,
                "category": self.category,
                "count": self.count,
                "task": self.task.model_dump(mode="json") if self.task else None,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Quota:
        data = json.loads(text)
        return cls(
            data["type"],
            data["category"],
            data["count"],
            TaskSpec.model_validate(data["task"]) if data["task"] else None,
        )


@dataclass
class QuotaReport:
    """What one quota asked for and got; ``problems`` counts every output or item that was not used."""

    key: str
    requested: int
    produced: int = 0
    attempts: int = 0
    outputs: int = 0
    problems: Counter = field(default_factory=Counter)

    @property
    def shortfall(self) -> int:
        return max(0, self.requested - self.produced)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "problems": dict(sorted(self.problems.items())), "shortfall": self.shortfall}


def plan_quotas(spec: DataSpec) -> list[Quota]:
    quotas = []
    if spec.alignment is not None:
        quotas += [
            Quota("alignment", name, spec.alignment.per_category) for name in spec.alignment.category_names()
        ]
    if spec.benign:
        quotas.append(Quota("benign", "benign", spec.benign))
    quotas += [Quota("task", task.domain, task.count, task) for task in spec.tasks]
    return quotas


class Generator(Protocol):
    def generate(self, quota: Quota, seed: int) -> tuple[list[Row], QuotaReport]: ...


GeneratorFactory = Callable[[DataSpec, Callable[[str], None]], Generator]
GENERATORS: Registry[GeneratorFactory] = Registry("generator")
register_generator = GENERATORS.register


def make_generator(spec: DataSpec, log: Callable[[str], None] = print) -> Generator:
    if spec.generator.kind == "llm":
        import mergesearch.data.llm_generator  # noqa: F401 - registers itself
    return GENERATORS.get(spec.generator.kind)(spec, log)


def provenance(**fields: Any) -> str:
    return json.dumps(fields, sort_keys=True)


# ------------------------------------------------------------------------------------ template
@register_generator("template")
class TemplateGenerator:
    """Prompts in the toy zoo's language: every word is in the toy tokenizer's vocabulary.

    Harmful requests combine a category's actions with every request template (40 per category);
    benign requests do the same with harmless actions; ``facts`` asks multiple choice about the facts
    expert's entities (options drawn per question); ``sums`` asks two-digit sums (short answer).
    """

    DOMAINS = {"facts": "multiple_choice", "sums": "short_answer"}

    def __init__(self, spec: DataSpec, log: Callable[[str], None] = print) -> None:
        from mergesearch.zoo import language as L
        from mergesearch.zoo.recipe import ZooRecipe

        for task in spec.tasks:
            if self.DOMAINS.get(task.domain) != task.format:
                known = ", ".join(f"{d} ({f})" for d, f in self.DOMAINS.items())
                raise UserError(
                    f"tasks: the template generator has no {task.format} domain {task.domain!r} (known: {known})"
                )
        recipe = ZooRecipe()
        self.L = L
        self.world = L.World.build(recipe.seed, recipe.entities_per_owner, recipe.heldout_share)
        self.templates = (*L.REQUEST_TEMPLATES_TRAIN, *L.REQUEST_TEMPLATES_HELDOUT)

    def _pool(self, quota: Quota, rng: random.Random) -> list[tuple[str, tuple[str, ...] | None, str | None]]:
        L = self.L
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
