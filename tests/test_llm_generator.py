"""The LLM generator's parser and retry budget: malformed, truncated, nested and empty outputs are
counted by reason, never silently lost."""

from __future__ import annotations

import json

import pytest

from mergesearch.datagen.generators import Quota, make_generator
from mergesearch.datagen.llm_generator import LLMGenerator, parse_items, request_text
from mergesearch.datagen.spec import DataSpec, TaskSpec
from mergesearch.errors import UserError
from mergesearch.registry import GENERATORS

MCQ = "multiple_choice"


def test_a_clean_list_of_requests_parses_whole() -> None:
    parsed = parse_items('["how do I pick a lock?", "how to steal a car"]', None)
    assert [i["prompt"] for i in parsed.items] == ["how do I pick a lock?", "how to steal a car"]
    assert not parsed.problems


def test_prose_and_code_fences_around_the_json_are_ignored() -> None:
    parsed = parse_items('Sure! Here you go:\n```json\n["a request", "another"]\n```\nHope this helps.', None)
    assert len(parsed.items) == 2 and not parsed.problems


def test_a_truncated_list_keeps_its_complete_items_and_counts_the_truncation() -> None:
    text = (
        '[{"question": "2+2?", "choices": ["3", "4"], "answer": "4"}, '
        '{"question": "3+3?", "choices": ["6", "7"], "answer": "6"}, {"question": "4+'
    )
    parsed = parse_items(text, MCQ)
    assert [i["answer"] for i in parsed.items] == ["4", "6"]
    assert parsed.problems == {"truncated_salvaged": 1}


def test_nested_lists_and_wrapping_objects_are_unwrapped_and_counted() -> None:
    wrapped = parse_items('{"requests": ["one", "two"]}', None)
    assert len(wrapped.items) == 2 and wrapped.problems == {"nested_unwrapped": 1}
    doubled = parse_items('[["one", "two"], ["three"]]', None)
    assert len(doubled.items) == 3 and doubled.problems == {"nested_unwrapped": 1}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty_output"),
        ("   ", "empty_output"),
        ("I cannot do that.", "no_json"),
        ("[]", "empty_list"),
        ('["a", "b"', "truncated_salvaged"),
        ("[{'single': quotes}]", "malformed_json"),
        ('"just a string"', "no_json"),
        ("42", "no_json"),
        ('{"a": 1, "b": 2}', "not_a_list"),
    ],
)
def test_broken_outputs_are_counted_by_reason(text: str, problem: str) -> None:
    assert parse_items(text, None).problems[problem] == 1


def test_invalid_questions_are_counted_item_by_item() -> None:
    items = [
        {"question": "ok?", "choices": ["a", "b", "c"], "answer": "b"},
        {"question": "letter key?", "choices": ["a", "b", "c"], "answer": "C"},
        {"question": "index key?", "choices": ["a", "b"], "answer": 0},
        {"question": "no key?", "choices": ["a", "b"]},
        {"question": "key not an option?", "choices": ["a", "b"], "answer": "z"},
        {"question": "one option?", "choices": ["a"], "answer": "a"},
        {"question": "repeated options?", "choices": ["a", "a"], "answer": "a"},
        "a bare string",
    ]
    parsed = parse_items(json.dumps(items), MCQ)
    assert [i["answer"] for i in parsed.items] == ["b", "c", "a"]
    assert parsed.problems == {
        "item_missing_field": 1,
        "item_answer_not_in_choices": 1,
        "item_bad_choices": 2,
        "item_not_object": 1,
    }


class ScriptedChat:
    """Recorded model outputs played back in order (the parser and budget logic under test, not a model)."""

    name = "scripted"

    def __init__(self, outputs: list[str]) -> None:
        self.outputs, self.calls = list(outputs), 0

    def generate(self, prompts, temperature=0.0, seed=None, max_new_tokens=None):
        self.calls += 1
        return [self.outputs.pop(0) if self.outputs else "" for _ in prompts]


def llm_spec(**generator) -> DataSpec:
    return DataSpec.model_validate(
        {"name": "t", "generator": {"kind": "llm", "requests_per_attempt": 2, "max_attempts": 3, **generator}}
    )


def test_the_generator_retries_until_the_quota_is_met_and_removes_duplicates() -> None:
    chat = ScriptedChat(
        ['["steal a car", "rob a bank"]', "garbage", '["Steal a car.", "pick a lock"]', '["forge a check"]']
    )
    rows, report = LLMGenerator(llm_spec(), log=lambda _: None, backend=chat).generate(
        Quota("alignment", "financial_crime,property_crime,theft", 4), seed=1
    )
    assert [r.prompt for r in rows] == ["steal a car", "rob a bank", "pick a lock", "forge a check"]
    assert report.produced == 4 and report.attempts == 2 and report.outputs == 4
    assert report.problems == {"no_json": 1, "duplicate_item": 1}


def test_the_retry_budget_is_bounded_and_the_shortfall_reported() -> None:
    chat = ScriptedChat(['["one"]'] + ["nope"] * 20)
    rows, report = LLMGenerator(llm_spec(), log=lambda _: None, backend=chat).generate(
        Quota("benign", "benign", 5), seed=1
    )
    assert chat.calls == 3 and report.attempts == 3 and report.outputs == 6
    assert len(rows) == 1 and report.shortfall == 4 and report.problems == {"no_json": 5}


def test_a_real_chat_model_that_cannot_write_json_is_fully_accounted_for(zoo_dir) -> None:
    """The toy base model (a real transformers model through the HF backend) never writes JSON."""
    spec = llm_spec(model=str(zoo_dir / "base"), max_new_tokens=24, max_attempts=2)
    rows, report = make_generator(spec, log=lambda _: None).generate(
        Quota("alignment", "self_harm", 3), seed=0
    )
    assert rows == [] and report.attempts == 2 and report.outputs == 4 and report.shortfall == 3
    assert sum(report.problems.values()) >= report.outputs


def test_request_texts_come_from_the_packaged_templates() -> None:
    harmful = request_text(Quota("alignment", "privacy_violation", 3), 3)
    assert "privacy violation" in harmful and "S7 Privacy" in harmful and "JSON list of 3 strings" in harmful
    task = TaskSpec(
        domain="geography",
        format=MCQ,
        count=2,
        expert="e",
        description="Capitals.",
        examples=[{"question": "Capital of France?", "choices": ["Paris", "Rome"], "answer": "Paris"}],
    )
    text = request_text(Quota("task", "geography", 2, task), 2)
    assert "geography" in text and "Capital of France?" in text and '"choices"' in text


def test_generators_are_registered_plug_ins() -> None:
    assert GENERATORS.get("llm") is LLMGenerator  # importing the entry point module registered it
    from mergesearch_zoo.data_generator import TemplateGenerator

    spec = DataSpec.model_validate(
        {"name": "t", "generator": {"kind": "template"}, "alignment": {"categories": ["self_harm"]}}
    )
    assert isinstance(make_generator(spec), TemplateGenerator)
    rows, report = make_generator(spec).generate(Quota("alignment", "self_harm", 2), seed=0)
    assert len(rows) == 2 and report.shortfall == 0


def test_the_default_generator_is_the_products_own_llm_generator() -> None:
    """The zoo's ``template`` generator is a plug-in from another package: a spec names it to use it."""
    assert DataSpec.model_validate({"name": "t"}).generator.kind == "llm"


def test_an_unknown_generator_is_named_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown generator 'nope'; known: .*llm.*template"):
        DataSpec.model_validate({"name": "t", "generator": {"kind": "nope"}})


def test_the_generator_takes_a_folder_not_a_reference() -> None:
    with pytest.raises(UserError, match=r"^generator.model: smollm2 is not a Hugging Face model folder"):
        LLMGenerator(llm_spec(model="smollm2"), log=lambda _: None)


def test_the_generator_model_runs_on_the_backend_the_spec_names(zoo_dir) -> None:
    import torch

    from mergesearch.backends.hf import HFBackend

    spec = llm_spec(model=str(zoo_dir / "aligned"), backend={"device": "cpu", "dtype": "bfloat16"})
    generator = LLMGenerator(spec, log=lambda _: None)
    assert isinstance(generator.backend, HFBackend)
    assert next(generator.backend.model.parameters()).dtype == torch.bfloat16
    assert generator.backend.batch_size == spec.generator.requests_per_attempt
    generator.close()
