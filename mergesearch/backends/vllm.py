"""The vLLM backend: a resident ``vllm.LLM`` whose weights are replaced in place, never reloaded.

The merge pool lives *inside* vLLM's worker process: a worker extension
(``MergeWorkerExtension``, passed as ``worker_extension_cls``) builds a ResidentMerger there once, then
each genome crosses the process boundary as a small recipe; the worker streams the merged tensors into
``model_runner.reload_weights(..., is_checkpoint_format=True)`` (which also repacks CPU kernels'
weights; calling ``model.load_weights`` directly does not, see docs/architecture.md), all through the public
``LLM.collective_rpc`` API. vLLM's native weight-transfer API (NCCL / CUDA IPC) moves tensors *from
another process*; ours are born inside the worker, so ``reload_weights`` is the route without a copy.
It is not a promised interface, hence the version check. The prefix cache is reset after every swap:
cached blocks belong to the old weights. Generation is greedy ``SamplingParams``; scoring uses prompt
log-probabilities, over the tokens lm-eval's ``VLLM.loglikelihood`` scores (``encode_pair``, the same
left truncation); ``sleep`` / ``wake_up`` free the accelerator for a judge sharing it (CUDA only).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergesearch.backends.base import (
    Prompt,
    Settled,
    check_weights,
    encode_pair,
    render_chat,
    reply_length,
    require_chat_template,
    rules_per_prompt,
)
from mergesearch.config import BackendConfig, TaskVectorsConfig
from mergesearch.errors import UserError

if TYPE_CHECKING:
    import psutil
    import torch

    from mergesearch.merge.recipe import MergeRecipe
    from mergesearch.merge.resident import ResidentMerger


UNTESTED_OK = "MERGESEARCH_UNTESTED_VLLM"
ENGINE_EXIT_S = 30.0  # how long ``close`` waits for the engine's processes once vLLM has stopped them

log = logging.getLogger(__name__)


def tested_vllm() -> str:
    """The vLLM versions the weight swap was tested with: the ``vllm`` extra's pin (pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    try:
        lines = requires("mergesearch") or []
    except PackageNotFoundError:
        return ""
    pins = [Requirement(line).specifier for line in lines if Requirement(line).name == "vllm"]
    return str(pins[0]) if pins else ""


def check_vllm_version(version: str) -> None:
    """The swap reaches into the worker (``model_runner.reload_weights``), which vLLM does not promise to
    keep: another version is refused in one line, unless the user opts in to try it."""
    from packaging.specifiers import SpecifierSet

    tested = tested_vllm()
    if (
        tested
        and not SpecifierSet(tested).contains(version, prereleases=True)
        and not os.environ.get(UNTESTED_OK)
    ):
        raise UserError(
            f"vLLM {version} is installed; the in-place weight swap was tested with vllm{tested}: "
            f"pip install -c constraints/gpu.txt -e '.[vllm]' (or set {UNTESTED_OK}=1 to try this one)"
        )


class MergeWorkerExtension:
    """Methods added to vLLM's worker (``self`` is the worker: it has ``model_runner`` and ``device``)."""

    def mergesearch_attach_pool(
        self,
        base: str,
        experts: dict[str, str],
        dtype: str,
        sort_magnitudes: bool,
        pool: str,
        task_vectors: dict[str, Any],
    ) -> int:
        import torch

        from mergesearch.config import TaskVectorsConfig
        from mergesearch.merge.resident import ResidentMerger

        device = getattr(self, "device", None)
        device = device if isinstance(device, torch.device) and device.type != "meta" else torch.device("cpu")
        self.mergesearch_merger = ResidentMerger(
            base,
            experts,
            dtype=dtype,
            device=device,
            log=lambda _: None,
            sort_magnitudes=sort_magnitudes,
            pool=pool,
            task_vectors=TaskVectorsConfig.model_validate(task_vectors),
        )
        return int(self.mergesearch_merger.num_layers or 0)

    def mergesearch_merge(self, recipe_json: str, seed: int | None) -> None:
        from mergesearch.merge.recipe import MergeRecipe

        recipe = MergeRecipe.model_validate_json(recipe_json)
        self.model_runner.reload_weights(
            weights_iterator=self.mergesearch_merger.merged_tensors(recipe, seed), is_checkpoint_format=True
        )

    def mergesearch_load(self, payload: bytes) -> None:
        from safetensors.torch import load

        self.model_runner.reload_weights(
            weights_iterator=iter(load(payload).items()), is_checkpoint_format=True
        )


class WorkerPool:
    """Stands for the ResidentMerger living in vLLM's worker (the evaluator holds no copy of its own)."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers


class VLLMBackend:
    """generate / loglikelihood / generate_with_first_logprobs / load_weights over a resident vLLM engine."""

    def __init__(
        self,
        llm: Any,
        max_new_tokens: int = 32,
        name: str = "model",
        max_model_len: int | None = None,
        chat_template_required: bool = True,
    ) -> None:
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        if chat_template_required:
            require_chat_template(self.tokenizer, name)
        self.max_new_tokens = max_new_tokens
        self.name = name
        self.max_model_len = max_model_len or llm.llm_engine.model_config.max_model_len

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        config: BackendConfig | None = None,
        name: str = "model",
        allow_pickle: bool = False,
        chat_template_required: bool = True,
        fixed_weights: bool = False,
        **engine: Any,
    ) -> VLLMBackend:
        """An engine on a local model folder, started with the config's engine settings (``engine``
        overrides them); safetensors weights only, unless ``allow_pickle``. ``fixed_weights`` (a
        judge's model) changes nothing here: vLLM caches shared prefixes itself."""
        check_weights(Path(path), allow_pickle)
        try:
            import vllm
        except ImportError:
            raise UserError(
                "backend.kind vllm: vLLM is not installed (GPU: pip install -c constraints/gpu.txt "
                "-e '.[vllm]'; CPU: `make test-vllm` builds .venv-vllm)"
            ) from None
        check_vllm_version(vllm.__version__)
        import torch

        config = config or BackendConfig(kind="vllm")
        positions = json.loads((Path(path) / "config.json").read_text()).get("max_position_embeddings", 2048)
        settings: dict[str, Any] = {
            "dtype": "float32",
            "max_model_len": min(2048, positions),
            "seed": 0,
            "enable_prefix_caching": True,
            "load_format": "auto" if allow_pickle else "safetensors",
        }
        if getattr(config, "sleep_mode", False) and not torch.cuda.is_available():
            raise UserError("backend.sleep_mode: vLLM sleeps only on a CUDA GPU; this engine runs on the CPU")
        if not torch.cuda.is_available():
            # The CPU build reserves `gpu_memory_utilization` of a NUMA node's RAM at start-up and refuses to
            # start when other processes hold more; a small KV cache is plenty for evaluation batches.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            settings["gpu_memory_utilization"] = 0.3
        settings.update(config.vllm_settings())
        settings.update(engine)
        llm = vllm.LLM(model=str(path), worker_extension_cls=f"{__name__}.MergeWorkerExtension", **settings)
        return cls(llm, config.max_new_tokens, name, settings["max_model_len"], chat_template_required)

    # ---------------------------------------------------------------- weights
    @property
    def device(self) -> torch.device:
        """Where the engine runs: vLLM's CUDA build on the GPU, its CPU build on the CPU."""
        import torch

        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def resident_merger(
        self,
        base: Path,
        experts: Mapping[str, Path],
        dtype: str,
        sort_magnitudes: bool = False,
        pool: str = "gpu",
        task_vectors: TaskVectorsConfig | None = None,
    ) -> WorkerPool:
        form = (task_vectors or TaskVectorsConfig()).model_dump()  # plain data crosses to the workers
        experts_ = {k: str(v) for k, v in experts.items()}
        layers = self.llm.collective_rpc(
            "mergesearch_attach_pool", args=(str(base), experts_, dtype, sort_magnitudes, pool, form)
        )
        return WorkerPool(layers[0])

    def merge_from(
        self, merger: WorkerPool | ResidentMerger, recipe: MergeRecipe, seed: int | None = None
    ) -> None:
        """Swap in the merge of ``recipe``: merged inside the worker when the pool lives there."""
        if isinstance(merger, WorkerPool):
            self.llm.collective_rpc("mergesearch_merge", args=(recipe.model_dump_json(), seed))
        else:
            self.load_weights(merger.merged_tensors(recipe, seed))
            return
        self.llm.reset_prefix_cache()

    def load_weights(
        self, named_tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]
    ) -> None:
        from safetensors.torch import save

        items = named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors
        # One safetensors blob: vLLM's RPC serialiser does not carry tensors nested in containers.
        payload = save({k: v.detach().cpu().contiguous() for k, v in items})
        self.llm.collective_rpc("mergesearch_load", args=(payload,))
        self.llm.reset_prefix_cache()

    def sleep(self, level: int = 1) -> None:
        self.llm.sleep(level=level)

    def wake_up(self) -> None:
        self.llm.wake_up()

    def close(self) -> None:
        """Stop the engine's processes now; a second call does nothing. Left to interpreter exit, vLLM
        stops it from an exit hook, beside its engine-monitor thread, while Python finalises: a CI run
        of the vLLM tests printed "9 passed" and still failed there."""
        engine_core = self.llm.llm_engine.engine_core
        processes = engine_processes(engine_core)
        engine_core.shutdown()
        # vLLM SIGKILLs an engine that outlives its grace period and returns at once: its worker may
        # still hold the model (and, on a GPU, its memory) when the next engine starts.
        for left in still_running(processes, ENGINE_EXIT_S):
            log.warning("vLLM engine process %d still runs %.0f s after close", left.pid, ENGINE_EXIT_S)

    def __enter__(self) -> VLLMBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- inference
    def render(self, prompt: Prompt) -> str:
        """The chat-templated text that precedes the assistant's reply."""
        return render_chat(self.tokenizer, prompt)

    def _token_prompts(self, texts: Sequence[str]) -> list[dict[str, list[int]]]:
        return [{"prompt_token_ids": self.tokenizer(t, add_special_tokens=False)["input_ids"]} for t in texts]

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        raw: bool = False,
        settled: Settled = None,
    ) -> list[str]:
        """As ``Backend.generate``; of a ``settled`` rule (one, or one per prompt), vLLM applies only its
        length (``max_tokens``, per prompt): its engine takes no per-token Python check."""
        from vllm import SamplingParams

        rules = rules_per_prompt(settled, len(prompts))
        params = [
            SamplingParams(
                temperature=temperature,
                max_tokens=reply_length(max_new_tokens, self.max_new_tokens, rule),
                seed=seed if temperature > 0 else None,
            )
            for rule in rules
        ]
        texts = [p if raw else self.render(p) for p in prompts]
        outputs = self.llm.generate(self._token_prompts(texts), params, use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outputs]

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """lm-eval's ``VLLM.loglikelihood`` from prompt log-probabilities: the same tokens (``encode_pair``),
        left-truncated to ``max_model_len`` - 1; greedy when every token is the top one vLLM reports."""
        from vllm import SamplingParams

        limit = self.max_model_len - 1  # vLLM needs room for one generated token
        pairs = [encode_pair(self.tokenizer, c, t) for c, t in requests]
        inputs = [(context + continuation)[-limit:] for context, continuation in pairs]
        params = SamplingParams(max_tokens=1, prompt_logprobs=1, temperature=0.0)
        outputs = self.llm.generate([{"prompt_token_ids": i} for i in inputs], params, use_tqdm=False)
        results = []
        for (_, continuation), tokens, output in zip(pairs, inputs, outputs):
            total, greedy = 0.0, True
            for position in range(len(tokens) - len(continuation), len(tokens)):
                candidates = {t: lp.logprob for t, lp in output.prompt_logprobs[position].items()}
                total += candidates[tokens[position]]
                greedy &= max(candidates, key=candidates.__getitem__) == tokens[position]
            results.append((total, greedy))
        return results

    def generate_with_first_logprobs(
        self, texts: Sequence[str], token_ids: Sequence[int], max_new_tokens: int | None = None
    ) -> tuple[list[str], list[list[float]]]:
        """Greedy replies and, from the same request, the log-probabilities of ``token_ids`` as each
        reply's first token, read from vLLM's top 20 there."""
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=max_new_tokens or self.max_new_tokens, logprobs=20, temperature=0.0
        )
        outputs = self.llm.generate(self._token_prompts(texts), params, use_tqdm=False)
        floor = -1e4  # a verdict token outside the top 20 is as good as impossible
        firsts = [o.outputs[0].logprobs[0] for o in outputs]
        return (
            [o.outputs[0].text.strip() for o in outputs],
            [[first[t].logprob if t in first else floor for t in token_ids] for first in firsts],
        )


def engine_processes(engine_core: Any) -> list[psutil.Process]:
    """The engine's processes and their children (its workers). vLLM's process manager holds the
    engine cores; an in-process engine, or one Ray places, has none here."""
    import psutil  # a dependency of vLLM's

    manager = getattr(getattr(engine_core, "resources", None), "engine_manager", None)
    found: list[psutil.Process] = []
    for proc in getattr(manager, "processes", ()):
        with suppress(psutil.NoSuchProcess):
            core = psutil.Process(proc.pid)
            found += [core, *core.children(recursive=True)]
    return found


def still_running(processes: Iterable[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait up to ``timeout_s`` for every process to exit; those still running then. A zombie has
    exited (it holds no memory): its reaping is its parent's business."""
    import psutil

    def running(process: psutil.Process) -> bool:
        with suppress(psutil.NoSuchProcess):
            return process.status() != psutil.STATUS_ZOMBIE
        return False

    deadline = time.monotonic() + timeout_s
    left = [p for p in processes if running(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if running(p)]
    return left
