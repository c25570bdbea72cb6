"""Evaluation data as lm-eval tasks: local YAML tasks written from our items, run with ``simple_evaluate``.

lm-eval declares tasks as data; we write one per question set (a JSONL file and a YAML next to it) so a
merge can be scored by lm-eval itself, offline, and compared with our own ``task_accuracy``. The context
of each item is the question already rendered with the model's chat template, and the options follow it
with no delimiter: exactly the (context, continuation) pairs our backend scores (a test checks acc,
acc_norm and each option's log-likelihood against lm-eval's ``HFLM`` on SmolLM2).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mergesearch.errors import UserError
from mergesearch.io import atomic_write_text
from mergesearch.objectives.task import ChoiceItem
from mergesearch.registry import LM_EVAL_MODELS
from mergesearch.runtime import cache_root

if TYPE_CHECKING:
    from mergesearch.backends.base import Backend


def write_choice_task(
    items: Sequence[ChoiceItem], render: Callable[[str], str], folder: Path, name: str
) -> str:
    """A multiple-choice lm-eval task (``acc``, ``acc_norm``) in ``folder``; returns its name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text(
        "".join(
            json.dumps({"context": render(i.prompt), "choices": list(i.choices), "answer": i.answer}) + "\n"
            for i in items
        )
    )
    task = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": "",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return name


def hf_lm(model: Any, tokenizer: Any, batch_size: int = 16, device: str = "cpu") -> Any:
    """lm-eval's own transformers model around an in-memory model. (It warns that an in-memory model is not a
    name and that it assumes one process: both true and expected here, so its warnings are kept quiet.)
    Its per-request progress bars are off: lm-eval asks for them explicitly, which ``TQDM_DISABLE`` does
    not override, and our progress lines say enough."""
    import logging

    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.ERROR)

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests: list, disable_tqdm: bool = True) -> list:
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = True) -> list:
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests: list, disable_tqdm: bool = True) -> list:
            return super().generate_until(requests, disable_tqdm=True)

    return QuietHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)


def backend_lm(backend: Backend) -> Any:
    """lm-eval's model interface over one of our resident backends (how promotion runs lm-eval on vLLM:
    the CPU build of vLLM is not found by lm-eval's own ``vllm`` model, and a resident engine is reused).
    Requests go to ``backend.loglikelihood`` as lm-eval's strings; it tokenises them as lm-eval's own
    models do (``mergesearch.backends.base.encode_pair``)."""
    from lm_eval.api.model import LM

    class BackendLM(LM):
        def loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
            return backend.loglikelihood([tuple(r.args) for r in requests])

        def generate_until(self, requests: list) -> list[str]:
            replies = []
            for request in requests:
                context, settings = request.args
                text = backend.generate(
                    [context], max_new_tokens=settings.get("max_gen_toks", 256), raw=True
                )[0]
                for stop in settings.get("until", []) or []:
                    text = text.split(stop)[0]
                replies.append(text)
            return replies

        def loglikelihood_rolling(self, requests: list) -> list[float]:
            raise UserError("promotion: perplexity-style lm-eval tasks need `promotion.backend: hf`")

    return BackendLM()


# lm-eval's model over a backend, by the backend's kind: a plug-in backend may register its own adapter;
# one that registers none gets ``backend_lm``, which needs only the Backend protocol.
register_lm_eval_model = LM_EVAL_MODELS.register


@register_lm_eval_model("hf")
def _hf_model(backend: Any) -> Any:
    """lm-eval's own ``HFLM`` around the transformers backend's model: lm-eval's reference implementation,
    perplexity-style tasks included, at the backend's batch size."""
    return hf_lm(backend.model, backend.tokenizer, backend.batch_size, str(backend.device))


register_lm_eval_model("vllm")(backend_lm)


def lm_eval_model(kind: str, backend: Backend) -> Any:
    """The lm-eval model for a backend of ``kind``: its registered adapter, else ``backend_lm``."""
    factory = LM_EVAL_MODELS.get(kind) if kind in LM_EVAL_MODELS else backend_lm
    return factory(backend)


def check_tasks(tasks: Sequence[str], field: str) -> None:
    """Every task (or group) named is one lm-eval knows, found before a search rather than after it."""
    if not tasks:
        return
    import difflib

    known = known_tasks()
    for task in tasks:
        if task not in known:
            near = difflib.get_close_matches(task, sorted(known), n=3)
            hint = f"did you mean {', '.join(near)}?" if near else "`lm-eval ls tasks` lists them"
            raise UserError(f"{field}: {task!r} is not an lm-eval task ({hint})")


def check_task_datasets(tasks: Sequence[str], field: str) -> None:
    """Every dataset the tasks read is in this machine's Hugging Face cache (the hub is not reached at run
    time): one line naming the task and the dataset that is not, before any actor starts, rather than an
    error after an hour of search. ``mergesearch prefetch`` fetches them where the hub is reachable."""
    for task, needed in task_datasets(tasks).items():
        for path, name in needed:
            if not dataset_cached(path, name):
                shown = f"{path} ({name})" if name else path
                raise UserError(
                    f"{field}: {task} reads the dataset {shown}, which is not in this machine's Hugging Face "
                    f"cache ({datasets_cache()}); fetch it where the hub is reachable: `mergesearch prefetch "
                    "CONFIG` (docs/cluster.md)"
                )


def fetch_task_datasets(tasks: Sequence[str], log: Callable[[str], None]) -> list[str]:
    """Fetch into the Hugging Face cache every dataset the tasks read that is not there yet (with the hub
    reachable: ``HF_HUB_OFFLINE`` is lifted for this call); returns what was fetched. One that cannot be
    fetched is one line naming it."""
    import datasets

    fetched = []
    for task, needed in task_datasets(tasks).items():
        for path, name in needed:
            shown = f"{path} ({name})" if name else path
            if dataset_cached(path, name):
                continue
            log(f"prefetch: {task}: {shown}")
            try:
                with hub_offline(False):
                    datasets.load_dataset(path, name)
            except Exception as err:  # the hub unreachable, a gated dataset, a wrong name: said as it is
                first = (str(err).splitlines() or [type(err).__name__])[0][:200]
                raise UserError(f"prefetch: {task}: cannot fetch {shown} ({first})") from None
            fetched.append(shown)
    return fetched


def datasets_cache() -> str:
    return os.environ.get("HF_DATASETS_CACHE") or str(
        Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "datasets"
    )


@contextlib.contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """``datasets`` with the hub off (a cache look-up) or on (a fetch) for the block, as it was after."""
    import datasets

    was = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = offline
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = was


def dataset_cached(path: str, name: str | None) -> bool:
    """Whether ``datasets`` finds the dataset without the hub (its own offline look-up)."""
    import datasets

    try:
        with hub_offline(True):
            datasets.load_dataset_builder(path, name)
    except Exception:  # any failure to find it offline means: not there
        return False
    return True


def task_datasets(tasks: Sequence[str]) -> dict[str, list[tuple[str, str | None]]]:
    """The hub datasets (path, config name) each task or group reads, its subtasks' included, from lm-eval's
    task configs (cached like ``known_tasks``). Local data (``json`` with files) needs no fetching."""
    spec = importlib.util.find_spec("lm_eval")
    if not tasks or spec is None or not spec.submodule_search_locations:
        return {}
    folder = Path(next(iter(spec.submodule_search_locations))) / "tasks"
    index = cached_index(folder, importlib.metadata.version("lm_eval"), "datasets", _index_task_datasets)
    return {task: [tuple(pair) for pair in index.get(task, [])] for task in tasks}


def _index_task_datasets() -> dict[str, list[list[str | None]]]:
    """Every task, group and tag lm-eval knows, with the hub datasets its leaf tasks read."""
    from lm_eval.tasks import TaskManager

    index = TaskManager().task_index
    tagged: dict[str, list[str]] = {}
    for entry in index.values():
        for tag in entry.tags or ():
            tagged.setdefault(tag, []).append(entry.name)

    def leaves(name: str, seen: frozenset[str]) -> set[tuple[str, str | None]]:
        if name in seen:
            return set()
        entry = index.get(name)
        if entry is None or entry.kind.name == "TAG":  # every task that carries the tag
            return {pair for member in tagged.get(name, []) for pair in leaves(member, seen | {name})}
        cfg = entry.cfg or {}
        if "dataset_path" in cfg:
            local = cfg["dataset_path"] in ("json", "csv", "parquet", "text", "arrow")
            return set() if local else {(cfg["dataset_path"], cfg.get("dataset_name"))}
        members = cfg.get("task", [])
        members = members if isinstance(members, list) else [members]
        return {pair for m in members if isinstance(m, str) for pair in leaves(m, seen | {name})}

    names = set(index) | set(tagged)
    return {name: sorted(map(list, leaves(name, frozenset())), key=str) for name in names}


def known_tasks() -> frozenset[str]:
    """The names of lm-eval's built-in tasks and groups: ``TaskManager().all_tasks``, cached. lm-eval
    parses every task YAML to list them (seconds, for thousands of names), which each ``config check``
    and each ``search`` that names tasks would pay; the cache is keyed by the install (lm-eval's
    version and its task files), so an upgrade or an edited task file indexes again."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("promotion.tasks: lm-eval is not installed (pip install lm-eval)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "tasks"
    return cached_task_names(folder, importlib.metadata.version("lm_eval"), _index_lm_eval_tasks)


def _index_lm_eval_tasks() -> Collection[str]:
    from lm_eval.tasks import TaskManager

    return TaskManager().all_tasks


def cached_task_names(folder: Path, version: str, index: Callable[[], Collection[str]]) -> frozenset[str]:
    """``index()``'s names, cached as ``cached_index`` caches."""
    return frozenset(cached_index(folder, version, "tasks", lambda: sorted(index())))


def cached_index(folder: Path, version: str, kind: str, index: Callable[[], Any]) -> Any:
    """``index()`` (JSON), read from the cache while ``version`` and the task files under ``folder``
    (how many there are and their latest change) are those it was written for; else indexed and
    written. A cache file that does not read back is indexed again, and one that cannot be written
    (a read-only cache) is skipped: neither is an error."""
    files, latest = 0, 0
    for root, _, names in os.walk(folder):
        for name in names:
            if name.endswith((".yaml", ".yml", ".py")):
                files += 1
                latest = max(latest, os.stat(os.path.join(root, name)).st_mtime_ns)
    key = json.dumps([version, str(folder.resolve()), files, latest])
    digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    path = cache_root() / "lm_eval_tasks" / (f"{digest}.json" if kind == "tasks" else f"{digest}-{kind}.json")
    try:
        return json.loads(path.read_text())[kind]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = index()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"key": key, kind: found}) + "\n")
    return found


def task_manager(tasks: Sequence[str], include_path: Path | None) -> Any:
    """lm-eval's task index: our own tasks alone when every task asked for is one of them, else with
    lm-eval's built-in tasks too. Indexing the built-ins (thousands of YAML files) costs seconds on every
    call, more than scoring a toy model's held-out questions."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if set(tasks) <= set(local.all_tasks):
            return local
    return TaskManager(include_path=str(include_path) if include_path else None)


def run_lm_eval(
    lm: Any, tasks: Sequence[str], include_path: Path | None = None
) -> dict[str, dict[str, float]]:
    """lm-eval's ``simple_evaluate`` with ``lm`` (``hf_lm`` or ``backend_lm``); per task, its metrics."""
    from lm_eval import simple_evaluate

    results = simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=task_manager(tasks, include_path),
        log_samples=False,
        bootstrap_iters=0,
        verbosity="ERROR",
    )
    return task_metrics(results["results"])


def task_metrics(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per task, every metric lm-eval reported, by its own name (``acc``, ``exact_match``), with the
    filter it went through when there is one (gsm8k's ``exact_match (strict-match)`` and ``exact_match
    (flexible-extract)`` are two numbers, not one); standard errors left out."""
    named = {}
    for task, metrics in results.items():
        named[task] = {}
        for key, value in metrics.items():
            metric, _, applied = key.partition(",")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or metric.endswith("_stderr"):
                continue
            named[task][metric if applied in ("", "none") else f"{metric} ({applied})"] = value
    return named
