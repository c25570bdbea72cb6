"""The training loop shared by every zoo model: mixture sampling, masked loss, warmup + cosine."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from transformers import PreTrainedModel

from mergesearch.backends.base import common_prefix
from mergesearch_zoo.corpus import Example
from mergesearch_zoo.recipe import TrainSpec


def collate(batch: list[Example], pad_id: int, loss_on_prompt: bool) -> dict[str, torch.Tensor]:
    """Right-pad a batch; labels are -100 on padding and, unless asked, on the prompt."""
    width = max(len(e.prompt_ids) + len(e.target_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ex in enumerate(batch):
        ids = ex.prompt_ids + ex.target_ids
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
        first = 1 if loss_on_prompt else len(ex.prompt_ids)
        labels[row, first : len(ids)] = torch.tensor(ids[first:])
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def full_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def target_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The causal LM loss computed with logits only where a label is set: with a 49k vocabulary and short
    responses, the full logits tensor is most of a step's cost. Equal to ``model(**batch).loss``."""
    hidden = model.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    return _labelled_loss(model, hidden, batch["labels"])


def _labelled_loss(model: PreTrainedModel, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The causal LM loss from the last hidden states, with logits only where a label is set."""
    labels = labels[:, 1:]
    keep = labels != -100
    logits = model.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), labels[keep])


class FrozenStackLoss:
    """``target_loss`` for a model whose embeddings and lower ``frozen`` decoder layers do not learn.

    Their output for an example never changes, so it is computed once per distinct example (and shared by
    every expert trained from the same base with this object) and each step runs only the learning layers
    on it, the batch's common opening (a chat template's system prompt) once: the same loss and gradients
    (a test) at a fraction of the compute."""

    # SmolLM2's chat template opens every chat with the same 24 tokens: run once, an aligned step took
    # 2.49 s instead of 3.05 s (2 cores, 16 rows ~90 tokens wide, on the remembered lower layers).
    def __init__(self, frozen: int, opening_min: int = 16) -> None:
        self.frozen = frozen
        self.opening_min = opening_min
        self._hidden: dict[tuple[int, ...], torch.Tensor] = {}

    def __call__(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        layers = model.model.layers
        if any(p.requires_grad for layer in layers[: self.frozen] for p in layer.parameters()):
            raise ValueError(f"FrozenStackLoss: a parameter of the lower {self.frozen} layers learns")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        lengths = mask.sum(dim=1).tolist()
        keys = [tuple(ids[row, :n].tolist()) for row, n in enumerate(lengths)]
        self._remember(
            model, ids, mask, [row for row, key in enumerate(keys) if key not in self._hidden], keys
        )
        hidden = torch.zeros(*ids.shape, model.config.hidden_size, dtype=model.dtype)
        for row, key in enumerate(keys):
            hidden[row, : lengths[row]] = self._hidden[key]
        opening = common_opening(ids, min(lengths) - 1)
        with _only_layers(model, layers[self.frozen :]):
            if opening >= self.opening_min:
                last = run_opening_once(model, opening, mask, inputs_embeds=hidden)
            else:
                last = model.model(
                    inputs_embeds=hidden, attention_mask=mask, use_cache=False
                ).last_hidden_state
        return _labelled_loss(model, last, batch["labels"])

    def _remember(self, model, ids, mask, rows: list[int], keys: list[tuple[int, ...]]) -> None:
        """The lower layers' output for ``rows`` (the batch's examples not seen before)."""
        if not rows:
            return
        with (
            torch.no_grad(),
            _only_layers(model, model.model.layers[: self.frozen], norm=torch.nn.Identity()),
        ):
            out = model.model(input_ids=ids[rows], attention_mask=mask[rows], use_cache=False)
        for index, row in enumerate(rows):
            self._hidden[keys[row]] = out.last_hidden_state[index, : len(keys[row])].clone()


@contextmanager
def _only_layers(model: PreTrainedModel, layers, norm: torch.nn.Module | None = None) -> Iterator[None]:
    """``model.model`` runs just ``layers`` (and ``norm`` in place of its final norm) inside the block, as
    a model of its own: its attention layers are numbered from 0 (a key-value cache's slots)."""
    inner = model.model
    saved = inner.layers, inner.norm, [layer.self_attn.layer_idx for layer in layers]
    inner.layers = torch.nn.ModuleList(layers)
    inner.norm = norm if norm is not None else inner.norm
    for index, layer in enumerate(layers):
        layer.self_attn.layer_idx = index
    try:
        yield
    finally:
        inner.layers, inner.norm, numbers = saved
        for layer, number in zip(layers, numbers, strict=True):
            layer.self_attn.layer_idx = number


# A batch whose examples all open with this many tokens or more (the guard's policy preamble: 121 of its
# ~200, a guard step 1.87x faster) runs that opening once, not once per row; short openings (the toy chat
# template's few tokens) are left to the single forward call.
SHARED_PREFIX_MIN = 32


def shared_prefix(batch: list[Example]) -> int:
    """How many opening tokens every example of ``batch`` has in common (prompt tokens only)."""
    return common_prefix([example.prompt_ids for example in batch])


def prefix_once_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor], prefix: int) -> torch.Tensor:
    """``target_loss`` with the batch's shared opening (``prefix`` tokens) run once (``run_opening_once``).
    The same loss as ``model(**batch).loss`` (a test compares values and gradients), at a fraction of the
    tokens."""
    hidden = run_opening_once(model, prefix, batch["attention_mask"], input_ids=batch["input_ids"])
    return _labelled_loss(model, hidden, batch["labels"])


def run_opening_once(
    model: PreTrainedModel, prefix: int, mask: torch.Tensor, **inputs: torch.Tensor
) -> torch.Tensor:
    """``model.model``'s last hidden states for one batch of ``inputs`` (``input_ids`` or
    ``inputs_embeds``) whose rows share their first ``prefix`` positions: those run once, their keys and
    values repeated for every row. Causal attention never lets the opening see what follows it, so its
    hidden states are the same in every row, and gradients reach it through the cache."""
    ((name, values),) = inputs.items()
    rows, width = values.shape[:2]
    opening = model.model(**{name: values[:1, :prefix]}, use_cache=True)
    cache = opening.past_key_values
    cache.batch_repeat_interleave(rows)
    rest = model.model(
        **{name: values[:, prefix:]},
        attention_mask=mask,
        position_ids=torch.arange(prefix, width).expand(rows, -1),
        past_key_values=cache,
    ).last_hidden_state
    return torch.cat([opening.last_hidden_state.expand(rows, -1, -1), rest], dim=1)


def common_opening(ids: torch.Tensor, limit: int) -> int:
    """How many leading positions every row of ``ids`` shares, at most ``limit``."""
    differs = (ids[:, :limit] != ids[:1, :limit]).any(dim=0).nonzero()
    return int(differs[0]) if len(differs) else limit


def lr_factor(step: int, spec: TrainSpec) -> float:
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def mixture_batches(
    components: dict[str, list[Example]], spec: TrainSpec, seed: int
) -> Iterator[list[Example]]:
    """Endless batches of ``spec.batch_size`` examples: each row's component drawn by ``spec.mixture``'s
    shares, then an example of it uniformly (the same draws for the same seed)."""
    rng = np.random.default_rng(seed)
    names = sorted(spec.mixture)
    probs = np.array([spec.mixture[n] for n in names], dtype=np.float64)
    probs /= probs.sum()
    while True:
        picks = rng.choice(len(names), size=spec.batch_size, p=probs)
        yield [components[names[k]][rng.integers(len(components[names[k]]))] for k in picks]


def train(
    model: PreTrainedModel,
    components: dict[str, list[Example]],
    spec: TrainSpec,
    seed: int,
    pad_id: int,
    log: Callable[[str], None],
    label: str,
    loss_of: Callable[[PreTrainedModel, dict[str, torch.Tensor]], torch.Tensor] = full_loss,
    opening_once: bool = False,
) -> float:
    """Train ``model``'s trainable parameters in place on ``spec``'s mixture; returns the mean loss of the
    last 10% of steps. ``opening_once``: a batch with a long shared opening runs it once
    (``prefix_once_loss``: the same loss, other rounding, so a builder that turns it on changes its bytes
    and its version)."""
    batches = mixture_batches(components, spec, seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=spec.lr, betas=(0.9, 0.98), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, spec))
    model.train()
    tail_losses: list[float] = []
    started = time.monotonic()
    for step, batch in zip(range(spec.steps), batches):
        collated = collate(batch, pad_id, spec.loss_on_prompt)
        prefix = shared_prefix(batch) if opening_once else 0
        loss = (
            prefix_once_loss(model, collated, prefix)
            if prefix >= SHARED_PREFIX_MIN
            else loss_of(model, collated)
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= spec.steps * 0.9:
            tail_losses.append(loss.item())
        if (step + 1) % max(1, spec.steps // 5) == 0 or step + 1 == spec.steps:
            log(
                f"  {label}: step {step + 1}/{spec.steps}  loss {loss.item():.3f}  "
                f"({time.monotonic() - started:.0f} s)"
            )
    model.eval()
    return float(np.mean(tail_losses)) if tail_losses else float("nan")
