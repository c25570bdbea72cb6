"""The training loop shared by every zoo model: mixture sampling, masked loss, warmup + cosine."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from transformers import PreTrainedModel

from mergesearch.zoo.corpus import Example
from mergesearch.zoo.recipe import TrainSpec


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
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    logits = model.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), labels[keep])


def lr_factor(step: int, spec: TrainSpec) -> float:
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train(
    model: PreTrainedModel,
    components: dict[str, list[Example]],
    spec: TrainSpec,
    seed: int,
    pad_id: int,
    log: Callable[[str], None],
    label: str,
    loss_of: Callable[[PreTrainedModel, dict[str, torch.Tensor]], torch.Tensor] = full_loss,
) -> float:
    """Train ``model``'s trainable parameters in place on ``spec``'s mixture; returns the mean loss of the
    last 10% of steps."""
    rng = np.random.default_rng(seed)
    names = sorted(spec.mixture)
    probs = np.array([spec.mixture[n] for n in names], dtype=np.float64)
    probs /= probs.sum()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=spec.lr, betas=(0.9, 0.98), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, spec))
    model.train()
    tail_losses: list[float] = []
    started = time.monotonic()
    for step in range(spec.steps):
        picks = rng.choice(len(names), size=spec.batch_size, p=probs)
        batch = [components[names[k]][rng.integers(len(components[names[k]]))] for k in picks]
        loss = loss_of(model, collate(batch, pad_id, spec.loss_on_prompt))
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
