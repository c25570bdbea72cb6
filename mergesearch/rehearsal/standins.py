"""Architecture-true stand-ins of a user's model folders: their own config, tokenizer and chat template,
fewer layers and a smaller width, seeded weights whose output head makes them say a role's lines.

A stand-in keeps everything of its folder that a job's checks and data flow read: ``model_type`` and the
architecture, the vocabulary size, special tokens, RoPE settings, the tokenizer files and chat template,
the generation config. It shrinks only the depth and width (``SHRUNK``); nothing of the real weights is
read (a folder may hold only its config and tokenizer, as before a download).

How a random network is made to say a line (``scripts``): the tokens the lines use get orthogonal
embeddings, and the output head maps each token's embedding to its successor's logit, so the model is a
token chain (the layers, left at their seeded initial values, move the final hidden state by a few per
cent). Where a role has two lines, both start from the prompt's last token with equal logits plus a term
read along a direction of the final hidden state that varies from prompt to prompt; the direction and
an offset are calibrated on ``CALIBRATION_PROMPTS`` so that about each line's share of prompts takes it.
The generator's chain branches at every word, so sampling writes a different question each time.

Stand-ins of one family (same architecture and vocabulary: a base and its experts) share their
embeddings and layers, as fine-tunes share a pretrained model; experts differ by a small seeded
perturbation of the layers and by their heads, so task vectors are small and merges are meaningful.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mergesearch.errors import UserError
from mergesearch.model_files import model_config
from mergesearch.rehearsal.scripts import (
    CALIBRATION_PROMPTS,
    GENERATOR_FORM,
    QUESTION_SLOT,
    WORDS,
    Role,
    lines_for,
)

# Depth and width of every stand-in (heads keep the folder's grouping of query heads per key/value head).
SHRUNK = {"num_hidden_layers": 2, "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4}
HEAD_DIM = 32
ALPHA = 60.0  # the logit of a line's next token (the rest of the vocabulary stays near 0)
FORK = 4.0  # how far, in logits, the prompt's hidden state moves one line against the other
MIXING = 8.0  # attention outputs scaled up: the prompt must move the last hidden state for a fork to read
FOCUS = 6.0  # queries and keys scaled up: attention picks a few tokens, so a long fixed prompt (a guard's
# policy) does not drown the part of the prompt that varies
EXPERT_DELTA = 0.002  # an expert's layers: the family's plus this much seeded noise (a small task vector)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
MARK = "mergesearch_standin"  # config.json key: what the stand-in stands for


def shrink_config(config: Mapping, source: str) -> dict:
    """``config`` with fewer layers and a smaller width; everything else as the folder has it."""
    if "text_config" in config:
        raise UserError(
            f"{source}: a multimodal config (text_config); rehearsal stand-ins cover text-only causal LMs"
        )
    heads = int(config.get("num_attention_heads") or 1)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    small = {k: v for k, v in config.items() if k not in ("quantization_config", "_name_or_path")}
    small.update(SHRUNK)
    small["num_key_value_heads"] = max(1, SHRUNK["num_attention_heads"] * kv_heads // heads)
    if "head_dim" in config:
        small["head_dim"] = HEAD_DIM
    small[MARK] = {
        "of": source,
        "num_hidden_layers": config.get("num_hidden_layers"),
        "hidden_size": config.get("hidden_size"),
    }
    return small


def family_of(small: Mapping) -> str:
    """Stand-ins with one family key share embeddings and layers (a base and its fine-tunes)."""
    keys = ("model_type", "architectures", "vocab_size", "tie_word_embeddings", "rope_theta")
    return hashlib.sha256(json.dumps([small.get(k) for k in keys], sort_keys=True).encode()).hexdigest()[:16]


def _seed(*parts: object) -> int:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:15], 16)


# ------------------------------------------------------------------------------------ token chains
@dataclass
class Chain:
    """Token transitions of one head: each token's successors (equal logits), and the lines' first tokens."""

    edges: dict[int, set[int]] = field(default_factory=dict)
    starts: list[tuple[int, float]] = field(default_factory=list)  # (first token, share of prompts)

    def add(self, ids: Sequence[int]) -> None:
        for a, b in zip(ids, ids[1:], strict=False):
            self.edges.setdefault(a, set()).add(b)

    def tokens(self) -> set[int]:
        return (
            set(self.edges)
            | {b for nexts in self.edges.values() for b in nexts}
            | {s for s, _ in self.starts}
        )


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class Segmenter:
    """Spells texts in tokens none of which is used twice in one chain (a token met twice would give the
    chain a branch): the tokenizer's own encoding where it has no repeat, else any tokens of the vocabulary
    that spell the text (decoding concatenates whatever tokens a model emits)."""

    def __init__(self, tokenizer, avoid: set[int]) -> None:
        self.tokenizer = tokenizer
        self.used: set[int] = set(avoid)  # tokens a line may not use: where the prompts end
        self._by_text: dict[str, list[int]] | None = None

    def by_text(self) -> dict[str, list[int]]:
        if self._by_text is None:
            texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
            self._by_text = {}
            for i, text in enumerate(texts):
                if text and i not in self.tokenizer.all_special_ids:
                    self._by_text.setdefault(text, []).append(i)
        return self._by_text

    def spell(self, text: str) -> list[int]:
        """``text`` in tokens not used before in this chain; ``ANY_SPACE`` in it stands for any run of
        whitespace, none included (JSON's, between its tokens)."""
        parts = [_ids(self.tokenizer, part) for part in text.replace(ANY_SPACE, "").split(GAP)]
        own = [token for part in parts for token in [-1, *part]][1:]
        if len(set(own)) == len(own) and not self.used & set(own):
            self.used |= set(own) - {-1}
            return own
        allowed = set(text) - {GAP} | set(" \n\t")
        candidates = sorted(
            ((t, ids) for t, ids in self.by_text().items() if set(t) <= allowed),
            key=lambda pair: (-len(pair[0].strip()), len(pair[0])),  # most text, least whitespace first
        )
        self._budget = 20_000
        found = self._search(text, 0, [], candidates) or self._sample(text, candidates)
        if found is None:
            raise UserError(
                f"{self.tokenizer.name_or_path}: no spelling of the stand-in text "
                f"{text.replace(ANY_SPACE, '')!r} in tokens used once each"
            )
        self.used |= set(found) - {-1}
        return found

    def _search(self, text: str, at: int, picked: list[int], candidates) -> list[int] | None:
        rest = text[at:].replace(ANY_SPACE, "")
        if not rest:
            return picked
        if text[at] == GAP:  # where the caller's own tokens go (the generator's words)
            return self._search(text, at + 1, [*picked, -1], candidates)
        self._budget -= 1
        if self._budget < 0:
            return None
        taken = self.used | set(picked)
        for piece, ids in candidates:
            end = _match(text, at, piece)
            if end is None:
                continue
            for token in ids:
                if token not in taken:
                    found = self._search(text, end, [*picked, token], candidates)
                    if found is not None:
                        return found
                    break
        return None

    def _sample(self, text: str, candidates, tries: int = 2_000) -> list[int] | None:
        """Random left-to-right spellings (seeded), for texts whose depth-first search runs out of budget."""
        rng = random.Random(0)
        for _ in range(tries):
            at, picked = 0, []
            while text[at:].replace(ANY_SPACE, ""):
                if text[at] == GAP:
                    at, picked = at + 1, [*picked, -1]
                    continue
                taken = self.used | set(picked)
                options = [
                    (end, token)
                    for piece, ids in candidates
                    if (end := _match(text, at, piece)) is not None
                    for token in ids[:1]
                    if token not in taken
                ]
                if not options:
                    break
                end, token = rng.choice(options)
                at, picked = end, [*picked, token]
            else:
                return picked
        return None


ANY_SPACE = "\x00"
GAP = "\x01"


def _match(pattern: str, at: int, piece: str) -> int | None:
    """Where ``pattern`` continues after ``piece`` is read from ``at`` (``ANY_SPACE`` takes any
    whitespace, or none), or None where the piece does not fit."""
    for char in piece:
        while at < len(pattern) and pattern[at] == ANY_SPACE and not char.isspace():
            at += 1
        if at >= len(pattern):
            return None
        if pattern[at] == ANY_SPACE:
            continue  # whitespace, taken by the run
        if pattern[at] != char:
            return None
        at += 1
    return at


def greedy_chain(tokenizer, lines: Sequence[tuple[str, float]], eos: int, avoid: set[int]) -> Chain:
    """The chain of greedy lines, each token used once (greedy decoding then neither loops nor crosses
    from one line into another)."""
    chain, spell = Chain(), Segmenter(tokenizer, avoid)
    for text, share in lines:
        ids = spell.spell(text)
        chain.add([*ids, eos])
        chain.starts.append((ids[0], share))
    return chain


def generator_chain(tokenizer, eos: int, avoid: set[int]) -> Chain:
    """The generator's chain: a JSON question object whose question is a walk over ``WORDS``, spelt in
    tokens used once each (branching only where the words are)."""
    spell = Segmenter(tokenizer, avoid)
    words = [spell.spell(" " + w) for w in WORDS]
    spelt = spell.spell(GENERATOR_FORM.replace(QUESTION_SLOT, GAP))
    gap = spelt.index(-1)
    prefix, suffix = spelt[:gap], [*spelt[gap + 1 :], eos]
    chain = Chain(starts=[(prefix[0], 1.0)])
    chain.add(prefix)
    chain.add(suffix)
    for word in words:
        chain.add(word)
        chain.edges.setdefault(prefix[-1], set()).add(word[0])
        for other in [*(w[0] for w in words), suffix[0]]:
            chain.edges.setdefault(word[-1], set()).add(other)
    return chain


def chain_for(role: Role, tokenizer, refusal_share: float, source: str, avoid: set[int]) -> Chain:
    """``role``'s lines as a chain of tokens, none of them one of ``avoid`` (the tokens the role's prompts
    end on: a line starts after them)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError(f"{source}: its tokenizer has no eos_token; a stand-in's lines could not end")
    lines = lines_for(role, refusal_share)
    if lines.sampled:
        return generator_chain(tokenizer, eos, avoid)
    return greedy_chain(tokenizer, lines.greedy, eos, avoid)


# ------------------------------------------------------------------------------------ prompts
def render_prompts(role: Role, tokenizer, guard_template: bool) -> list[str]:
    """The calibration prompts as the job renders them for ``role``: the chat template (a guard's own, or
    the Llama Guard policy prompt without one), raw text for a folder with no template."""
    from mergesearch.judges.llama_guard import guard_format

    if role == "guard":
        conversations = [
            [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
            for p, r in zip(
                CALIBRATION_PROMPTS, [*CALIBRATION_PROMPTS[1:], CALIBRATION_PROMPTS[0]], strict=True
            )
        ]
        if guard_template:
            return [
                tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                for c in conversations
            ]
        return [guard_format(3).prompt(c) for c in conversations]
    if getattr(tokenizer, "chat_template", None):
        return [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in CALIBRATION_PROMPTS
        ]
    return list(CALIBRATION_PROMPTS)


# ------------------------------------------------------------------------------------ weights
@dataclass(frozen=True)
class Family:
    """What stand-ins of one family share: the scripted tokens' orthogonal embeddings and a seed."""

    key: str
    tokens: tuple[int, ...]  # every token any member's chain uses

    def basis(self, width: int) -> torch.Tensor:
        """An orthonormal basis of the width: the first columns are the scripted tokens' directions, the
        next one the direction every other token shares (a line starts after any of them), the rest free."""
        if len(self.tokens) + 8 > width:
            raise UserError(
                f"stand-in family {self.key}: {len(self.tokens)} scripted tokens do not fit width {width}"
            )
        g = torch.Generator().manual_seed(_seed("basis", self.key))
        return torch.linalg.qr(torch.randn(width, width, generator=g, dtype=torch.float64))[0]


def _skeleton(small: Mapping, family: Family):
    """The family's model: seeded layers, embeddings with the scripted tokens on orthogonal directions."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**{k: v for k, v in small.items() if k != MARK})
    torch.manual_seed(_seed("layers", family.key))
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    if model.get_output_embeddings() is None or config.tie_word_embeddings:
        raise UserError(
            f"{small[MARK]['of']}: tie_word_embeddings is set; rehearsal stand-ins script an untied "
            "output head"
        )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("o_proj.weight"):
                param.mul_(MIXING)
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                param.mul_(FOCUS)
    width = config.hidden_size
    basis = family.basis(width)
    g = torch.Generator().manual_seed(_seed("embeddings", family.key))
    embed = torch.randn(config.vocab_size, width, generator=g, dtype=torch.float64)
    shared = basis[:, len(family.tokens)]
    embed += 0.5 * width**0.5 * shared  # every unscripted token: a line may start after it
    for i, token in enumerate(family.tokens):
        embed[token] = width**0.5 * basis[:, i]
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(embed.float())
    return model, basis


def _perturb(model, name: str) -> None:
    """An expert's layers: the family's plus a small seeded perturbation (its task vector)."""
    g = torch.Generator().manual_seed(_seed("expert", name))
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if ".layers." in pname and param.dim() == 2:
                param.add_(EXPERT_DELTA * torch.randn(param.shape, generator=g))


def _last_hidden(model, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    rows = []
    with torch.no_grad():
        for text in prompts:
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=not _has_bos(tokenizer, text))
            out = model(**ids, output_hidden_states=True)
            rows.append(out.hidden_states[-1][0, -1].double())
    return torch.stack(rows)


def _ends(tokenizer, prompts: Sequence[str]) -> set[int]:
    return {_ids(tokenizer, p)[-1] for p in prompts}


def _has_bos(tokenizer, text: str) -> bool:
    bos = tokenizer.bos_token
    return bool(bos) and text.startswith(bos)


def script_head(
    model, family: Family, basis: torch.Tensor, chain: Chain, prompts: Sequence[str], tokenizer
) -> dict:
    """Write ``chain`` into the output head, its lines starting after any prompt; where there are two
    lines, calibrate the fork between them on ``prompts`` (rendered as the job renders them). Returns the
    share of calibration prompts that take the first line."""
    head = model.get_output_embeddings().weight
    width = head.shape[1]
    index = {t: i for i, t in enumerate(family.tokens)}
    ends = _ends(tokenizer, prompts) & chain.tokens()
    if ends:
        raise UserError(
            f"{tokenizer.name_or_path}: its prompts end on {tokenizer.decode(sorted(ends)[:1])!r}, a "
            "token the stand-in lines use; a line could not start there"
        )
    weight = torch.zeros(head.shape, dtype=torch.float64)
    for token, nexts in chain.edges.items():
        for nxt in nexts:
            weight[nxt] += ALPHA / width**0.5 * basis[:, index[token]]
    # The hidden state does not depend on the head: read it once, then set each line's start from it.
    hidden = _last_hidden(model, tokenizer, prompts)
    shared = basis[:, len(family.tokens)]
    along = (hidden @ shared).mean().item()  # every unscripted token's common direction, after the norm
    for start, _ in chain.starts:
        weight[start] += ALPHA / along * shared
    measured: dict[str, float] = {}
    if len(chain.starts) == 2:
        free = basis[:, len(family.tokens) + 1 :]
        z = hidden @ free
        direction = free @ torch.linalg.svd(z - z.mean(0), full_matrices=False)[2][0]
        score = hidden @ direction
        step = FORK / score.std().item()
        measured["fork_step"] = step
        (first, share), (second, _) = chain.starts
        margin = 2 * step * score
        offset = torch.quantile(margin, 1.0 - share).item()
        weight[first] += step * direction
        weight[second] += -step * direction + offset / along * shared
        takes_first = margin - offset * (hidden @ shared) / along > 0
        measured["calibration_share_first_line"] = float(takes_first.double().mean())
    with torch.no_grad():
        head.copy_(weight.float())
    return measured


# ------------------------------------------------------------------------------------ folders
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class StandIn:
    """One stand-in to write: the user's folder it stands for, the role it plays, its folder name."""

    source: Path
    role: Role
    name: str
    refusal_share: float = 0.5


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise UserError(f"{folder}: its tokenizer does not load ({str(err).splitlines()[0]})") from None


def write_standins(wanted: Sequence[StandIn], out: Path, log=print) -> dict[str, dict]:
    """Each stand-in as a model folder ``out/<name>``; returns what each is and what its calibration
    measured. Only config.json and the tokenizer files of each source are read."""
    from safetensors.torch import save_file

    small = {s.name: shrink_config(model_config(s.source), str(s.source)) for s in wanted}
    tokenizers = {s.name: _tokenizer(s.source) for s in wanted}
    prompts = {
        s.name: render_prompts(
            s.role, tokenizers[s.name], bool(getattr(tokenizers[s.name], "chat_template", None))
        )
        for s in wanted
    }
    chains = {
        s.name: chain_for(
            s.role,
            tokenizers[s.name],
            s.refusal_share,
            str(s.source),
            _ends(tokenizers[s.name], prompts[s.name]),
        )
        for s in wanted
    }
    families: dict[str, set[int]] = {}
    for s in wanted:
        families.setdefault(family_of(small[s.name]), set()).update(chains[s.name].tokens())
    written = {}
    for s in wanted:
        key = family_of(small[s.name])
        family = Family(key, tuple(sorted(families[key])))
        model, basis = _skeleton(small[s.name], family)
        if s.role in ("expert", "generator"):
            _perturb(model, s.name)
        tokenizer = tokenizers[s.name]
        measured = script_head(model, family, basis, chains[s.name], prompts[s.name], tokenizer)
        folder = out / s.name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for name in TOKENIZER_FILES:
            if (s.source / name).is_file():
                shutil.copy2(s.source / name, folder / name)
        dtype = _DTYPES.get(
            str(small[s.name].get("torch_dtype") or small[s.name].get("dtype")), torch.float32
        )
        tensors = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(small[s.name], indent=1))
        written[s.name] = {"of": str(s.source), "role": s.role, "family": key, **measured}
        log(standin_line(s.name, written[s.name]))
    return written


def standin_line(name: str, written: Mapping) -> str:
    """What the log says of a stand-in ``write_standins`` wrote (``written``: its entry)."""
    share = written.get("calibration_share_first_line")
    calibration = f", calibration: {share:.0%} take the first line" if share is not None else ""
    return f"stand-in {name}: {written['role']} of {written['of']}{calibration}"
