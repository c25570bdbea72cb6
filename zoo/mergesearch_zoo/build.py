"""Build the toy zoo: tokenizer, base, experts and guard, as standard Hugging Face folders.

The zoo is cached by a hash of its recipe. A build goes into a staging folder next to the output where
each finished model is kept (an interrupted build resumes from the last finished model) and the whole
zoo appears at its final path only once complete.

The base is trained first; the models trained from it then train side by side, one single-threaded
process per core (up to two): two threads train a model this small only 1.4-1.65 times as fast as one,
so two one-thread trainings side by side finish sooner than the same two in turn. A model's bytes do
not depend on how many threads trained it (a test builds the smoke zoo both ways).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import multiprocessing
import os
import queue
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from mergesearch.io import atomic_dir, atomic_write_text
from mergesearch_zoo import language as L
from mergesearch_zoo.corpus import Example, build_components
from mergesearch_zoo.fixture import FIXTURE_DIR, fixture_for, unpack_zoo
from mergesearch_zoo.layout import (
    EXPERTS,
    MANIFEST,
    MEMBERS,
    ZooMember,
    default_zoo_dir,
    is_built,
    refuse_foreign_folder,
)
from mergesearch_zoo.recipe import ModelShape, TrainSpec, ZooRecipe
from mergesearch_zoo.tokenizer import build_tokenizer, guard_chat_template
from mergesearch_zoo.train import train


def build_zoo(
    recipe: ZooRecipe,
    out_dir: Path | None = None,
    log: Callable[[str], None] = print,
    workers: int | None = None,
    train: bool = False,
    fixture: Path = FIXTURE_DIR,
) -> Path:
    """Build (or reuse) the zoo for ``recipe`` at ``out_dir``; returns the zoo folder. The shipped
    fixture (at ``fixture``) is unpacked when it holds ``recipe``: the same weights on every machine, in
    seconds. Otherwise, or with ``train``, the zoo is trained. ``workers``: how many members train at
    once (one per core, up to two, by default)."""
    out_dir = Path(out_dir) if out_dir else default_zoo_dir(recipe)
    if is_built(out_dir, recipe):
        log(f"zoo: cached at {out_dir} (recipe {recipe.digest()})")
        return out_dir
    refuse_foreign_folder(out_dir, MANIFEST, "a zoo folder")

    with _build_lock(out_dir, recipe, log):
        if is_built(out_dir, recipe):  # another process built it while this one waited
            return out_dir
        shipped = None if train else fixture_for(recipe, fixture)
        if shipped is not None:
            return _unpack(recipe, shipped, out_dir, log)
        return _build(recipe, out_dir, log, workers or min(2, os.cpu_count() or 1))


@contextlib.contextmanager
def _build_lock(out_dir: Path, recipe: ZooRecipe, log: Callable[[str], None]) -> Iterator[None]:
    """One builder per zoo at a time (two test sessions, or a test and `make demo`): the others wait."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock-{recipe.digest()}", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"zoo: another process is building {out_dir}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build(recipe: ZooRecipe, out_dir: Path, log: Callable[[str], None], workers: int) -> Path:
    staging = _staging(recipe, out_dir)
    started = time.monotonic()
    with deterministic_torch():
        timings = _build_into(staging, recipe, log, workers)
    _publish(recipe, staging, out_dir, {"source": "trained here", "train_seconds": timings})
    log(f"zoo: built in {time.monotonic() - started:.0f} s at {out_dir}")
    return out_dir


def _unpack(recipe: ZooRecipe, fixture: Path, out_dir: Path, log: Callable[[str], None]) -> Path:
    staging = _staging(recipe, out_dir)
    try:
        shipped = unpack_zoo(fixture, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # seconds to redo: nothing half-written is kept
        raise
    _publish(recipe, staging, out_dir, {"source": f"fixture ({shipped['weights_dtype']} weights)"})
    log(f"zoo: unpacked the shipped zoo (recipe {recipe.digest()}) at {out_dir}")
    return out_dir


def _staging(recipe: ZooRecipe, out_dir: Path) -> Path:
    staging = out_dir.parent / f".{out_dir.name}.partial-{recipe.digest()}"
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def _publish(recipe: ZooRecipe, staging: Path, out_dir: Path, provenance: dict[str, Any]) -> None:
    """Write the manifest into ``staging`` and move the finished zoo to ``out_dir`` in one step."""
    manifest = {
        "digest": recipe.digest(),
        "recipe": recipe.model_dump(mode="json"),
        "members": {m.name: {"parent": m.parent, "role": m.role} for m in MEMBERS},
        "experts": list(EXPERTS),
        **provenance,
    }
    atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)


def zoo_corpus(
    recipe: ZooRecipe,
) -> tuple[PreTrainedTokenizerFast, PreTrainedTokenizerFast, dict[str, list[Example]]]:
    """The zoo's tokenizer, the guard's, and every corpus component its recipe trains on."""
    world = recipe.world()
    vocabulary = L.vocabulary_text()
    tokenizer = build_tokenizer(vocabulary)
    guard_tokenizer = build_tokenizer(vocabulary, guard_chat_template())
    return tokenizer, guard_tokenizer, build_components(world, tokenizer, guard_tokenizer, recipe)


Corpus = tuple[PreTrainedTokenizerFast, PreTrainedTokenizerFast, dict[str, list[Example]]]


def _build_into(
    staging: Path, recipe: ZooRecipe, log: Callable[[str], None], workers: int
) -> dict[str, float]:
    """Train every member not in ``staging`` yet, each once its parent is there; returns the seconds
    each took. The members of a wave (their parents built) train ``workers`` at a time."""
    corpus = zoo_corpus(recipe)
    timings: dict[str, float] = {}
    built: set[str] = set()
    while len(built) < len(MEMBERS):
        wave = [m for m in MEMBERS if m.name not in built and (m.parent is None or m.parent in built)]
        todo = []
        for member in wave:
            if (staging / member.name / "model.safetensors").is_file():
                log(f"zoo: {member.name} already trained (resuming)")
            else:
                todo.append(member)
        if len(todo) > 1 and workers > 1:
            timings |= _train_side_by_side(staging, recipe, todo, workers, log, corpus)
        else:
            for member in todo:
                timings[member.name] = _train_member(staging, recipe, member, corpus, log)
        built |= {m.name for m in wave}
    return timings


def _train_member(
    staging: Path, recipe: ZooRecipe, member: ZooMember, corpus: Corpus, log: Callable[[str], None]
) -> float:
    """Train one member from its parent in ``staging`` (or from scratch) and save it there."""
    tokenizer, guard_tokenizer, components = corpus
    index = MEMBERS.index(member)
    spec: TrainSpec = getattr(recipe, member.name)
    log(f"zoo: training {member.name} ({spec.steps} steps) - {member.role}")
    started = time.monotonic()
    model = (
        _fresh_model(recipe.shape, len(tokenizer), recipe.train_seed, tokenizer)
        if member.parent is None
        else LlamaForCausalLM.from_pretrained(
            staging / member.parent, dtype=torch.float32, use_safetensors=True
        )
    )
    seed = recipe.train_seed + index
    torch.manual_seed(seed)
    train(model, components, spec, seed, tokenizer.pad_token_id, log, member.name, opening_once=True)
    _save(model, guard_tokenizer if member.name == "guard" else tokenizer, staging / member.name)
    return round(time.monotonic() - started, 1)


def _train_side_by_side(
    staging: Path,
    recipe: ZooRecipe,
    members: list[ZooMember],
    workers: int,
    log: Callable[[str], None],
    corpus: Corpus,
) -> dict[str, float]:
    """``members`` in ``workers`` one-thread processes, the most work first (so that the longest does not
    start last); their progress lines come back through a queue and are logged here as they arrive."""
    components = corpus[2]
    members = sorted(members, key=lambda m: -_work(getattr(recipe, m.name), components))
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    lines = context.Queue()
    timings: dict[str, float] = {}
    with ProcessPoolExecutor(workers, context, initializer=_worker_start, initargs=(lines,)) as pool:
        running: set[Future[Any]] = {pool.submit(_worker_train, staging, recipe, m.name) for m in members}
        while running:
            done, running = wait(running, timeout=1, return_when=FIRST_COMPLETED)
            _drain(lines, log)
            for future in done:
                name, seconds = future.result()  # a worker's error is raised here
                timings[name] = seconds
        _drain(lines, log)
    return timings


def _work(spec: TrainSpec, components: dict[str, list[Example]]) -> float:
    """Tokens a training run processes, roughly: steps x batch x its mixture's mean example length."""

    def mean_length(name: str) -> float:
        examples = components[name]
        return sum(len(e.prompt_ids) + len(e.target_ids) for e in examples) / len(examples)

    total = sum(spec.mixture.values())
    mixed = sum(share / total * mean_length(name) for name, share in spec.mixture.items())
    return spec.steps * spec.batch_size * mixed


def _drain(lines: Any, log: Callable[[str], None]) -> None:
    with contextlib.suppress(queue.Empty):
        while True:
            log(lines.get_nowait())


_worker: dict[str, Any] = {}  # a worker process's progress queue and corpus (built once per worker)


def _worker_start(lines: Any) -> None:
    _worker["lines"] = lines


def _worker_train(staging: Path, recipe: ZooRecipe, name: str) -> tuple[str, float]:
    if _worker.get("digest") != recipe.digest():
        _worker.update(digest=recipe.digest(), corpus=zoo_corpus(recipe))
    member = next(m for m in MEMBERS if m.name == name)
    with deterministic_torch(threads=1):
        return name, _train_member(staging, recipe, member, _worker["corpus"], _worker["lines"].put)


def _fresh_model(
    shape: ModelShape, vocab_size: int, seed: int, tokenizer: PreTrainedTokenizerFast
) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0,
    )
    return LlamaForCausalLM(config).to(torch.float32)


def _save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


@contextlib.contextmanager
def torch_threads(threads: int = 2) -> Iterator[None]:
    """At most ``threads`` torch threads inside the block (the builders' fixed count), restored after."""
    was_threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, os.cpu_count() or 1))
    try:
        yield
    finally:
        torch.set_num_threads(was_threads)


@contextlib.contextmanager
def deterministic_torch(threads: int = 2) -> Iterator[None]:
    """Same recipe, same bytes: deterministic kernels and a fixed thread count while training."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch_threads(threads):
            yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
