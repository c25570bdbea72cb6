"""Question generators behind one interface: each turns a *quota* (how many prompts of one type and
category) into rows, reporting what it could not produce instead of dropping it silently.

Generators register a factory in ``mergesearch.registry.GENERATORS`` under their spec ``kind``; this
module imports none of them (the registry loads the plug-in modules on a miss). ``llm`` asks a chat
model through a backend (``mergesearch.datagen.llm_generator``), the default; the zoo package registers
``template``, which writes the toy zoo's language offline (the demo's and the tests' data).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from mergesearch.data.schema import Row
from mergesearch.datagen.spec import DataSpec, TaskSpec
from mergesearch.registry import GENERATORS

Log = Callable[[str], None]


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

    def close(self) -> None:
        """Stop whatever runs outside this process (a vLLM engine's processes); a second call does
        nothing."""


GeneratorFactory = Callable[[DataSpec, Log], Generator]


def register_generator(kind: str) -> Callable[[GeneratorFactory], GeneratorFactory]:
    """Decorator: ``factory(spec, log)`` (a class, say) builds the generator of ``generator.kind``."""
    return GENERATORS.register(kind)


def make_generator(spec: DataSpec, log: Log = print) -> Generator:
    factory: GeneratorFactory = GENERATORS.get(spec.generator.kind)
    return factory(spec, log)


def provenance(**fields: Any) -> str:
    return json.dumps(fields, sort_keys=True)
