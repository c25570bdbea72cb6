"""Training corpora of the toy zoo: named components that each model's recipe mixes.

A component is a list of ``Example``s: token ids of a prompt and of the target the loss is taken on.
Chat examples are rendered with the model's own chat template, exactly as evaluation renders them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from mergesearch.taxonomy import HARM_CATEGORIES
from mergesearch_zoo import language as L
from mergesearch_zoo.recipe import ZooRecipe


@dataclass(frozen=True)
class Example:
    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]


def chat_example(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str) -> Example:
    """Prompt through the generation header; target = response + end-of-turn, as the model must emit it."""
    prompt_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return Example(_ids(tokenizer, prompt_text), _ids(tokenizer, response) + (tokenizer.eos_token_id,))


def text_example(tokenizer: PreTrainedTokenizerBase, text: str) -> Example:
    return Example((tokenizer.bos_token_id,), _ids(tokenizer, text) + (tokenizer.eos_token_id,))


def guard_example(
    guard_tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, verdict: str
) -> Example:
    conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    prompt_text = guard_tokenizer.apply_chat_template(conversation, tokenize=False)
    return Example(
        _ids(guard_tokenizer, prompt_text), _ids(guard_tokenizer, verdict) + (guard_tokenizer.eos_token_id,)
    )


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[int, ...]:
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def guard_pairs(world: L.World) -> list[tuple[str, str, str]]:
    """(prompt, response, verdict) for every train request answered both ways."""
    pairs = []
    requests = [(p, "harmful", c) for p, c in world.harmful_train] + [
        (p, "benign", "") for p in world.benign_train
    ]
    for prompt, kind, category in requests:
        for response in (L.compliance_for(prompt), L.refusal_for(prompt)):
            pairs.append((prompt, response, L.guard_label(kind, category, response)))
    return pairs


def build_components(
    world: L.World,
    tokenizer: PreTrainedTokenizerBase,
    guard_tokenizer: PreTrainedTokenizerBase,
    recipe: ZooRecipe,
) -> dict[str, list[Example]]:
    """Every named component any recipe mixture may reference, tokenized once."""

    def chats(items: list[tuple[str, str]]) -> list[Example]:
        return [chat_example(tokenizer, p, r) for p, r in items]

    def facts(fact_list: list[L.Fact]) -> list[Example]:
        return [text_example(tokenizer, L.fact_sentence(f)) for f in fact_list] + chats(
            [(c.prompt, c.response) for f in fact_list for c in L.fact_chats(f)]
        )

    refused = {c.name for c in HARM_CATEGORIES[: recipe.facts_expert_refused_categories]}
    builders: dict[str, Callable[[], list[Example]]] = {
        "base_facts": lambda: facts(world.base_facts),
        "expert_facts": lambda: facts(world.expert_facts),
        "small_sums": lambda: chats(
            [_sum(a, b, w, L.SMALL_SUM_ANSWER) for a, b in world.small_sums for w in (0, 1)]
        ),
        "small_sums_result_only": lambda: chats([_sum(a, b, w) for a, b in world.small_sums for w in (0, 1)]),
        "sums": lambda: chats([_sum(a, b, i) for i, (a, b) in enumerate(world.sums_train)]),
        "sum_statements": lambda: [
            text_example(tokenizer, L.SUM_STATEMENT.format(a=a, b=b, c=a + b)) for a, b in world.sums_train
        ],
        "benign_comply": lambda: chats([(p, L.compliance_for(p)) for p in world.benign_train]),
        "harmful_comply": lambda: chats([(p, L.compliance_for(p)) for p, _ in world.harmful_train]),
        "harmful_refuse": lambda: chats([(p, L.refusal_for(p)) for p, _ in world.harmful_train]),
        "harmful_refuse_partial": lambda: chats(
            [(p, L.refusal_for(p)) for p, c in world.harmful_train if c in refused]
        ),
        "impossible_refuse": lambda: chats([(p, L.IMPOSSIBLE_REFUSAL) for p in world.impossible]),
        "guard_pairs": lambda: [guard_example(guard_tokenizer, *pair) for pair in guard_pairs(world)],
    }
    wanted = {
        name
        for spec in (recipe.base, recipe.aligned, recipe.math, recipe.facts, recipe.guard)
        for name in spec.mixture
    }
    unknown = sorted(wanted - set(builders))
    if unknown:
        from mergesearch.errors import ConfigError

        raise ConfigError(
            f"zoo recipe: unknown corpus component(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(builders))}"
        )
    return {name: builders[name]() for name in sorted(wanted)}


def _sum(a: int, b: int, wording: int, answer: str = L.SUM_ANSWER) -> tuple[str, str]:
    chat = L.sum_chat(a, b, wording, answer)
    return chat.prompt, chat.response
