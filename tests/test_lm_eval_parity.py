"""Our log-likelihoods and task accuracy are lm-eval's, on a real tokenizer and model (SmolLM2-135M-Instruct).

lm-eval's ``simple_evaluate`` runs a local YAML task of the same items (``write_choice_task``) with its own
``HFLM`` over the same in-memory model. The items are chosen where the rules differ: options with non-ASCII
characters (``acc_norm`` divides by characters, not UTF-8 bytes) and options with leading spaces after a
context that ends in a newline (lm-eval tokenises context and continuation together, the context's trailing
whitespace moved into the continuation, so "\\n" + "  Paris" is not "\\n" then "  Paris").
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mergesearch.backends.base import encode_pair
from mergesearch.backends.hf import HFBackend
from mergesearch.backends.vllm import VLLMBackend
from mergesearch.objectives.lm_eval_tasks import hf_lm, write_choice_task
from mergesearch.objectives.task import ChoiceItem, choice_accuracy

ITEMS = (
    ChoiceItem(
        "How do you say 'thank you' in Japanese?", ("おはよう", "arigatou", "さようなら", "こんにちは"), 1
    ),
    ChoiceItem(
        "Which Greek letter is used for the ratio of a circle's circumference to its diameter?",
        ("π", "σ", "Ω", "pi"),
        3,
    ),
    ChoiceItem("What is the capital of France?", ("  Paris", "  Rome", "  Madrid", "  Berlin"), 0),
    ChoiceItem("What is the capital of France?", ("Paris", "  Rome", " Madrid", "  Berlin"), 0),
    ChoiceItem("What is 2 + 2?", ("  4", " 5", "four", "  22"), 0),
    ChoiceItem("Which city has the Eiffel Tower?", (" Zürich", " Paris", " Málaga", " Berlin"), 1),
    ChoiceItem("Which of these cities is in Germany?", ("München", "Lyon", "Sevilla", "Kraków"), 0),
    ChoiceItem("What is the capital of Japan?", ("東京", "  Tokyo", "Kyoto", " Osaka"), 1),
    ChoiceItem("Which word means 'water' in Spanish?", ("agua", "  agua", "leche", "niño"), 0),
)


@pytest.fixture(scope="module")
def smollm2(smollm2_dir: Path) -> HFBackend:
    return HFBackend.from_pretrained(smollm2_dir, device="cpu")


@pytest.fixture(scope="module")
def lm_eval_run(smollm2: HFBackend, tmp_path_factory) -> tuple[dict[str, float], list[list[float]]]:
    """lm-eval's metrics and per-option log-likelihoods (in item order) for ``ITEMS`` on SmolLM2."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    task = write_choice_task(ITEMS, smollm2.render, folder, "smollm2_parity")
    results = simple_evaluate(
        model=hf_lm(smollm2.model, smollm2.tokenizer),
        tasks=[task],
        task_manager=TaskManager(include_path=str(folder)),
        log_samples=True,
        bootstrap_iters=0,
        verbosity="ERROR",
    )
    metrics = {k.split(",")[0]: v for k, v in results["results"][task].items() if k.endswith(",none")}
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return metrics, [[float(ll) for ll, _ in s["filtered_resps"]] for s in samples]


def requests(backend: HFBackend | VLLMBackend) -> list[tuple[str, str]]:
    return [(backend.render(item.prompt), choice) for item in ITEMS for choice in item.choices]


def test_the_items_tell_characters_from_bytes_and_the_context_ends_in_whitespace(
    lm_eval_run, smollm2
) -> None:
    _, lls = lm_eval_run
    by_bytes = np.mean(
        [
            np.argmax(np.array(ll) / [len(c.encode()) for c in i.choices]) == i.answer
            for i, ll in zip(ITEMS, lls)
        ]
    )
    assert by_bytes != lm_eval_run[0]["acc_norm"]  # dividing by bytes would give another acc_norm
    assert smollm2.render("x").endswith("\n")


def test_task_accuracy_is_lm_evals_acc_and_acc_norm(lm_eval_run, smollm2) -> None:
    metrics, _ = lm_eval_run
    ours = choice_accuracy(smollm2, ITEMS)
    assert 0 < ours["acc"] < 1 and 0 < ours["acc_norm"] < 1
    assert ours == {"acc": metrics["acc"], "acc_norm": metrics["acc_norm"]}


def test_each_options_log_likelihood_is_lm_evals(lm_eval_run, smollm2) -> None:
    _, lls = lm_eval_run
    theirs = [ll for item in lls for ll in item]
    ours = [ll for ll, _ in smollm2.loglikelihood(requests(smollm2))]
    assert ours == pytest.approx(theirs, abs=1e-4)


class _FakeLLM:
    """The part of ``vllm.LLM`` that ``VLLMBackend.loglikelihood`` uses, computed by a transformers model:
    per prompt position, the log-probabilities of the prompt's own token and of the top token."""

    def __init__(self, backend: HFBackend) -> None:
        self.backend = backend

    def get_tokenizer(self) -> Any:
        return self.backend.tokenizer

    @torch.inference_mode()
    def generate(self, prompts: list[dict], params: dict, use_tqdm: bool = False) -> list:
        assert params["prompt_logprobs"] == 1
        outputs = []
        for prompt in prompts:
            ids = prompt["prompt_token_ids"]
            logits = self.backend.model(input_ids=torch.tensor([ids])).logits[0]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            per_position: list = [None]
            for position in range(1, len(ids)):
                row = logprobs[position - 1]
                top = int(row.argmax())
                per_position.append(
                    {
                        t: types.SimpleNamespace(logprob=float(row[t]), rank=int((row > row[t]).sum()) + 1)
                        for t in {ids[position], top}
                    }
                )
            outputs.append(types.SimpleNamespace(prompt_logprobs=per_position))
        return outputs


def test_the_vllm_backend_scores_the_tokens_lm_eval_scores(lm_eval_run, smollm2, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=lambda **kw: kw))
    engine = VLLMBackend(_FakeLLM(smollm2), name="fake", max_model_len=2048)
    _, lls = lm_eval_run
    ours = engine.loglikelihood(requests(engine))
    assert [ll for ll, _ in ours] == pytest.approx([ll for item in lls for ll in item], abs=1e-4)
    assert [greedy for _, greedy in ours] == [greedy for _, greedy in smollm2.loglikelihood(requests(engine))]


def test_an_empty_context_is_scored_after_the_prefix_token_as_lm_eval_does(smollm2) -> None:
    from mergesearch.backends.base import encode_pair

    tokenizer = smollm2.tokenizer
    assert encode_pair(tokenizer, "", "Paris") == ([tokenizer.bos_token_id], tokenizer.encode("Paris"))
    rendered = smollm2.render("x")
    context, continuation = encode_pair(tokenizer, rendered, "  Paris")
    assert tokenizer.decode(context) == rendered.rstrip() and tokenizer.decode(continuation) == "\n  Paris"


def test_prefix_reuse_runs_each_context_once_and_keeps_the_plain_paths_numbers(smollm2) -> None:
    """The choices of a question share its context: run once, its KV cache reused for each choice, and
    the questions share the chat template's opening (SmolLM2's system turn), run once for the batch;
    with the log-likelihoods of scoring every (context, choice) row whole (which lm-eval's are, above)."""
    fed: list[tuple[int, ...]] = []
    hook = smollm2.model.register_forward_hook(
        lambda module, args, kwargs, out: fed.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    asked = requests(smollm2)
    try:
        reused = smollm2.loglikelihood(asked)
        reused_shapes, fed[:] = list(fed), []
        smollm2.prefix_reuse = False
        plain = smollm2.loglikelihood(asked)
        plain_shapes = list(fed)
    finally:
        hook.remove()
        smollm2.prefix_reuse = True
    assert [ll for ll, _ in reused] == pytest.approx([ll for ll, _ in plain], abs=1e-4)
    assert [greedy for _, greedy in reused] == [greedy for _, greedy in plain]
    tokens = {
        name: sum(math.prod(s) for s in shapes)
        for name, shapes in (("reused", reused_shapes), ("plain", plain_shapes))
    }
    assert (
        tokens["reused"] < tokens["plain"] / 2
    )  # four choices a question: its context ran once, not four times
    contexts = [encode_pair(smollm2.tokenizer, context, choice)[0] for context, choice in asked]
    opening = smollm2._shared_opening(contexts)
    assert opening >= 16 and (1, opening) in reused_shapes  # the system turn, once
