"""Model folders with real config.json files and real safetensors headers whose data is a hole in a
sparse file: a Llama-3-8B-shaped checkpoint that takes no disk, for memory plans (``mergesearch plan``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from paper_folders import LLAMA3_8B


def llama_tensors(config: dict) -> dict[str, list[int]]:
    """Every tensor name and shape of a Llama checkpoint with ``config``'s geometry."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * h // config["num_attention_heads"]
    shapes = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h]}
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        shapes |= {
            f"{prefix}.self_attn.q_proj.weight": [h, h],
            f"{prefix}.self_attn.k_proj.weight": [kv, h],
            f"{prefix}.self_attn.v_proj.weight": [kv, h],
            f"{prefix}.self_attn.o_proj.weight": [h, h],
            f"{prefix}.mlp.gate_proj.weight": [i, h],
            f"{prefix}.mlp.up_proj.weight": [i, h],
            f"{prefix}.mlp.down_proj.weight": [h, i],
            f"{prefix}.input_layernorm.weight": [h],
            f"{prefix}.post_attention_layernorm.weight": [h],
        }
    if not config.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = [v, h]
    return shapes


def shaped_checkpoint(folder: Path, config: dict = LLAMA3_8B, dtype: str = "BF16") -> Path:
    """``folder`` with config.json and a sparse model.safetensors: a real header, no data on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    header, offset = {}, 0
    width = {"BF16": 2, "F16": 2, "F32": 4}[dtype]
    for name, shape in llama_tensors(config).items():
        size = width
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(folder / "model.safetensors", "wb") as fh:
        fh.write(len(encoded).to_bytes(8, "little") + encoded)
        fh.truncate(8 + len(encoded) + offset)  # a hole: the data takes no disk
    return folder
