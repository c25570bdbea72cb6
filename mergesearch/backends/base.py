"""What a backend offers (``Backend``) and what the transformers and vLLM backends share.

* chat rendering: a prompt (a user message, or a list of chat turns) becomes the model's own chat-templated
  text up to the assistant's reply (``render_chat``); a tokenizer without a template is one ``UserError``;
* lm-eval's tokenisation of a (context, continuation) pair (``encode_pair``), so that both backends'
  ``loglikelihood`` scores exactly the tokens lm-eval's ``HFLM`` / ``VLLM`` score;
* the weights rule: safetensors only, unless the caller opts into pickle weights (``check_weights``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mergesearch.errors import UserError

if TYPE_CHECKING:
    import torch

    from mergesearch.config import TaskVectorsConfig
    from mergesearch.merge.recipe import MergeRecipe

Prompt = str | Sequence[Mapping[str, str]]
"""A user message, or chat turns (``{"role": ..., "content": ...}``)."""

log = logging.getLogger(__name__)


class MergePool(Protocol):
    """What ``resident_merger`` returns: the merge pool (base + task vectors), wherever it lives."""

    @property
    def num_layers(self) -> int | None: ...


class SettleRule(Protocol):
    """Whether a judge's verdict on a growing answer is settled, so that its generation may stop
    (early exit; the judges declare theirs). ``max_tokens``: the longest the answer runs, a length every
    backend applies. ``reads_text``: the rule also reads the answer as it grows, which needs a backend
    that checks it as it decodes (HF); others stop at ``max_tokens`` (or the reply length) only."""

    max_tokens: int | None

    @property
    def reads_text(self) -> bool: ...

    def __call__(self, response: str, tokens: int) -> bool: ...


Settled = SettleRule | Sequence[SettleRule | None] | None
"""What ``generate`` takes as ``settled``: one rule for every prompt, or one per prompt (None: none)."""


def common_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """How many first tokens every sequence has in common (a chat template's opening, say): what
    generation and training run once for a batch."""
    first, shared = sequences[0], min(len(seq) for seq in sequences)
    for seq in sequences[1:]:
        shared = next((i for i in range(shared) if seq[i] != first[i]), shared)
    return shared


def rules_per_prompt(settled: Settled, prompts: int) -> list[SettleRule | None]:
    """``settled`` as one rule (or None) per prompt."""
    if settled is None or not isinstance(settled, Sequence):
        return [settled] * prompts
    if len(settled) != prompts:
        raise ValueError(f"{len(settled)} settle rules for {prompts} prompts")
    return list(settled)


def reply_length(max_new_tokens: int | None, default: int, settled: SettleRule | None) -> int:
    """Tokens a reply may take: the asked length (else the backend's), capped by an early-exit rule's
    length when it has one."""
    length = max_new_tokens or default
    return length if settled is None or settled.max_tokens is None else min(length, settled.max_tokens)


@runtime_checkable
class Backend(Protocol):
    """A resident model: load once, then generate, score, and take new weights in place.

    ``tokenizer`` is the model's Hugging Face tokenizer (judges and objectives encode with it); ``device``
    is where the model runs; ``name`` names the model in messages."""

    name: str
    tokenizer: Any

    @property
    def device(self) -> torch.device: ...

    def render(self, prompt: Prompt) -> str:
        """The chat-templated text that precedes the assistant's reply."""
        ...

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        raw: bool = False,
        settled: Settled = None,
    ) -> list[str]:
        """Replies to each prompt, in order (greedy unless ``temperature`` > 0); ``raw``: the prompts are
        already rendered text; ``settled``: a reply may stop once the judge's verdict on it is settled
        (one rule for all, or one per prompt, so that one call can answer prompts that are judged and
        prompts that are not)."""
        ...

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """lm-eval's contract: per (context, continuation), log p(continuation | context) and whether the
        continuation is the greedy one; tokenised as lm-eval does (``encode_pair``)."""
        ...

    def generate_with_first_logprobs(
        self, texts: Sequence[str], token_ids: Sequence[int], max_new_tokens: int | None = None
    ) -> tuple[list[str], list[list[float]]]:
        """Greedy replies to rendered ``texts``, and the log-probabilities of ``token_ids`` as each
        reply's first token, from one pass (a guard's verdict and its probability)."""
        ...

    def resident_merger(
        self,
        base: Path,
        experts: Mapping[str, Path],
        dtype: str,
        sort_magnitudes: bool = False,
        pool: str = "gpu",
        task_vectors: TaskVectorsConfig | None = None,
    ) -> MergePool:
        """The merge pool, computed on the live model's device; kept there (``gpu``) or in host RAM, its
        task vectors in ``task_vectors``' form (dense by default)."""
        ...

    def merge_from(self, merger: Any, recipe: MergeRecipe, seed: int | None = None) -> None:
        """Write the merge of ``recipe`` into the live model; ``merger``: what ``resident_merger`` returned
        (or a ``ResidentMerger``)."""
        ...

    def close(self) -> None:
        """Stop what the engine runs outside this process (vLLM: its engine processes) now, rather than
        at interpreter exit; a second call does nothing."""
        ...


# ------------------------------------------------------------------------------------ chat rendering
def require_chat_template(tokenizer: Any, name: str) -> None:
    """The one error for a model that cannot render chats."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{name}: the tokenizer has no chat template; set one or pick an instruct model")


def render_chat(tokenizer: Any, prompt: Prompt) -> str:
    """``prompt`` through the tokenizer's chat template, ending with the assistant's generation header."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# ------------------------------------------------------------------------------------ lm-eval tokenisation
def prefix_token_id(tokenizer: Any) -> int:
    """lm-eval's ``prefix_token_id``: the BOS token, else the EOS token."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def lm_eval_encode(tokenizer: Any, text: str) -> list[int]:
    """lm-eval's ``tok_encode`` (``HFLM`` and ``VLLM``, ``add_bos_token`` unset): the tokenizer's own special
    tokens are added, unless ``text`` already starts with the prefix token's text (a chat template's BOS)."""
    prefix = prefix_token_id(tokenizer)
    if prefix is not None and text.startswith(tokenizer.decode(prefix)):
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(text)["input_ids"]


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation token ids as lm-eval's ``loglikelihood`` makes them (causal models):

    * trailing whitespace of the context moves to the start of the continuation;
    * the two are tokenised together; the continuation is what follows the context's own tokens;
    * an empty context becomes the prefix token (BOS, else EOS), unless the continuation starts with it.
    """
    if context == "":
        continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        prefix = prefix_token_id(tokenizer)
        if continuation_ids and continuation_ids[0] == prefix:
            return continuation_ids[:1], continuation_ids[1:]
        return [prefix], continuation_ids
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = lm_eval_encode(tokenizer, context + continuation)
    context_ids = lm_eval_encode(tokenizer, context)
    return context_ids, whole[len(context_ids) :]


# ------------------------------------------------------------------------------------ weights
def only_pickle_weights(folder: Path) -> bool:
    """Weights as ``.bin`` (pickle) files and none as safetensors (``training_args.bin`` holds no weights)."""
    pickles = [p for p in folder.glob("*.bin") if p.name != "training_args.bin"]
    return bool(pickles) and not any(folder.glob("*.safetensors"))


def check_weights(folder: Path, allow_pickle: bool) -> None:
    """Safetensors only, unless ``allow_pickle``: a folder with nothing but pickle weights (``.bin``) is one
    line. Pickle weights can run code when loaded, so opting in is logged."""
    if allow_pickle:
        log.warning(
            "%s: allow_pickle is set: pickle weights (.bin) run code when loaded; load only what you trust",
            folder,
        )
        return
    if only_pickle_weights(folder):
        raise UserError(
            f"{folder}: only pickle weights (.bin) found; convert to safetensors, or opt in with "
            "`allow_pickle: true` where this model is configured (pickle runs code when loaded)"
        )
