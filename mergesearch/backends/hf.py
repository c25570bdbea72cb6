"""The transformers backend: batched greedy chat generation and batched log-likelihood scoring.

Prompts are rendered with the model's own chat template. Batches are left-padded so every row's
continuation starts (generation) or ends (scoring) at the same column; scoring reads each
continuation's token log-probabilities, as lm-eval's ``HFLM.loglikelihood`` does (same tokens: see
``mergesearch.backends.base.encode_pair``; same left truncation to the model's context length).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from mergesearch.backends.base import (
    Prompt,
    Settled,
    SettleRule,
    check_weights,
    common_prefix,
    encode_pair,
    render_chat,
    reply_length,
    require_chat_template,
    rules_per_prompt,
)
from mergesearch.config import BackendConfig, TaskVectorsConfig
from mergesearch.errors import UserError
from mergesearch.runtime import resolve_device

if TYPE_CHECKING:
    from mergesearch.merge.recipe import MergeRecipe
    from mergesearch.merge.resident import ResidentMerger

TOKENIZER_UNSET = 1000000000000000019884624838656  # transformers' model_max_length when none is known
# A generation batch's shared opening shorter than this runs with the rest: one more forward call
# costs more than a few tokens. SmolLM2's chat template opens with 24 (its system turn).
SHARED_OPENING_MIN = 8


class HFBackend:
    """A resident transformers model: load once, then generate, score, and take new weights in place."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 64,
        max_new_tokens: int = 32,
        name: str = "model",
        chat_template_required: bool = True,
        prefix_reuse: bool = True,
        fixed_weights: bool = False,
    ) -> None:
        if chat_template_required:
            require_chat_template(tokenizer, name)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.prefix_reuse = prefix_reuse
        # A judge's model (``fixed_weights``) never takes new weights, so the last opening it ran is kept
        # (its token ids and KV cache) for later batches to reuse what they share of it: a guard's
        # policy, about 200 tokens, otherwise run once per call (``_shared_opening``).
        self.fixed_weights = fixed_weights
        self.kept_opening: tuple[tuple[int, ...], Any] | None = None
        self.max_new_tokens = max_new_tokens
        self.name = name
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_config(cls, path: str | Path, config: BackendConfig, **kwargs: Any) -> HFBackend:
        """A backend with the config's device, dtype, batch size and reply length."""
        return cls.from_pretrained(
            path,
            device=config.device,
            dtype=getattr(torch, config.dtype or "float32"),
            batch_size=config.batch_size,
            max_new_tokens=config.max_new_tokens,
            prefix_reuse=config.prefix_reuse,
            **kwargs,
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str = "auto",
        dtype: torch.dtype = torch.float32,
        allow_pickle: bool = False,
        **kwargs: Any,
    ) -> HFBackend:
        """Load a local model folder: safetensors weights only, unless ``allow_pickle`` (logged)."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: not a Hugging Face model folder (no config.json)")
        check_weights(path, allow_pickle)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, use_safetensors=None if allow_pickle else True
        ).to(resolve_device(device))
        return cls(model, tokenizer, name=kwargs.pop("name", path.name), **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def render(self, prompt: Prompt) -> str:
        """The chat-templated text that precedes the assistant's reply."""
        return render_chat(self.tokenizer, prompt)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        raw: bool = False,
        settled: Settled = None,
    ) -> list[str]:
        """Replies to each prompt, in order; batches are formed from similar reply budgets, then prompt
        lengths (``_length_batches``). Greedy unless ``temperature`` > 0, then sampled from a stream
        seeded by ``seed`` (reproducible). ``raw``: the prompts are already rendered text (a guard
        prompt, say), not chat turns. ``settled`` (one rule, or one per prompt): a reply stops at its
        rule's length, or once its rule says so (checked after every token; a batch ends when all of its
        replies have)."""
        encoded = [self._encode(p if raw else self.render(p)) for p in prompts]
        return self._generated(encoded, max_new_tokens, temperature, seed, settled)[0]

    @torch.inference_mode()
    def generate_with_first_logprobs(
        self, texts: Sequence[str], token_ids: Sequence[int], max_new_tokens: int | None = None
    ) -> tuple[list[str], list[list[float]]]:
        """Greedy replies to rendered ``texts``, and the log-probabilities of ``token_ids`` as each reply's
        first token, from the same forward passes: a guard's verdict and its probability in one pass (a
        second pass over the prompts would cost as much as the generation; the opening a batch shares,
        a guard's policy, runs once either way)."""
        return self._generated([self._encode(t) for t in texts], max_new_tokens, first_token_ids=token_ids)

    def _generated(
        self,
        encoded: Sequence[list[int]],
        max_new_tokens: int | None,
        temperature: float = 0.0,
        seed: int | None = None,
        settled: Settled = None,
        first_token_ids: Sequence[int] | None = None,
    ) -> tuple[list[str], list[list[float]]]:
        """``generate`` on token ids; with ``first_token_ids``, also those tokens' log-probabilities at
        each reply's first step (from the logits that step computed). Greedy decoding runs ``_greedy``
        (it drops finished rows, which transformers' ``generate`` keeps to the batch's end); sampling, or
        a model whose generation config changes greedy tokens, runs transformers' ``generate``."""
        if temperature > 0 and seed is not None:
            torch.manual_seed(seed)
        ours = temperature == 0 and not changes_greedy(self.model.generation_config)
        rules = rules_per_prompt(settled, len(encoded))
        lengths = [reply_length(max_new_tokens, self.max_new_tokens, rule) for rule in rules]
        replies: list[str] = [""] * len(encoded)
        firsts: list[list[float]] = [[] for _ in encoded] if first_token_ids is not None else []
        for rows in self._length_batches(encoded, lengths):
            prompts = [encoded[i] for i in rows]
            opening = self._shared_opening(prompts)
            ids, mask = self._left_padded(prompts, opening)
            batch_lengths = [lengths[i] for i in rows]
            batch = _Batch(ids, mask, opening, batch_lengths, [rules[i] for i in rows])
            new, first = (
                self._greedy(batch)
                if ours
                else self._transformers_generate(batch, temperature, first_token_ids is not None)
            )
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            chosen = self._chosen(first, first_token_ids) if first is not None and first_token_ids else None
            for r, i in enumerate(rows):
                replies[i] = _cut(self.tokenizer, texts[r], new[r], batch_lengths[r]).strip()
                if chosen is not None:
                    firsts[i] = chosen[r].tolist()
        return replies, firsts

    def _chosen(self, logits: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
        """Log-probabilities of ``token_ids`` from next-token ``logits`` ([rows, vocab])."""
        wanted = torch.tensor(list(token_ids), device=logits.device)
        return torch.log_softmax(logits.float(), dim=-1)[:, wanted]

    def _greedy(self, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding of one batch, each row dropped from it, KV cache included, as soon as it is
        done: end of text, its length, or its rule settles it. On a CPU a decoding step's cost is mostly
        reading the weights, little per row, so a row that stays in the batch after it is done costs
        little, but early exit leaves most rows of a batch done well before the last (docs/benchmarks,
        one-off measurements; docs/benchmarks/fitness-efficiency.md). Tokens as
        transformers' greedy ``generate`` picks them (``test_backends``). Returns the new tokens ([rows,
        longest], padded after each row's end) and the first step's logits ([rows, vocab])."""
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        ids, mask, opening, lengths, rules = batch.ids, batch.mask, batch.opening, batch.lengths, batch.rules
        rows = ids.shape[0]
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        cache = self._opening_cache(ids[:1, :opening], rows) if opening else None
        out = self.model(
            input_ids=ids[:, opening:],
            attention_mask=mask,
            position_ids=positions[:, opening:],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache, logits = out.past_key_values, out.logits[:, -1]
        first = logits
        new = torch.full((rows, max(lengths)), pad, dtype=torch.long, device=ids.device)
        live = torch.arange(rows, device=ids.device)  # the batch row of each row still decoding
        limit = torch.tensor(list(lengths), device=ids.device)
        position = positions[:, -1]
        for step in range(max(lengths)):
            token = logits.argmax(-1)
            new[live, step] = token
            live_rules = [rules[row] for row in live.tolist()]
            done = (limit[live] <= step + 1) | _settled_by_rules(
                self.tokenizer, new[live, : step + 1], live_rules, step + 1
            )
            if eos is not None:
                done |= token == eos
            if bool(done.all()):
                break
            if bool(done.any()):
                kept = (~done).nonzero().squeeze(1)
                cache.batch_select_indices(kept)
                live, token, mask, position = live[kept], token[kept], mask[kept], position[kept]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            position = position + 1
            logits = self.model(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=position[:, None],
                past_key_values=cache,
                use_cache=True,
            ).logits[:, -1]
        return new, first

    def _transformers_generate(
        self, batch: _Batch, temperature: float, scored: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One batch through transformers' ``generate`` (sampling, with ``top_k``/``top_p`` off; or a model
        whose generation config changes greedy tokens), rows stopping as ``_greedy``'s do; the new
        tokens (a finished row's are padding) and, when ``scored``, the first step's logits."""
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
            if temperature > 0
            else {"do_sample": False}
        )
        ids, mask, opening, lengths, rules = batch.ids, batch.mask, batch.opening, batch.lengths, batch.rules
        width = ids.shape[1]
        stopping = (
            {"stopping_criteria": StoppingCriteriaList([_Settled(rules, lengths, self.tokenizer, width)])}
            if any(map(_reads_text, rules)) or len(set(lengths)) > 1
            else {}
        )
        cached = {"past_key_values": self._opening_cache(ids[:1, :opening], len(ids))} if opening else {}
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max(lengths),
            **cached,
            **stopping,
            **sampling,
            output_logits=scored,
            return_dict_in_generate=True,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        return out.sequences[:, width:], out.logits[0] if scored else None

    @torch.inference_mode()
    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """Sum of log p(continuation | context) and whether it is the greedy continuation: lm-eval's
        ``HFLM.loglikelihood``, token for token (``encode_pair``; context and continuation left-truncated
        together to ``max_length`` + 1 tokens, the last one never fed). Rows are left-padded so every
        continuation ends at the last column and only its positions' logits are materialised."""
        pairs = [encode_pair(self.tokenizer, ctx, cont) for ctx, cont in requests]
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)  # an empty continuation
        inputs: dict[int, list[int]] = {}
        for i, (context, continuation) in enumerate(pairs):
            if len(continuation) > self.max_length:
                raise UserError(
                    f"{self.name}: a continuation of {len(continuation)} tokens is longer than the "
                    f"model's context ({self.max_length})"
                )
            if continuation:
                inputs[i] = (context + continuation)[-(self.max_length + 1) :][:-1]
        shared = self._shared_contexts(pairs, inputs) if self.prefix_reuse else []
        for groups in self._group_batches(shared):
            for i, scored in self._prefix_reused(pairs, groups).items():
                results[i] = scored
                del inputs[i]
        order = list(inputs)
        for rows in self._length_batches([inputs[i] for i in order]):
            rows = [order[r] for r in rows]
            ids, mask = self._left_padded([inputs[i] for i in rows])
            keep = max(len(pairs[i][1]) for i in rows)
            logits = self._forward(ids, mask, keep)  # [rows, keep, vocab]: the last `keep` positions
            logprobs = torch.log_softmax(logits.float(), dim=-1)  # each position predicts the next token
            for r, i in enumerate(rows):
                continuation = pairs[i][1]
                results[i] = _scored(logprobs[r, keep - len(continuation) :], continuation)
        return results

    def _shared_contexts(
        self, pairs: Sequence[tuple[list[int], list[int]]], inputs: Mapping[int, list[int]]
    ) -> list[list[int]]:
        """Requests (their indices) that share one context and need no truncation, in groups of two or
        more: the choices of one question."""
        by_context: dict[tuple[int, ...], list[int]] = {}
        for i in inputs:
            context, continuation = pairs[i]
            if len(context) + len(continuation) <= self.max_length:
                by_context.setdefault(tuple(context), []).append(i)
        return [group for group in by_context.values() if len(group) > 1]

    def _group_batches(self, groups: Sequence[list[int]]) -> Iterator[list[list[int]]]:
        """Groups, whole, in batches of about ``batch_size`` continuations."""
        batch: list[list[int]] = []
        for group in groups:
            if batch and sum(map(len, batch)) + len(group) > self.batch_size:
                yield batch
                batch = []
            batch.append(group)
        if batch:
            yield batch

    def _prefix_reused(
        self, pairs: Sequence[tuple[list[int], list[int]]], groups: Sequence[list[int]]
    ) -> dict[int, tuple[float, bool]]:
        """lm-eval's log-likelihoods of requests grouped by context, each context run once (prefix
        reuse): one forward over the contexts (left-padded) keeps their KV cache and the logits that
        predict each continuation's first token; the cache is repeated per continuation, and one more
        forward feeds the continuations but their last token, right-padded. The opening the contexts
        share (a chat template's system turn: a third of a short question) runs once for the batch, as
        a generation batch's does. Parity with the plain path (and lm-eval): ``test_lm_eval_parity``."""
        contexts = [pairs[group[0]][0] for group in groups]
        opening = self._shared_opening(contexts)
        ids, mask = self._left_padded(contexts, opening)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        out = self.model(
            input_ids=ids[:, opening:],
            attention_mask=mask,
            position_ids=positions[:, opening:],
            past_key_values=self._opening_cache(ids[:1, :opening], len(contexts)) if opening else None,
            use_cache=True,
            logits_to_keep=1,
        )
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # [groups, vocab]
        rows = [(g, i) for g, group in enumerate(groups) for i in group]
        continuations = [pairs[i][1] for _, i in rows]
        width = max(map(len, continuations)) - 1
        later = None
        if width > 0:
            which = torch.tensor([g for g, _ in rows], device=ids.device)
            cache = out.past_key_values
            cache.batch_select_indices(which)  # one copy of its context's cache per continuation
            fed = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
            fed_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, continuation in enumerate(continuations):
                fed[r, : len(continuation) - 1] = torch.tensor(continuation[:-1], dtype=torch.long)
                fed_mask[r, : len(continuation) - 1] = 1
            fed, fed_mask = fed.to(ids.device), fed_mask.to(ids.device)
            starts = mask.sum(-1)[which]  # each context's length: where its continuation's positions begin
            logits = self.model(
                input_ids=fed,
                attention_mask=torch.cat([mask[which], fed_mask], dim=1),
                position_ids=starts[:, None] + torch.arange(width, device=ids.device),
                past_key_values=cache,
            ).logits
            later = torch.log_softmax(logits.float(), dim=-1)  # [rows, width, vocab]
        results = {}
        for r, ((g, i), continuation) in enumerate(zip(rows, continuations)):
            steps = first[g][None]
            if len(continuation) > 1:
                steps = torch.cat([steps, later[r, : len(continuation) - 1]])  # type: ignore[index]
            results[i] = _scored(steps, continuation)
        return results

    @property
    def max_length(self) -> int:
        """The context length, as lm-eval's ``resolve_max_length`` finds it (config, then tokenizer)."""
        config = getattr(self.model.config, "text_config", None) or self.model.config
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            if getattr(config, attr, None) is not None:
                return int(getattr(config, attr))
        model_max = getattr(self.tokenizer, "model_max_length", None)
        if model_max is not None and model_max != TOKENIZER_UNSET:
            return int(model_max)
        return 2048

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
        """Logits of the last ``keep`` positions; positions count from each row's first real token, so
        a left-padded row computes what it would alone."""
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        return self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep
        ).logits

    def score_choices(self, prompt: Prompt, choices: Sequence[str]) -> list[float]:
        """Log-likelihood of each choice as the assistant's reply to ``prompt``."""
        context = self.render(prompt)
        return [ll for ll, _ in self.loglikelihood([(context, c) for c in choices])]

    def resident_merger(
        self,
        base: Path,
        experts: Mapping[str, Path],
        dtype: str,
        sort_magnitudes: bool = False,
        pool: str = "gpu",
        task_vectors: TaskVectorsConfig | None = None,
    ) -> ResidentMerger:
        """The merge pool, merging on this model's device, ready to write merges into it."""
        from mergesearch.merge.resident import ResidentMerger

        return ResidentMerger(
            base,
            experts,
            dtype=dtype,
            device=self.device,
            sort_magnitudes=sort_magnitudes,
            pool=pool,
            task_vectors=task_vectors,
        )

    def merge_from(self, merger: ResidentMerger, recipe: MergeRecipe, seed: int | None = None) -> None:
        """Write a merge straight into this model's parameters (no copy of the model)."""
        if self.fixed_weights:
            raise ValueError(f"{self.name}: a fixed-weights backend (a judge's) takes no merges")
        merger.merge_into(self.model, recipe, seed)

    def close(self) -> None:
        """Nothing runs outside this process; the weights go with the last reference."""

    def _left_padded(
        self, sequences: Sequence[Sequence[int]], opening: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, padded so every row's next token is the last column: on the
        left, or after a first ``opening`` tokens that every row shares, which then fill the same
        columns in every row (one row's KV cache serves all). Positions follow the mask, so the padding
        changes no row's positions."""
        width = max(len(seq) for seq in sequences)
        ids = torch.full((len(sequences), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for r, seq in enumerate(sequences):
            rest = width - len(seq) + opening
            ids[r, :opening] = torch.tensor(seq[:opening], dtype=torch.long)
            ids[r, rest:] = torch.tensor(seq[opening:], dtype=torch.long)
            mask[r, :opening] = 1
            mask[r, rest:] = 1
        return ids.to(self.device), mask.to(self.device)

    def _shared_opening(self, sequences: Sequence[Sequence[int]]) -> int:
        """How many first tokens (a chat template's system turn, say) the rows of a generation batch
        share, to run once (``prefix_reuse``); 0 when that is under ``SHARED_OPENING_MIN``. Every row
        keeps at least one token of its own for the first decoding step. A batch of one row shares
        nothing, unless the backend has fixed weights: then it shares what it has in common with the
        kept opening (``_opening_cache``), and so does every batch once one is kept."""
        if not self.prefix_reuse or (len(sequences) < 2 and not self.fixed_weights):
            return 0
        kept = [self.kept_opening[0]] if self.kept_opening is not None else []
        shared = min(common_prefix([*kept, *sequences]), min(len(seq) for seq in sequences) - 1)
        if kept and shared < SHARED_OPENING_MIN and len(sequences) > 1:  # nothing in common with it
            shared = min(common_prefix(sequences), min(len(seq) for seq in sequences) - 1)
        return shared if shared >= SHARED_OPENING_MIN else 0

    def _opening_cache(self, opening: torch.Tensor, rows: int) -> Any:
        """The KV cache of a batch's shared opening (``[1, tokens]``), run once and repeated per row.
        With fixed weights, an opening the kept one starts with is copied from it, and any other, once
        run, is kept in its place."""
        ids = tuple(opening[0].tolist())
        if self.kept_opening is not None and self.kept_opening[0][: len(ids)] == ids:
            cache = copy.deepcopy(self.kept_opening[1])  # decoding extends the copy; the kept one stays
            if len(ids) < len(self.kept_opening[0]):
                cache.crop(len(ids) - len(self.kept_opening[0]))  # transformers: a negative count drops
        else:
            cache = self.model(input_ids=opening, use_cache=True, logits_to_keep=1).past_key_values
            if self.fixed_weights:
                self.kept_opening = (ids, copy.deepcopy(cache))
        cache.batch_repeat_interleave(rows)
        return cache

    def _length_batches(
        self, sequences: Sequence[Sequence[int]], budgets: Sequence[int] | None = None
    ) -> Iterator[list[int]]:
        """Rows in batches of ``batch_size``, similar prompt lengths together (less padding). With the
        rows' reply ``budgets`` (tokens each may generate), longest budgets first: a batch decodes as
        many steps as its longest reply, and cutting the sorted rows in order gives the fewest steps in
        all, so rows that stop early (a guard's opening) share batches rather than wait in long ones."""
        budget = budgets or [0] * len(sequences)
        order = sorted(range(len(sequences)), key=lambda i: (-budget[i], len(sequences[i])))
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]


@dataclass(frozen=True)
class _Batch:
    """One batch to decode: left-padded ids and mask (the first ``opening`` columns shared by every row,
    whose KV cache runs once), and each row's reply length and early-exit rule."""

    ids: torch.Tensor
    mask: torch.Tensor
    opening: int
    lengths: Sequence[int]
    rules: Sequence[SettleRule | None]


class _Settled(StoppingCriteria):
    """Per row: has the reply generated so far (after the prompt's ``width`` columns) reached its length,
    or does its rule call it settled? Rows without a rule run to their length (or end of text)."""

    def __init__(
        self,
        rules: list[SettleRule | None],
        lengths: list[int],
        tokenizer: PreTrainedTokenizerBase,
        width: int,
    ) -> None:
        self.rules, self.lengths, self.tokenizer, self.width = rules, lengths, tokenizer, width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        new = input_ids[:, self.width :]
        tokens = new.shape[1]
        at_length = torch.tensor([tokens >= length for length in self.lengths], device=input_ids.device)
        return at_length | _settled_by_rules(self.tokenizer, new, self.rules, tokens)


def _settled_by_rules(
    tokenizer: PreTrainedTokenizerBase, replies: torch.Tensor, rules: Sequence[SettleRule | None], tokens: int
) -> torch.Tensor:
    """Which rows of ``replies`` (their first ``tokens`` new tokens) their rule calls settled, reading the
    reply so far; a row without a rule, or whose rule only caps its length, is not (its length is
    checked apart). Both decoders stop rows by it."""
    settled = torch.zeros(len(rules), dtype=torch.bool, device=replies.device)
    read = [row for row, rule in enumerate(rules) if _reads_text(rule)]
    if read:
        texts = tokenizer.batch_decode(replies[read], skip_special_tokens=True)
        for row, text in zip(read, texts):
            settled[row] = bool(rules[row](text.strip(), tokens))  # type: ignore[misc]
    return settled


def _reads_text(rule: SettleRule | None) -> bool:
    """A rule that reads the reply (a guard's opening only caps its row's length)."""
    return rule is not None and rule.reads_text


# Generation-config settings with which transformers' greedy ``generate`` picks other tokens than the
# logits' argmax; a model that sets any of them is decoded by ``generate`` itself.
GREEDY_CHANGERS = (
    "repetition_penalty",
    "encoder_repetition_penalty",
    "no_repeat_ngram_size",
    "bad_words_ids",
    "min_length",
    "min_new_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "suppress_tokens",
    "begin_suppress_tokens",
    "sequence_bias",
    "exponential_decay_length_penalty",
)


def changes_greedy(config: GenerationConfig) -> bool:
    """Does ``config`` set anything that makes greedy tokens differ from the argmax (``GREEDY_CHANGERS``)?"""
    default = GenerationConfig()
    return any(getattr(config, name, None) != getattr(default, name, None) for name in GREEDY_CHANGERS)


def _cut(tokenizer: PreTrainedTokenizerBase, text: str, new: torch.Tensor, length: int) -> str:
    """A reply of a batch that ran longer than its own length, cut back to that length (a finished row
    goes on receiving tokens until the batch stops; they are pad tokens unless it stopped on length)."""
    if new.shape[0] <= length:
        return text
    return tokenizer.decode(new[:length], skip_special_tokens=True)


def _scored(steps: torch.Tensor, continuation: list[int]) -> tuple[float, bool]:
    """lm-eval's answer for one continuation from the log-probabilities at its positions
    ([tokens, vocab]): their sum over its tokens, and whether each token is the greedy one."""
    target = torch.tensor(continuation, device=steps.device)
    total = steps.gather(1, target[:, None]).sum().item()
    return total, bool((steps.argmax(-1) == target).all().item())
