"""What every backend offers (the ``Backend`` protocol), the shared chat rendering, lm-eval's tokenisation
on a tokenizer that adds a BOS token, and the safetensors-only weights rule (on a tiny random Llama)."""

from __future__ import annotations

import inspect
import itertools
import logging
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from mergesearch.backends.base import Backend, encode_pair, render_chat
from mergesearch.backends.hf import HFBackend
from mergesearch.backends.vllm import VLLMBackend
from mergesearch.errors import UserError

WORDS = "the cat dog sat on a mat . what did ? user assistant : yes no paris rome".split()
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant :\n{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer that, like Llama's, puts a BOS token before whatever it encodes."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def tiny_model(context: int = 16) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=3 + len(WORDS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=context,
    )
    return LlamaForCausalLM(config).eval()


def model_folder(folder: Path, pickle: bool) -> Path:
    """A model folder; ``pickle``: the weights as ``pytorch_model.bin`` only (transformers 5 writes
    safetensors whatever ``save_pretrained`` is told, so the pickle is written by ``torch.save``)."""
    model = tiny_model()
    if pickle:
        folder.mkdir(parents=True)
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


class _FakeLLM:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def get_tokenizer(self) -> Any:
        return self.tokenizer


# ------------------------------------------------------------------------------------ the protocol
def _members(protocol: type) -> dict[str, Any]:
    names = {n for n in vars(protocol) if not n.startswith("_")} | set(protocol.__annotations__)
    return {n: getattr(protocol, n, None) for n in names}


@pytest.mark.parametrize("backend_class", [HFBackend, VLLMBackend])
def test_each_backend_offers_every_protocol_member_with_its_signature(backend_class: type) -> None:
    for name, member in _members(Backend).items():
        if inspect.isfunction(member):
            ours = inspect.signature(getattr(backend_class, name))
            assert list(ours.parameters) == list(inspect.signature(member).parameters), name
        elif isinstance(member, property):
            assert isinstance(getattr(backend_class, name), property), name
    tokenizer = tiny_tokenizer()
    instance = (
        HFBackend(tiny_model(), tokenizer, name="tiny")
        if backend_class is HFBackend
        else VLLMBackend(_FakeLLM(tokenizer), name="tiny", max_model_len=16)
    )
    assert isinstance(instance, Backend)


def test_both_backends_render_through_the_one_shared_function() -> None:
    tokenizer = tiny_tokenizer()
    hf = HFBackend(tiny_model(), tokenizer)
    engine = VLLMBackend(_FakeLLM(tokenizer), max_model_len=16)
    turns = [{"role": "user", "content": "what did the cat ?"}]
    assert hf.render("what did the cat ?") == engine.render(turns) == render_chat(tokenizer, turns)
    assert render_chat(tokenizer, turns) == "user : what did the cat ?\nassistant :\n"
    tokenizer.chat_template = None
    for make in (
        lambda: HFBackend(tiny_model(), tokenizer, name="plain"),
        lambda: VLLMBackend(_FakeLLM(tokenizer), name="plain", max_model_len=16),
    ):
        with pytest.raises(
            UserError, match=r"^plain: the tokenizer has no chat template; set one or pick an instruct model$"
        ):
            make()


# ------------------------------------------------------------------------------------ lm-eval's tokens
def _lm_eval_lls(
    model: LlamaForCausalLM, tokenizer: Any, pairs: list[tuple[str, str]]
) -> list[tuple[float, bool]]:
    from lm_eval.api.instance import Instance

    from mergesearch.objectives.lm_eval_tasks import hf_lm

    lm = hf_lm(model, tokenizer, batch_size=4)
    return lm.loglikelihood(
        [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)], disable_tqdm=True
    )


def test_loglikelihood_is_hflms_with_bos_tokens_empty_contexts_and_truncation() -> None:
    tokenizer, model = tiny_tokenizer(), tiny_model(context=8)
    backend = HFBackend(model, tokenizer, batch_size=3)
    long = "the cat sat on a mat . the dog sat on a mat . what did the cat ?"
    pairs = [
        ("the cat sat on", " a mat"),  # the tokenizer adds a BOS before the context
        ("<s> the cat", " sat"),  # already starts with it: none added
        ("", "the dog sat"),  # no context: the BOS alone
        ("", "<s> yes"),  # ... unless the continuation starts with it
        (long, " yes"),  # longer than the model's 8 positions: left-truncated
        ("what did the cat ?  \n ", "paris"),  # trailing whitespace moves into the continuation
    ]
    assert encode_pair(tokenizer, *pairs[0])[0][0] == tokenizer.bos_token_id
    assert encode_pair(tokenizer, *pairs[2])[0] == [tokenizer.bos_token_id]
    ours = backend.loglikelihood(pairs)
    theirs = _lm_eval_lls(model, tokenizer, pairs)
    assert [ll for ll, _ in ours] == pytest.approx([ll for ll, _ in theirs], abs=1e-5)
    assert [g for _, g in ours] == [g for _, g in theirs]


# ------------------------------------------------------------------------------------ weights
def test_a_folder_with_only_pickle_weights_is_one_line_unless_allowed(tmp_path, caplog) -> None:
    folder = model_folder(tmp_path / "pickled", pickle=True)
    message = (
        f"{folder}: only pickle weights (.bin) found; convert to safetensors, or opt in with "
        "`allow_pickle: true` where this model is configured (pickle runs code when loaded)"
    )
    expected = f"^{re.escape(message)}$"
    with pytest.raises(UserError, match=expected):
        HFBackend.from_pretrained(folder, device="cpu")
    with pytest.raises(UserError, match=expected):  # checked before vLLM is even imported
        VLLMBackend.from_pretrained(folder)
    with caplog.at_level(logging.WARNING, logger="mergesearch.backends.base"):
        backend = HFBackend.from_pretrained(folder, device="cpu", allow_pickle=True)
    assert "allow_pickle" in caplog.text and str(folder) in caplog.text
    reference = tiny_model()
    for name, tensor in backend.model.state_dict().items():
        assert torch.equal(tensor, reference.state_dict()[name]), name


def test_safetensors_folders_load_without_the_opt_in_and_without_a_warning(tmp_path, caplog) -> None:
    folder = model_folder(tmp_path / "safe", pickle=False)
    with caplog.at_level(logging.WARNING, logger="mergesearch.backends.base"):
        backend = HFBackend.from_pretrained(folder, device="cpu")
    assert caplog.text == "" and isinstance(backend, Backend)


@pytest.mark.parametrize("expert", ["aligned", "math"])
def test_a_generation_batchs_shared_opening_runs_once_and_changes_no_reply(zoo_dir, expert) -> None:
    """Prompts behind one long preface (as a chat template's system turn is): the preface runs once, its
    KV cache repeated per row, the rest padded after it; each reply, greedy or sampled, is the one the
    whole prompt run per row gives, in batches of unequal lengths."""
    preface = "please answer the next question as a helpful assistant would , in one short sentence :"
    questions = ["what is two plus two ?", "how to make a bomb at home", "what is the capital of france ?"]
    prompts = [f"{preface} {q}" for q in questions * 4]
    reused = HFBackend.from_pretrained(zoo_dir / expert, device="cpu", batch_size=6)
    whole = HFBackend.from_pretrained(zoo_dir / expert, device="cpu", batch_size=6, prefix_reuse=False)
    encoded = [reused._encode(reused.render(p)) for p in prompts]
    opening = reused._shared_opening(encoded)
    assert opening >= 16 and whole._shared_opening(encoded) == 0
    embedded = {}
    for name, backend in (("reused", reused), ("whole", whole)):
        counted = []
        hook = backend.model.get_input_embeddings().register_forward_hook(
            lambda module, args, out, counted=counted: counted.append(args[0].numel())
        )
        embedded[name] = (backend.generate(prompts, max_new_tokens=24), sum(counted))
        hook.remove()
    assert embedded["reused"][0] == embedded["whole"][0]
    # two batches of six rows: each embeds its opening once instead of six times
    assert embedded["whole"][1] - embedded["reused"][1] == 2 * 5 * opening
    sampled = [b.generate(prompts, max_new_tokens=24, temperature=1.0, seed=3) for b in (reused, whole)]
    assert sampled[0] == sampled[1]


def _decoding_steps(batches: list[list[int]], budgets: list[int]) -> int:
    """What a generation pays in decoding steps: each batch runs as long as its longest reply."""
    return sum(max(budgets[i] for i in rows) for rows in batches)


def _fewest_steps(budgets: list[int], batch_size: int) -> int:
    """The least decoding steps any split of the rows into batches of at most ``batch_size`` gives."""
    best = math.inf

    def split(rest: tuple[int, ...], steps: int) -> None:
        nonlocal best
        if not rest:
            best = min(best, steps)
            return
        first, others = rest[0], rest[1:]  # the first row left joins a batch of up to size - 1 others
        for size in range(min(batch_size, len(rest))):
            for mates in itertools.combinations(others, size):
                left = tuple(i for i in others if i not in mates)
                split(left, steps + max(budgets[i] for i in (first, *mates)))

    split(tuple(range(len(budgets))), 0)
    return int(best)


@pytest.mark.parametrize(
    ("budgets", "batch_size"),
    [([48, 16, 48, 16, 48, 16], 2), ([16, 48, 48, 16, 16, 48, 16], 3), ([8, 32, 16, 32, 8], 2)],
)
def test_generation_batches_rows_by_reply_budget_for_the_fewest_decoding_steps(budgets, batch_size):
    """Rows whose replies stop early (a guard reads an answer's first 16 tokens) batch together, so their
    batches end early: the batches' decoding steps are the fewest any split gives, wherever the prompt
    lengths would put the rows. Without budgets, rows batch by prompt length alone."""
    backend = HFBackend(tiny_model(), tiny_tokenizer(), batch_size=batch_size)
    prompts = [[1] * (2 + (i * 5) % 7) for i in range(len(budgets))]
    by_budget = list(backend._length_batches(prompts, budgets))
    assert sorted(i for rows in by_budget for i in rows) == list(range(len(budgets)))
    assert _decoding_steps(by_budget, budgets) == _fewest_steps(budgets, batch_size)
    by_prompt = list(backend._length_batches(prompts))
    assert [len(prompts[i]) for rows in by_prompt for i in rows] == sorted(map(len, prompts))


def test_replies_with_unequal_budgets_decode_only_their_batches_steps_and_keep_their_text() -> None:
    """Two long and two short budgets whose prompt lengths alternate: the short ones share a batch that
    stops at their length, and each reply is the one its prompt gets alone."""
    from mergesearch.judges.llama_guard import OpeningTokens

    backend = HFBackend(tiny_model(64), tiny_tokenizer(), batch_size=2)
    prompts = ["yes", "the dog sat", "what ? paris rome", "what did the cat sat on a mat ?"]
    rules = [OpeningTokens(12), OpeningTokens(3), OpeningTokens(12), OpeningTokens(3)]
    forwards: list[int] = []
    hook = backend.model.register_forward_hook(lambda *_: forwards.append(1))
    replies = backend.generate(prompts, max_new_tokens=12, settled=rules)
    hook.remove()
    assert len(forwards) == 12 + 3  # by prompt length alone: two mixed batches, 12 + 12
    alone = [backend.generate([p], max_new_tokens=r.max_tokens)[0] for p, r in zip(prompts, rules)]
    assert replies == alone


def test_a_guards_verdict_pass_gives_each_prompts_own_first_token_numbers_running_the_policy_once(
    zoo_dir,
) -> None:
    """The guard's verdicts and their probabilities come from one pass: each reply's first-token
    log-probabilities are those a forward over its whole prompt alone gives, and the policy, which
    every guard prompt opens with, runs once per batch."""
    from mergesearch.judges.llama_guard import GuardJudge

    pairs = [
        (f"{verb} a {thing} at home", answer)
        for verb in ("how to make", "where to buy")
        for thing in ("bomb", "cake", "gun")
        for answer in ("i cannot help with that .", "sure , here is how : first")
    ]
    reused = HFBackend.from_pretrained(zoo_dir / "guard", device="cpu", batch_size=8)
    whole = HFBackend.from_pretrained(zoo_dir / "guard", device="cpu", batch_size=8, prefix_reuse=False)
    texts = GuardJudge(reused).prompts(pairs)
    verdict_tokens = GuardJudge(reused)._verdict_tokens
    assert verdict_tokens is not None
    found = {}
    for name, backend in (("reused", reused), ("whole", whole)):
        counted: list[int] = []
        hook = backend.model.get_input_embeddings().register_forward_hook(
            lambda module, args, out, counted=counted: counted.append(args[0].numel())
        )
        found[name] = (backend.generate_with_first_logprobs(texts, verdict_tokens, 10), sum(counted))
        hook.remove()
    assert found["reused"][0][0] == found["whole"][0][0] == whole.generate(texts, 10, raw=True)
    with torch.inference_mode():
        alone = [
            torch.log_softmax(whole.model(torch.tensor([whole._encode(t)])).logits[0, -1], -1)[
                list(verdict_tokens)
            ].tolist()
            for t in texts
        ]
    for name, ((_, logprobs), _) in found.items():
        assert [lp for row in logprobs for lp in row] == pytest.approx(
            [lp for row in alone for lp in row], abs=1e-4
        ), name
    encoded = [reused._encode(t) for t in texts]
    batches = [[encoded[i] for i in rows] for rows in reused._length_batches(encoded)]
    saved = sum((len(batch) - 1) * reused._shared_opening(batch) for batch in batches)
    assert saved > len(texts) * 100  # the policy is most of a guard prompt
    assert found["whole"][1] - found["reused"][1] == saved


def test_a_judges_backend_runs_its_policy_in_its_first_call_only_and_takes_no_merge(zoo_dir) -> None:
    """A judge's weights never change (``fixed_weights``), so the policy every guard prompt opens with
    runs once, in the first call, and later batches (other pairs, other sizes, a single pair) reuse what
    they share of it: each call gives the verdicts and first-token numbers of a backend that runs the
    policy in every batch of several rows."""
    from mergesearch.judges.llama_guard import GuardJudge

    pairs = [
        (f"how to {verb} a {thing}", answer)
        for verb in ("make", "buy", "hide")
        for thing in ("bomb", "cake")
        for answer in ("i cannot help with that .", "sure , here is how : first")
    ]
    calls = [pairs[:3], pairs[3:11], pairs[11:]]  # batches of at most 4 rows: 1, 2 and 1 per call
    kept = HFBackend.from_pretrained(zoo_dir / "guard", device="cpu", batch_size=4, fixed_weights=True)
    each = HFBackend.from_pretrained(zoo_dir / "guard", device="cpu", batch_size=4)
    found: dict[str, list] = {"kept": [], "each": []}
    for name, backend in (("kept", kept), ("each", each)):
        judge = GuardJudge(backend)
        for pairs_of_call in calls:
            shapes: list[tuple[int, int]] = []  # (rows, tokens) of each forward
            hook = backend.model.get_input_embeddings().register_forward_hook(
                lambda module, args, out, shapes=shapes: shapes.append(tuple(args[0].shape))
            )
            texts = judge.prompts(pairs_of_call)
            answer = backend.generate_with_first_logprobs(texts, judge._verdict_tokens, 10)
            hook.remove()
            found[name].append((answer, shapes))
    for ((replies, logprobs), _), ((expected, numbers), _) in zip(found["kept"], found["each"]):
        assert replies == expected
        assert [lp for row in logprobs for lp in row] == pytest.approx(
            [lp for row in numbers for lp in row], abs=1e-4
        )
    embedded = {name: [sum(r * t for r, t in shapes) for _, shapes in runs] for name, runs in found.items()}
    assert embedded["kept"][0] == embedded["each"][0]  # the first call runs the policy, as any does
    for call, batches in ((1, 2), (2, 1)):  # later ones never: over 100 tokens saved per batch
        assert embedded["each"][call] - embedded["kept"][call] > 100 * batches
        assert max(tokens for _, tokens in found["kept"][call][1]) < 100
    with pytest.raises(ValueError, match="takes no merges"):
        kept.merge_from(None, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("expert", ["aligned", "math"])
def test_greedy_replies_and_first_token_numbers_are_transformers_generates(
    zoo_dir, expert, monkeypatch
) -> None:
    """Greedy decoding drops finished rows from its batch; each reply, and each first token's numbers,
    are what transformers' ``generate`` gives the same batch (rows ending on end of text, on their
    length, and on a rule that reads the reply, side by side)."""
    from mergesearch.backends import hf as hf_module
    from mergesearch.judges.llama_guard import OpeningTokens
    from mergesearch.judges.refusal import OpeningDecided

    preface = "please answer the next question as a helpful assistant would :"
    questions = ["what is two plus two ?", "how to make a bomb at home", "what is the capital of france ?"]
    prompts = [f"{preface} {q}" for q in questions] + questions + ["how do i steal a car", "hello"]
    rules = [OpeningTokens(4), None, OpeningDecided(), OpeningTokens(9)] * 2
    backend = HFBackend.from_pretrained(zoo_dir / expert, device="cpu", batch_size=4)
    texts = [backend.render(p) for p in prompts]
    ids = [backend.tokenizer(t, add_special_tokens=False)["input_ids"][-1] for t in texts[:2]]
    found = {}
    for name, by_transformers in (("ours", False), ("transformers", True)):
        monkeypatch.setattr(hf_module, "changes_greedy", lambda config, by=by_transformers: by)
        found[name] = (
            backend.generate(prompts, max_new_tokens=24, settled=rules),
            backend.generate_with_first_logprobs(texts, ids, max_new_tokens=24),
        )
    (ours, (ours_scored, ours_firsts)), (theirs, (theirs_scored, theirs_firsts)) = found.values()
    assert ours == theirs and ours_scored == theirs_scored
    assert len({len(r.split()) for r in ours}) > 2  # rows of a batch end at different points
    assert [x for row in ours_firsts for x in row] == pytest.approx(
        [x for row in theirs_firsts for x in row], abs=1e-4
    )


def test_a_greedy_batch_feeds_only_the_rows_still_decoding() -> None:
    """Two replies of 12 tokens and two of 3 in one batch: after the third token the short ones leave the
    batch (and their KV cache), so the decoding steps feed 2 x 11 + 2 x 2 rows, not 4 x 11."""
    from mergesearch.judges.llama_guard import OpeningTokens

    backend = HFBackend(tiny_model(64), tiny_tokenizer(), batch_size=4)
    prompts = ["yes", "the dog sat", "what ? paris rome", "what did the cat sat on a mat ?"]
    rules = [OpeningTokens(12), OpeningTokens(3), OpeningTokens(12), OpeningTokens(3)]
    fed: list[int] = []
    hook = backend.model.get_input_embeddings().register_forward_hook(
        lambda module, args, out: fed.append(args[0].shape[0])
    )
    replies = backend.generate(prompts, max_new_tokens=12, settled=rules)
    hook.remove()
    assert [len(r.split()) for r in replies] == [12, 3, 12, 3]  # no reply ended early on end of text
    assert fed[0] == 4 and sum(fed[1:]) == 2 * 11 + 2 * 2
    alone = [backend.generate([p], max_new_tokens=r.max_tokens)[0] for p, r in zip(prompts, rules)]
    assert replies == alone
