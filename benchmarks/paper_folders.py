"""The model folders the shipped GPU configs name, as they are before a download finishes: config.json +
tokenizer files, no weights (what a rehearsal reads). The paper's Meta-Llama-3-8B, its Instruct model,
OpenBioLLM-8B, Llama-Guard-3-8B, Mistral-7B-v0.2 and its Instruct model, MAmmoTH2-7B, and the Llama 3
math and code experts of ``llama3_8b_experts_gpu.yaml``.

Written here, not fetched (no hub on this project's machines): each family's shapes (``LLAMA3_8B``,
``MISTRAL_7B``), a byte-level BPE tokenizer trained on this checkout's text with the family's vocabulary
size and its special tokens at their ids (Llama 3: 128000 ``<|begin_of_text|>``, 128009 ``<|eot_id|>``;
Mistral: 0-2 ``<unk>``, ``<s>``, ``</s>``), the family's chat template on the instruct models (assumed
for MAmmoTH2 and the Llama 3 experts: their real files were not read), a Llama Guard 3 style template on
the guard, and none on the pretrained bases.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class Family:
    """A model family's shapes and tokenizer: its special tokens (id: text), first (Mistral) or last
    (Llama 3) in the vocabulary, and the one that begins a sequence."""

    config: dict
    specials: dict[int, str]
    bos: str


LLAMA3 = Family(
    LLAMA3_8B,
    {i: SPECIAL.get(i, f"<|reserved_special_token_{i - 128000}|>") for i in range(128000, 128256)},
    "<|begin_of_text|>",
)
MISTRAL = Family(MISTRAL_7B, {0: "<unk>", 1: "<s>", 2: "</s>"}, "<s>")
# folder: (family, config changes, eos token, chat template)
FOLDERS = {
    "Meta-Llama-3-8B": (LLAMA3, {}, "<|end_of_text|>", None),
    "Meta-Llama-3-8B-Instruct": (LLAMA3, {"eos_token_id": 128009}, "<|eot_id|>", LLAMA3_TEMPLATE),
    "Llama3-OpenBioLLM-8B": (LLAMA3, {"eos_token_id": 128009}, "<|eot_id|>", LLAMA3_TEMPLATE),
    "llama3-8b-math-expert": (LLAMA3, {"eos_token_id": 128009}, "<|eot_id|>", LLAMA3_TEMPLATE),
    "llama3-8b-code-expert": (LLAMA3, {"eos_token_id": 128009}, "<|eot_id|>", LLAMA3_TEMPLATE),
    "Llama-Guard-3-8B": (LLAMA3, {"eos_token_id": 128009}, "<|eot_id|>", GUARD_TEMPLATE),
    "Mistral-7B-v0.2": (MISTRAL, {}, "</s>", None),
    "Mistral-7B-Instruct-v0.2": (MISTRAL, {}, "</s>", MISTRAL_TEMPLATE),
    "MAmmoTH2-7B": (MISTRAL, {}, "</s>", MISTRAL_TEMPLATE),
}
PAPER = ("Meta-Llama-3-8B", "Meta-Llama-3-8B-Instruct", "Llama3-OpenBioLLM-8B", "Llama-Guard-3-8B")
_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


# The commit whose docs, code and results the stand-ins' tokenizer is learnt from: the scripted stand-ins
# say their lines by their hidden states, which follow the tokenizer, so a corpus read from the working
# tree moved a rehearsal's verdicts with every doc edit or new result file. Pinned, it does not.
CORPUS_COMMIT = "51fcaca"


def corpus() -> list[str]:
    """The tokenizer's training texts: docs/*.md, mergesearch/*.py and benchmarks/results/*.json as they
    were at ``CORPUS_COMMIT`` (the working tree's, where git or that commit is missing)."""
    import subprocess

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)

    listed = git("ls-tree", "-r", "--name-only", CORPUS_COMMIT)
    if listed.returncode != 0:
        sources = [*(ROOT / "docs").rglob("*.md"), *(ROOT / "mergesearch").rglob("*.py")]
        sources += (ROOT / "benchmarks" / "results").glob("*.json")
        return [p.read_text(encoding="utf-8") for p in sorted(sources)]
    wanted = [
        name
        for name in listed.stdout.splitlines()
        if (name.startswith("docs/") and name.endswith(".md"))
        or (name.startswith("mergesearch/") and name.endswith(".py"))
        or (name.startswith("benchmarks/results/") and name.count("/") == 2 and name.endswith(".json"))
    ]
    order = sorted(wanted, key=lambda name: str(ROOT / name))  # the order the working tree's paths sort in
    return [git("show", f"{CORPUS_COMMIT}:{name}").stdout for name in order]


def tokenizer_json(family: Family, trained: int = 8000) -> str:
    """The family's tokenizer.json: byte-level BPE (``trained`` tokens learnt from this checkout's docs,
    code and JSON results, so that JSON punctuation has tokens of its own, as in the real ones), unused
    filler entries, and the special tokens at their ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    texts = corpus()
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
    vocab_size = family.config["vocab_size"]
    shift = len(family.specials) if min(family.specials) == 0 else 0  # Mistral's come first
    vocab = {token: i + shift for token, i in spec["model"]["vocab"].items()}
    free = [i for i in range(vocab_size) if i not in family.specials and i >= shift + len(vocab)]
    vocab |= {f"<|unused_{i}|>": i for i in free}
    spec["model"]["vocab"] = vocab
    names = family.specials
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
            single=f"{family.bos} $A",
            pair=f"{family.bos} $A $B",
            special_tokens=[(family.bos, next(i for i, t in family.specials.items() if t == family.bos))],
        ).__getstate__()
    )
    return json.dumps(spec)


def write_folders(out: Path, names: tuple[str, ...] = tuple(FOLDERS)) -> dict[str, Path]:
    """The ``names`` folders under ``out``: config.json, tokenizer.json, tokenizer_config.json,
    generation_config.json; no weights."""
    tokenizers: dict[int, str] = {}
    folders = {}
    for name in names:
        family, changes, eos, template = FOLDERS[name]
        if id(family) not in tokenizers:
            tokenizers[id(family)] = tokenizer_json(family)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        config = family.config | changes
        (folder / "config.json").write_text(json.dumps(config, indent=1))
        (folder / "tokenizer.json").write_text(tokenizers[id(family)])
        settings = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": family.bos,
            "eos_token": eos,
            "model_max_length": config["max_position_embeddings"],
            "clean_up_tokenization_spaces": False,
        }
        if template:
            settings["chat_template"] = template
        (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=1))
        eos_ids = sorted({family.config["eos_token_id"], config["eos_token_id"]})
        generation = {
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": eos_ids if len(eos_ids) > 1 else eos_ids[0],
        }
        (folder / "generation_config.json").write_text(json.dumps(generation, indent=1))
        folders[name] = folder
    return folders


def write_paper_folders(out: Path) -> dict[str, Path]:
    """The paper's four Llama 3 folders (the cluster rehearsal's)."""
    return write_folders(out, PAPER)
