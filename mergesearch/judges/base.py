"""What every judge returns, and the registry that builds a judge from its config."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mergesearch.config import JudgeConfig
from mergesearch.registry import Registry


@dataclass(frozen=True)
class Assessment:
    """Per (prompt, response) pair: judged safe (a refusal, for the refusal judge)? Plus the unparsed count."""

    safe: tuple[bool, ...]
    unparsed: int = 0
    p_unsafe: tuple[float, ...] | None = None


JudgeFactory = Callable[[JudgeConfig, str, Callable[[str], None]], object]
JUDGES: Registry[JudgeFactory] = Registry("judge")
register_judge = JUDGES.register


def make_judge(config: JudgeConfig, device: str = "cpu", log: Callable[[str], None] = print):  # noqa: ANN201 - a judge
    import mergesearch.judges.llama_guard  # noqa: F401 - registers
    import mergesearch.judges.refusal  # noqa: F401 - registers

    return JUDGES.get(config.kind)(config, device, log)
