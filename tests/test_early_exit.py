"""Early exit: an answer stops once the verdict that reads it is settled."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergesearch.backends.hf import HFBackend
from mergesearch.config import EarlyExitConfig, JudgeConfig, SearchConfig
from mergesearch.data.eval_split import load_eval_data
from mergesearch.judges.refusal import RefusalJudge
from mergesearch.objectives.early_exit import settle_rule


@pytest.fixture(scope="module")
def harmful(toy_dataset: Path) -> list[str]:
    return list(load_eval_data(toy_dataset, "search").harmful)[:48]


@pytest.mark.parametrize("expert", ["aligned", "math"])
def test_a_settled_answer_is_the_full_answers_opening_and_gets_its_verdict(zoo_dir, harmful, expert) -> None:
    """Greedy decoding: the early answer is the start of the full one, and the refusal judge reads both
    the same way. The aligned expert refuses in a few tokens, so most of its answers stop early."""
    backend = HFBackend.from_pretrained(zoo_dir / expert, device="cpu")
    rule = settle_rule(JudgeConfig(kind="refusal"), EarlyExitConfig(enabled=True))
    full = backend.generate(harmful, max_new_tokens=48)
    early = backend.generate(harmful, max_new_tokens=48, settled=rule)
    judge = RefusalJudge()
    assert all(f.startswith(e) for f, e in zip(full, early))
    assert judge.refusals(early) == judge.refusals(full)
    shorter = sum(len(e) < len(f) for f, e in zip(full, early))
    if expert == "aligned":
        assert shorter >= len(harmful) // 4


def test_a_guards_early_exit_keeps_its_opening_tokens(zoo_dir, harmful) -> None:
    backend = HFBackend.from_pretrained(zoo_dir / "math", device="cpu")
    rule = settle_rule(
        JudgeConfig(kind="llama_guard", model="guard"), EarlyExitConfig(enabled=True, guard_tokens=6)
    )
    early = backend.generate(harmful, max_new_tokens=48, settled=rule)
    full = backend.generate(harmful, max_new_tokens=48)
    encode = backend._encode
    assert all(len(encode(e)) <= 6 for e in early)
    assert sum(len(encode(f)) > 6 for f in full) >= len(harmful) // 2  # the cap did cut answers
    assert all(f.startswith(e) for f, e in zip(full, early))


@pytest.mark.parametrize("kind", ["refusal", "llama_guard"])
def test_one_call_ends_only_the_prompts_given_a_rule(zoo_dir, harmful, kind) -> None:
    """Per-prompt rules: harmful prompts (with the judge's rule) and benign ones (without) answered in one
    call, in mixed batches, get what each would get in a call of its own kind."""
    backend = HFBackend.from_pretrained(zoo_dir / "aligned", device="cpu")
    rule = settle_rule(JudgeConfig(kind=kind, model="guard"), EarlyExitConfig(enabled=True, guard_tokens=6))
    benign = [prompt.replace("how to", "why people") for prompt in harmful[12:24]]
    mixed = [p for pair in zip(harmful[:12], benign) for p in pair]  # alternating: they share batches
    rules = [rule, None] * 12
    replies = backend.generate(mixed, max_new_tokens=48, settled=rules)
    assert replies[0::2] == backend.generate(harmful[:12], max_new_tokens=48, settled=rule)
    assert replies[1::2] == backend.generate(benign, max_new_tokens=48)
    full = backend.generate(harmful[:12], max_new_tokens=48)
    assert sum(len(e) < len(f) for e, f in zip(replies[0::2], full)) >= 3  # the rule did end some


def test_a_rule_per_prompt_must_match_the_prompts(zoo_dir) -> None:
    backend = HFBackend.from_pretrained(zoo_dir / "math", device="cpu")
    with pytest.raises(ValueError, match="2 settle rules for 3 prompts"):
        backend.generate(["a", "b", "c"], settled=[None, None])


def test_early_exit_is_off_unless_asked() -> None:
    assert settle_rule(JudgeConfig(kind="refusal"), EarlyExitConfig()) is None


@pytest.mark.parametrize("expert", ["aligned", "math"])
def test_with_early_exit_every_part_stops_once_its_verdict_is_settled_and_scores_the_same(
    zoo_dir, toy_dataset, expert
) -> None:
    """A batch decodes until its last row is done, so the rule reaches every part: harmful answers (the
    judge's), benign ones (the refusal rules', which over-refusal reads) and short answers (once their
    answer is stated for good). Each early answer opens its full one, and every count is the same. (The
    toy's benign and short answers end within a few tokens anyway; at SmolLM2 scale they run on:
    benchmarks/fitness_efficiency.py measures what stopping them saves.)"""
    from mergesearch.config import FitnessConfig
    from mergesearch.judges.refusal import OpeningDecided
    from mergesearch.objectives.early_exit import part_rules
    from mergesearch.objectives.evaluate import answer_parts, score_model
    from mergesearch.objectives.task import AnswerStated

    data = load_eval_data(toy_dataset, "search")
    rule = settle_rule(
        JudgeConfig(kind="llama_guard", model="guard"), EarlyExitConfig(enabled=True, guard_tokens=6)
    )
    harmful_rule, benign_rule, short_rules = part_rules(data, rule)
    assert harmful_rule is rule and isinstance(benign_rule, OpeningDecided)
    assert short_rules == [AnswerStated(item.answer) for item in data.short_items]
    assert part_rules(data, None) == [None, None, None]  # held-out scoring reads every answer in full

    backend = HFBackend.from_pretrained(zoo_dir / expert, device="cpu")
    rule = settle_rule(JudgeConfig(kind="refusal"), EarlyExitConfig(enabled=True))
    parts = [list(data.harmful), list(data.benign), [item.prompt for item in data.short_items]]
    full = answer_parts(backend, parts, 48)
    early = answer_parts(backend, parts, 48, part_rules(data, rule))
    for name, full_part, early_part in zip(("harmful", "benign", "short"), full, early, strict=True):
        assert all(f.startswith(e) for f, e in zip(full_part, early_part, strict=True)), name
    scored = [score_model(backend, data, RefusalJudge(), FitnessConfig(), 48, r) for r in (None, rule)]
    assert scored[0].counts == scored[1].counts


def test_benign_and_short_answers_also_stop_at_their_opening_lengths_when_set(zoo_dir, toy_dataset) -> None:
    """``early_exit.benign_tokens`` and ``answer_tokens``: benign and short answers stop once their
    verdict is settled or at that length, whichever comes first; each is the opening of its full answer
    (greedy) and no longer than its length. Without ``early_exit.enabled`` neither applies."""
    from mergesearch.judges.refusal import OpeningDecided
    from mergesearch.objectives.early_exit import EarlyExit
    from mergesearch.objectives.evaluate import answer_parts
    from mergesearch.objectives.task import AnswerStated

    config = SearchConfig.model_validate(
        {
            "name": "cut",
            "models": {"base": "b", "experts": [{"name": "e", "path": "e"}]},
            "judge": {"kind": "refusal"},
            "early_exit": {"enabled": True, "benign_tokens": 3, "answer_tokens": 2},
        }
    )
    early = EarlyExit.of(config)
    assert early == EarlyExit(settle_rule(config.judge, config.early_exit), benign_tokens=3, answer_tokens=2)
    data = load_eval_data(toy_dataset, "search")
    rules = early.part_rules(data)
    assert rules[1] == OpeningDecided(max_tokens=3)
    assert rules[2] == [AnswerStated(item.answer, 2) for item in data.short_items]
    off = config.early_exit.model_copy(update={"enabled": False})
    assert EarlyExit.of(config.model_copy(update={"early_exit": off})) is None

    backend = HFBackend.from_pretrained(zoo_dir / "math", device="cpu")
    parts = [list(data.harmful), list(data.benign), [item.prompt for item in data.short_items]]
    full = answer_parts(backend, parts, 48)
    cut = answer_parts(backend, parts, 48, rules)
    for length, full_part, cut_part in ((3, full[1], cut[1]), (2, full[2], cut[2])):
        assert all(f.startswith(c) for f, c in zip(full_part, cut_part, strict=True))
        assert all(len(backend._encode(c)) <= length for c in cut_part)
        assert sum(c != f for f, c in zip(full_part, cut_part)) >= len(full_part) // 2  # the lengths cut
