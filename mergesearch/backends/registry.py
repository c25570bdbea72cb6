"""Backends by name: what runs a model (the live merge, or the guard model). Both take new weights in
place. A factory receives the folder and the whole ``BackendConfig`` (engine settings included)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergesearch.backends.base import Backend
from mergesearch.config import BackendConfig
from mergesearch.registry import BACKENDS

BackendFactory = Callable[..., Backend]
register_backend = BACKENDS.register


@register_backend("hf")
def _hf(path: Path, config: BackendConfig, name: str, **options: Any) -> Backend:
    from mergesearch.backends.hf import HFBackend

    return HFBackend.from_config(path, config, name=name, **options)


@register_backend("vllm")
def _vllm(path: Path, config: BackendConfig, name: str, **options: Any) -> Backend:
    from mergesearch.backends.vllm import VLLMBackend

    return VLLMBackend.from_pretrained(path, config, name=name, **options)


def make_backend(path: Path, config: BackendConfig, name: str = "model", **options: Any) -> Backend:
    """``options``: ``allow_pickle`` (load .bin weights), ``chat_template_required`` (False for a guard
    model, prompted with raw text), ``fixed_weights`` (a judge's model: never merged into, so what it
    computes for a shared opening may be kept across calls)."""
    factory: BackendFactory = BACKENDS.get(config.kind)
    return factory(path, config, name, **options)
