"""The paper's model folders as they are before a download finishes: Meta-Llama-3-8B, its Instruct model,
OpenBioLLM-8B and Llama-Guard-3-8B as config.json + tokenizer files, no weights (what a rehearsal reads).

Written here, not fetched (no hub on this project's machines): Llama 3 shapes (``LLAMA3_8B``), a
byte-level BPE tokenizer trained on this checkout's docs with Llama 3's vocabulary size and its special
tokens at their ids (128000 ``<|begin_of_text|>``, 128009 ``<|eot_id|>``, ...), Llama 3's chat template
on the instruct models, a Llama Guard 3 style template on the guard, and none on the pretrained base.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "torch_dtype": "bfloat16",
}
SPECIAL = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128006: "<|start_header_id|>"}
SPECIAL |= {128007: "<|end_header_id|>", 128009: "<|eot_id|>"}
LLAMA3_TEMPLATE = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GUARD_CATEGORIES = (
    "S1: Violent Crimes.\nS2: Non-Violent Crimes.\nS3: Sex Crimes.\nS4: Child Exploitation.\n"
    "S5: Defamation.\n"
    "S6: Specialized Advice.\nS7: Privacy.\nS8: Intellectual Property.\nS9: Indiscriminate Weapons.\n"
    "S10: Hate.\nS11: Self-Harm.\nS12: Sexual Content.\nS13: Elections.\nS14: Code Interpreter Abuse."
)
GUARD_TEMPLATE = (
    "{% set role = 'Agent' if messages[-1]['role'] == 'assistant' else 'User' %}"
    "{{ bos_token }}<|start_header_id|>user<|end_header_id|>\n\nTask: Check if there is unsafe content in '"
    "{{ role }}' messages in conversations according our safety policy with the below categories.\n\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n" + GUARD_CATEGORIES + "\n<END UNSAFE CONTENT CATEGORIES>\n\n"
    "<BEGIN CONVERSATION>\n\n{% for message in messages %}"
    "{{ 'User' if message['role'] == 'user' else 'Agent' }}: {{ message['content'] | trim }}\n\n"
    "{% endfor %}<END CONVERSATION>\n\nProvide your safety assessment for ONLY THE LAST {{ role }} message "
    "in the above conversation:\n - First line must read 'safe' or 'unsafe'.\n - If unsafe, a second line "
    "must include a comma-separated list of violated categories.<|eot_id|>"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"  # in a literal: Jinja drops a last newline
)
# folder: (config changes, eos token, chat template)
FOLDERS = {
    "Meta-Llama-3-8B": ({}, "<|end_of_text|>", None),
    "Meta-Llama-3-8B-Instruct": ({"eos_token_id": 128009}, "<|eot_id|>", LLAMA3_TEMPLATE),
    "Llama3-OpenBioLLM-8B": ({"eos_token_id": 128009}, "<|eot_id|>", LLAMA3_TEMPLATE),
    "Llama-Guard-3-8B": ({"eos_token_id": 128009}, "<|eot_id|>", GUARD_TEMPLATE),
}
_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def llama3_tokenizer_json(vocab_size: int = LLAMA3_8B["vocab_size"], trained: int = 8000) -> str:
    """A Llama 3 style tokenizer.json: byte-level BPE (``trained`` tokens learnt from this checkout's docs,
    code and JSON results, so that JSON punctuation has tokens of its own, as in Llama 3's), unused
    filler entries up to id 127999, then the 256 special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    sources = [*(ROOT / "docs").rglob("*.md"), *(ROOT / "mergesearch").rglob("*.py")]
    sources += (ROOT / "benchmarks" / "results").glob("*.json")
    texts = [p.read_text(encoding="utf-8") for p in sorted(sources)]
    # Llama 3 learnt its vocabulary on text with much JSON: JSON punctuation runs are tokens of their own
    texts += [
        json.dumps([{"question": f"q{i}?", "choices": ["a", "b"], "answer": i % 2}], separators=s)
        for i in range(200)
        for s in ((",", ":"), (", ", ": "))
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=trained, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    first_special = vocab_size - 256
    for i in range(len(vocab), first_special):
        vocab[f"<|unused_{i}|>"] = i
    names = {
        i: SPECIAL.get(i, f"<|reserved_special_token_{i - first_special}|>")
        for i in range(first_special, vocab_size)
    }
    spec["added_tokens"] = [
        {
            "id": i,
            "content": name,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, name in names.items()
    ]
    spec["post_processor"] = json.loads(
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A $B",
            special_tokens=[("<|begin_of_text|>", 128000)],
        ).__getstate__()
    )
    return json.dumps(spec)


def write_paper_folders(out: Path) -> dict[str, Path]:
    """The four folders under ``out``: config.json, tokenizer.json, tokenizer_config.json,
    generation_config.json; no weights."""
    tokenizer = llama3_tokenizer_json()
    folders = {}
    for name, (changes, eos, template) in FOLDERS.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(LLAMA3_8B | changes, indent=1))
        (folder / "tokenizer.json").write_text(tokenizer)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<|begin_of_text|>",
            "eos_token": eos,
            "model_max_length": 8192,
            "clean_up_tokenization_spaces": False,
        }
        if template:
            config["chat_template"] = template
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
        eos_ids = sorted({128001, LLAMA3_8B["eos_token_id"], changes.get("eos_token_id", 128001)})
        generation = {"bos_token_id": 128000, "eos_token_id": eos_ids if len(eos_ids) > 1 else eos_ids[0]}
        (folder / "generation_config.json").write_text(json.dumps(generation, indent=1))
        folders[name] = folder
    return folders
