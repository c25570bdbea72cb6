"""Tiny Llama pools written in a test: a base and experts whose task vectors the test chooses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

EXPERTS = ("a", "b", "c")
TaskVector = Callable[[torch.Size, torch.Generator], torch.Tensor]


def write_pool(root: Path, task_vector: TaskVector, experts: Sequence[str] = EXPERTS) -> Path:
    """A tiny Llama base and ``experts``, each base + ``task_vector(shape, generator)`` per tensor."""
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    for name in ("base", *experts):
        model.save_pretrained(root / name)
        tensors = (
            base if name == "base" else {k: b + task_vector(b.shape, generator) for k, b in base.items()}
        )
        save_file(tensors, str(root / name / "model.safetensors"), metadata={"format": "pt"})
    return root
