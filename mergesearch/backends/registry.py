"""Backends by name: what runs the live (merged) model. Both take new weights in place."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mergesearch.backends.base import Backend
from mergesearch.config import BackendConfig
from mergesearch.registry import BACKENDS

BackendFactory = Callable[[Path, BackendConfig, str], Backend]
register_backend = BACKENDS.register


@register_backend("hf")
def _hf(path: Path, config: BackendConfig, name: str) -> Backend:
    from mergesearch.backends.hf import HFBackend

    return HFBackend.from_pretrained(
        path,
        device=config.device,
        batch_size=config.batch_size,
        max_new_tokens=config.max_new_tokens,
        name=name,
    )


@register_backend("vllm")
def _vllm(path: Path, config: BackendConfig, name: str) -> Backend:
    from mergesearch.backends.vllm import VLLMBackend

    return VLLMBackend.from_pretrained(path, config, name=name)


def make_backend(path: Path, config: BackendConfig, name: str = "model") -> Backend:
    factory: BackendFactory = BACKENDS.get(config.kind)
    return factory(path, config, name)
