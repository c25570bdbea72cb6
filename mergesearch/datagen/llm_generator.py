"""The LLM generator: a chat model writes prompts and questions as JSON, which is parsed and validated.

Models break JSON in every way: prose around it, code fences, truncation at the token limit, a list
nested in an object, empty lists, options without the answer. The parser salvages what is complete and
*counts* everything else by reason; the generator retries within a bounded budget and reports any
shortfall. Nothing is dropped without a count (MergeAlign's scripts read a nested list as empty inside a
bare ``except``).

This module is the ``generators`` entry point of ``mergesearch.plugins``: importing it registers ``llm``.
The chat model (``generator.model``) arrives as a folder: the edge resolves references
(``DataSpec.with_models``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mergesearch.data.schema import Row, normalize_prompt
from mergesearch.datagen.generators import Quota, QuotaReport, provenance, register_generator
from mergesearch.datagen.spec import DataSpec
from mergesearch.errors import UserError
from mergesearch.model_refs import check_model_folder
from mergesearch.taxonomy import CATEGORY_BY_NAME, LLAMA_GUARD_3_CODES

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)(?:```|$)", re.S)
MAX_PROMPT_CHARS = 1000


@dataclass
class Parsed:
    """The usable items of one model output, and a count of every problem met on the way."""

    items: list[dict[str, Any]] = field(default_factory=list)
    problems: Counter = field(default_factory=Counter)


def parse_items(text: str, question_format: str | None) -> Parsed:
    """Items from one output: request strings (``question_format`` None) or question objects."""
    parsed = Parsed()
    body = text.strip()
    fenced = _FENCE.search(body)
    if fenced:
        body = fenced.group(1).strip()
    if not body:
        parsed.problems["empty_output"] += 1
        return parsed
    start = min((i for i in (body.find("["), body.find("{")) if i >= 0), default=-1)
    if start < 0:
        parsed.problems["no_json"] += 1
        return parsed
    try:
        value, _ = json.JSONDecoder().raw_decode(body, start)
    except json.JSONDecodeError:
        value = _salvage(body[start:])
        if value is None:
            parsed.problems["malformed_json"] += 1
            return parsed
        parsed.problems["truncated_salvaged"] += 1
    value = _unnest(value, parsed.problems)
    if value is None:
        return parsed
    if not value:
        parsed.problems["empty_list"] += 1
    for element in value:
        item = _validate(element, question_format)
        if isinstance(item, str):
            parsed.problems[item] += 1
        else:
            parsed.items.append(item)
    return parsed


def _salvage(text: str) -> list | None:
    """The complete elements of a truncated JSON list (``[{...}, {...}, {"que`` → two items)."""
    opening = text.find("[")
    if opening < 0:
        return None
    decoder, pos, elements = json.JSONDecoder(), opening + 1, []
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            break
        try:
            element, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break
        elements.append(element)
    return elements or None


def _unnest(value: Any, problems: Counter) -> list | None:
    """A list of items, from a list, a list of lists, an object holding one list, or one bare item."""
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) == 1:
            problems["nested_unwrapped"] += 1
            return _unnest(lists[0], problems)
        if any(k in value for k in ("question", "prompt", "request")):
            return [value]
        problems["not_a_list"] += 1
        return None
    if not isinstance(value, list):
        problems["not_a_list"] += 1
        return None
    if value and all(isinstance(v, list) for v in value):
        problems["nested_unwrapped"] += 1
        return [item for inner in value for item in inner]
    return value


def _text_of(element: Any, keys: tuple[str, ...]) -> str | None:
    if isinstance(element, str):
        return element.strip()
    if isinstance(element, dict):
        for key in keys:
            if isinstance(element.get(key), str):
                return element[key].strip()
    return None


def _validate(element: Any, question_format: str | None) -> dict[str, Any] | str:
    """A clean item, or the name of what is wrong with it."""
    if question_format is None:
        prompt = _text_of(element, ("prompt", "request", "question"))
        if prompt is None:
            return "item_not_text"
        if not prompt:
            return "item_empty"
        if len(prompt) > MAX_PROMPT_CHARS:
            return "item_too_long"
        return {"prompt": prompt, "choices": None, "answer": None}
    if not isinstance(element, dict):
        return "item_not_object"
    question = _text_of(element, ("question", "prompt"))
    answer = element.get("answer")
    if not question or answer is None or (isinstance(answer, str) and not answer.strip()):
        return "item_missing_field"
    if question_format == "short_answer":
        return {"prompt": question, "choices": None, "answer": str(answer).strip()}
    choices = element.get("choices", element.get("options"))
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c.strip() for c in choices)
    ):
        return "item_bad_choices"
    choices = [c.strip() for c in choices]
    if len(set(choices)) != len(choices):
        return "item_bad_choices"
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        key = choices[answer]
    elif isinstance(answer, str) and answer.strip() in choices:
        key = answer.strip()
    elif (
        isinstance(answer, str)
        and len(answer.strip()) == 1
        and 0 <= ord(answer.strip().upper()) - 65 < len(choices)
    ):
        key = choices[ord(answer.strip().upper()) - 65]  # "B" → the second option
    else:
        return "item_answer_not_in_choices"
    return {"prompt": question, "choices": tuple(choices), "answer": key}


def request_text(quota: Quota, n: int) -> str:
    """The instruction sent to the generating model, from the templates kept as package data."""
    name = quota.task.format if quota.task else quota.type
    template = resources.files("mergesearch.datagen").joinpath(f"prompts/{name}.txt").read_text()
    fields: dict[str, Any] = {"n": n}
    if quota.type == "alignment":
        category = CATEGORY_BY_NAME[quota.category]
        fields["category_title"] = quota.category.replace("_", " ").replace(",", ", ")
        fields["codes"] = ", ".join(f"{c} {LLAMA_GUARD_3_CODES[c]}" for c in category.llama_guard_codes)
    elif quota.task is not None:
        fields["domain"] = quota.task.domain
        fields["description"] = quota.task.description
        fields["examples"] = json.dumps(
            [e.model_dump(exclude_none=True) for e in quota.task.examples], indent=1
        )
    return template.strip().format(**fields)


@register_generator("llm")
class LLMGenerator:
    """Samples batches of requests from a chat model until the quota is met or the budget is spent."""

    def __init__(self, spec: DataSpec, log: Callable[[str], None] = print, backend: Any = None) -> None:
        self.spec = spec.generator
        if backend is None:
            if not self.spec.model:
                raise UserError(
                    "generator.model: the llm generator needs a chat model (a folder, zoo:<member>, smollm2)"
                )
            from mergesearch.backends.registry import make_backend

            path = check_model_folder(Path(self.spec.model), "generator.model")
            engine = self.spec.engine().with_batches(self.spec.requests_per_attempt, self.spec.max_new_tokens)
            backend = make_backend(path, engine, path.name)
        self.backend = backend
        self.model_name = getattr(backend, "name", "model")
        self.log = log

    def close(self) -> None:
        self.backend.close()

    def generate(self, quota: Quota, seed: int) -> tuple[list[Row], QuotaReport]:
        report = QuotaReport(quota.key, quota.count)
        question_format = quota.task.format if quota.task else None
        kept: list[dict[str, Any]] = []
        seen: set[str] = set()
        for attempt in range(self.spec.max_attempts):
            if len(kept) >= quota.count:
                break
            report.attempts += 1
            ask = request_text(quota, min(self.spec.items_per_request, quota.count - len(kept)))
            outputs = self.backend.generate(
                [ask] * self.spec.requests_per_attempt,
                temperature=self.spec.temperature,
                seed=seed + attempt,
                max_new_tokens=self.spec.max_new_tokens,
            )
            for output in outputs:
                report.outputs += 1
                parsed = parse_items(output, question_format)
                report.problems.update(parsed.problems)
                for item in parsed.items:
                    key = normalize_prompt(item["prompt"])
                    if key in seen:
                        report.problems["duplicate_item"] += 1
                        continue
                    seen.add(key)
                    kept.append(item)
        if len(kept) > quota.count:
            report.problems["beyond_quota"] += len(kept) - quota.count
        kept = kept[: quota.count]
        report.produced = len(kept)
        self.log(
            f"llm generator: {quota.key}: {report.produced}/{quota.count} in {report.attempts} attempts, "
            f"problems {dict(report.problems)}"
        )
        origin = provenance(
            generator="llm", model=self.model_name, seed=seed, temperature=self.spec.temperature
        )
        rows = [
            Row(
                prompt=i["prompt"],
                type=quota.type,
                category=quota.category,
                source=f"llm:{self.model_name}",
                choices=i["choices"],
                answer=i["answer"],
                provenance=origin,
            )
            for i in kept
        ]
        return rows, report
