"""A word-level tokenizer for the toy zoo, saved as a standard Hugging Face fast tokenizer.

Words are lower-cased, punctuation is split off, and numbers become one token per digit (a tiny model
learns sums from digits, not from a vocabulary of numbers). Llama 3 style header tokens carry the chat
template; Llama Guard category codes (``S1``..``S14``) are single tokens so a guard's verdict decodes
exactly as the real one does.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mergesearch.taxonomy import GUARD_ASSESSMENT, GUARD_TASK, LLAMA_GUARD_3_CODES, categories_block

BOS, EOS, PAD, UNK = "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>", "<|unk|>"
HEADER_START, HEADER_END = "<|start_header_id|>", "<|end_header_id|>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, HEADER_START, HEADER_END)

# Llama 3 style, one message per header block; whitespace between tokens is insignificant here.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )


def words_of(text: str) -> list[str]:
    """The word tokens ``text`` splits into (before the vocabulary lookup)."""
    normalized = normalizers.Lowercase().normalize_str(text)
    return [w for w, _ in _pre_tokenizer().pre_tokenize_str(normalized)]


def build_tokenizer(corpus_text: str, chat_template: str = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is every word of ``corpus_text``, in sorted order."""
    codes = list(LLAMA_GUARD_3_CODES)
    words = sorted(set(words_of(corpus_text)) - {c.lower() for c in codes})
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *codes, *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = _pre_tokenizer()

    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    core.add_tokens([AddedToken(c, normalized=False, single_word=True) for c in codes])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


# How a model's chat format opens a user turn and hands over to the reply (Jinja text). Jinja drops a
# template's last newline, so a hand-over that ends in one writes it as an expression.
LLAMA3_TURN = (
    "{{ bos_token }}<|start_header_id|>user<|end_header_id|>\n\n",
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
)
CHATML_TURN = ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant{{ '\\n' }}")


def guard_chat_template(turn: tuple[str, str] = LLAMA3_TURN) -> str:
    """Llama Guard 3's prompt format: the conversation wrapped in the policy, verdict asked of the model,
    inside one user turn of a chat format (``turn``: its opening and its hand-over to the reply)."""
    preamble = GUARD_TASK.format(role="{{ role }}")
    instructions = GUARD_ASSESSMENT.format(role="{{ role }}")
    categories = categories_block(LLAMA_GUARD_3_CODES)
    opening, to_reply = turn
    return (
        "{% set role = 'Agent' if messages[-1]['role'] == 'assistant' else 'User' %}"
        f"{opening}{preamble}\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}\n"
        "<END UNSAFE CONTENT CATEGORIES>\n\n<BEGIN CONVERSATION>\n\n"
        "{% for message in messages %}{{ 'User' if message['role'] == 'user' else 'Agent' }}: "
        "{{ message['content'] | trim }}\n\n{% endfor %}"
        f"<END CONVERSATION>\n\n{instructions}{to_reply}"
    )
