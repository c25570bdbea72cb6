"""SearchConfig and its parts: frozen pydantic models, validated once at the edge.

Every model forbids unknown keys, so a typo in a YAML file is an error naming the field instead of a
silently ignored setting. ``load_config`` turns any validation problem into one ``ConfigError`` line
naming the file and the dotted field path.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mergesearch.errors import ConfigError, UserError
from mergesearch.registry import (
    BACKENDS,
    JUDGES,
    MERGE_METHODS,
    OBJECTIVES,
    REFUSAL_DETECTORS,
    SEARCHERS,
    SETTLE_RULES,
    TASK_VECTOR_FORMS,
    Registry,
    load_plugins,
)

NAME_LENGTH = 40  # names go into gene names, run dirs and report columns
Name = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", max_length=NAME_LENGTH)]
# An expert's name as a researcher writes it (`OpenBioLLM-8B`, `Llama-3.1-8B`): a folder name, then, so no
# path separator or control character; genes use its gene id.
EXPERT_NAME_LENGTH = 64


def _expert_name(name: str) -> str:
    if re.search(r"[/\\\x00-\x1f]", name):
        raise ValueError("an expert's name may hold any character but `/`, `\\` and control characters")
    return name


ExpertName = Annotated[str, Field(min_length=1, max_length=EXPERT_NAME_LENGTH), AfterValidator(_expert_name)]


def gene_id(expert: str) -> str:
    """The name an expert goes by in gene names (``w.<gene id>.g0``) and the mergekit recipe's keys: its
    name with every character but letters, digits and ``_`` made ``_`` (and ``e_`` first where it would not
    start with a letter), so a gene name always parses; the report shows the expert's own name."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", expert)
    return safe if safe[:1].isalpha() else f"e_{safe}"


Unit = Annotated[float, Field(ge=0.0, le=1.0)]

Params = dict[str, Any]


def registered(registry: Registry[Any], name: str) -> str:
    """``name`` if ``registry`` has it; else a ValueError pydantic reports under the field's path."""
    if name not in registry:
        raise ValueError(f"unknown {registry.what} {name!r}; known: {', '.join(registry)}")
    return name


class Frozen(BaseModel):
    """Base for every config part: immutable, unknown keys rejected, defaults validated too."""

    # Each field's docstring is its description: the configuration reference is generated from them.
    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, use_attribute_docstrings=True
    )


class Bounds(Frozen):
    low: float
    """Lowest value the searcher may propose."""
    high: float
    """Highest value the searcher may propose (above `low`)."""

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"low ({self.low}) and high ({self.high}) must be finite numbers")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class ExpertSpec(Frozen):
    """One expert: its name and a Hugging Face folder."""

    name: ExpertName
    """The expert's name as reports show it (`OpenBioLLM-8B`): anything but `/`, up to 64 characters; gene
    names use it with every character but letters, digits and `_` made `_` (`w.OpenBioLLM_8B.g0`)."""
    path: str = Field(min_length=1)
    """The expert's Hugging Face folder, or a model scheme such as `zoo:math`."""


Dtype = Literal["float32", "bfloat16", "float16"]
DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}


class ModelsConfig(Frozen):
    base: str = Field(min_length=1)
    """The base model's Hugging Face folder (or a scheme such as `zoo:base`); task vectors are expert minus
    base."""
    experts: list[ExpertSpec] = []
    """The experts to merge, each with the base's architecture."""
    pool: str | None = None
    """A pool file listing more experts (a YAML list; globs over folders, or `<scheme>:*`), expanded after
    `experts`."""
    tokenizer_source: str = "base"
    """Whose tokenizer the merged model takes (mergekit's `tokenizer_source`): `base`, an expert's name, or
    a model folder. The candidate engine, the saved model and `best/recipe.yaml` use it."""
    chat_template: str | None = None
    """The merged model's chat template (mergekit's `chat_template`): one of mergekit's (`llama3`, `chatml`,
    `alpaca`, `mistral`, `exaone`) or a Jinja file; unset: the tokenizer's own. A base without one
    (Meta-Llama-3-8B) needs it: every prompt is rendered through it."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """The merge pool's precision (base and task vectors); engines default to it too. `auto`: bfloat16
    when the evaluators run on a GPU (a GPU share, or `backend.device: cuda`), else float32; the run dir
    records the dtype it resolved to."""

    @field_validator("experts")
    @classmethod
    def _unique_names(cls, experts: list[ExpertSpec]) -> list[ExpertSpec]:
        names = [e.name for e in experts]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"expert names must be unique, repeated: {', '.join(duplicates)}")
        by_gene: dict[str, str] = {}
        for name in names:
            other = by_gene.setdefault(gene_id(name), name)
            if other != name:
                raise ValueError(f"experts {other!r} and {name!r} both go by {gene_id(name)!r} in gene names")
        return experts

    @model_validator(mode="after")
    def _some_experts(self) -> ModelsConfig:
        if not self.experts and self.pool is None:
            raise ValueError("experts: list at least one expert, or name a pool file (`pool`)")
        return self


class TaskVectorsConfig(Frozen):
    """How the pool keeps each expert's task vector (``merge/compact.py``): ``dense``, ``sparse`` (the
    ``density`` share of entries largest in magnitude) or ``low_rank`` (per matrix, rank ``rank``)."""

    form: str = "dense"
    """`dense`, `sparse` or `low_rank` (a registry: plug-ins add forms)."""
    density: float = Field(default=0.1, gt=0.0, le=1.0)
    """`sparse`: the share of each task vector's entries kept, largest in magnitude."""
    rank: int = Field(default=32, ge=1)
    """`low_rank`: the rank of each matrix's truncated SVD."""

    _known_form = field_validator("form")(lambda cls, form: registered(TASK_VECTOR_FORMS, form))


class GatesConfig(Frozen):
    """Per-expert gates on top of the weights, for many-expert pools: each expert gets one gene
    (``gate.<expert>``, 0-1); ``threshold``: an expert takes part when its gate is at least 0.5;
    ``top_k``: the ``k`` experts with the highest gates take part, ties to the earlier expert (so a genome
    with more than k gates at 1, such as the uniform warm start, opens the first k). A closed expert
    merges at weight 0."""

    kind: Literal["threshold", "top_k"] = "threshold"
    """`threshold`: an expert takes part when its gate is at least 0.5; `top_k`: the `k` highest gates."""
    k: int | None = Field(default=None, ge=1)
    """`top_k` gates: how many experts take part."""

    @model_validator(mode="after")
    def _k_for_top_k(self) -> GatesConfig:
        if (self.kind == "top_k") != (self.k is not None):
            raise ValueError("k: `top_k` gates take k (how many experts), `threshold` gates take none")
        return self


def method_options(method: str, choices: Sequence[str]) -> tuple[str, ...]:
    """The methods a search may merge with, in the order the ``method`` gene indexes them: ``method``
    first, then the other ``choices``."""
    return tuple(dict.fromkeys([method, *choices]))


class MergeSpaceConfig(Frozen):
    """What the searcher varies: the method, how layers are grouped, each searched parameter's bounds
    (default: the method's declared bounds) and the method's shared settings."""

    method: str = "task_arithmetic"
    """The merge method (a registry name: `task_arithmetic`, `ties`, `dare_ties`, `slerp`, `tsvm`, ...)."""
    choices: list[str] = []
    """Other methods the search may choose instead of `method`: a categorical gene `method` picks one per
    trial (needs a searcher that takes a categorical gene: `tpe`, `nsga2`, `random`, `grid`, `ngopt`,
    `de`, `pso`). Genes the methods share (`weight`...) are one gene; `method` is the first proposal's."""
    granularity: Literal["global", "groups", "layer"] = "global"
    """`global`: one set of genes; `groups`: one per `group_size` layers; `layer`: one per decoder layer."""
    group_size: int = Field(default=1, ge=1)
    """Layers per gene group when `granularity` is `groups`."""
    bounds: dict[str, Bounds] = {}
    """Per searched parameter (`weight`, `density`, ...): the range the searcher explores; default: the
    method's declared bounds."""
    params: Params = {}
    """The method's shared settings, by mergekit's names (`normalize`, `lambda`, `epsilon`, ...)."""
    weights_sum_to_one: bool = False
    """Decode each group's expert weights so that they sum to 1."""
    pool_device: Literal["gpu", "host"] = "gpu"
    """Where the base and task vectors live: `gpu`, with the live model (its GPU when it has one), or `host`,
    in pinned host RAM, each tensor's slice streamed to the model's device as it is merged (the pool need
    not fit next to the live model; one host-to-device copy of the pool per genome)."""
    task_vectors: TaskVectorsConfig = Field(default_factory=TaskVectorsConfig)
    """How the pool keeps each expert's task vector."""
    gates: GatesConfig | None = None
    """Per-expert gate genes for many-expert pools; unset: every expert takes part."""
    from_recipe: str | None = None
    """A mergekit recipe (YAML) the search starts from: its merge is the first proposal and each gene is
    bounded to ± `recipe_radius` of its parameter's range around the recipe's value. Its models are matched
    to `models.experts` by folder (or folder name); experts it leaves out start at weight 0."""
    recipe_radius: float = Field(default=0.25, gt=0.0, le=1.0)
    """With `from_recipe`: how far around the recipe the search looks, as a share of each range."""

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        return registered(MERGE_METHODS, method)

    @field_validator("choices")
    @classmethod
    def _known_choices(cls, choices: list[str]) -> list[str]:
        return [registered(MERGE_METHODS, method) for method in choices]

    @property
    def methods(self) -> tuple[str, ...]:
        """Every method the search may merge with (``method_options``)."""
        return method_options(self.method, self.choices)

    @model_validator(mode="after")
    def _declared_params(self) -> MergeSpaceConfig:
        methods = [MERGE_METHODS.get(m) for m in self.methods]
        for field, names, scopes in (
            ("bounds", self.bounds, ("expert", "group")),
            ("params", self.params, ("shared",)),
        ):
            allowed = list(dict.fromkeys(p.name for method in methods for p in method.scoped(*scopes)))
            unknown = sorted(set(names) - set(allowed))
            if unknown:
                raise ValueError(
                    f"{field}: {' / '.join(self.methods)} has no "
                    f"{'searched' if field == 'bounds' else 'shared'} parameter "
                    f"{unknown[0]!r} (it has: {', '.join(allowed) or 'none'})"
                )
        return self

    @model_validator(mode="after")
    def _something_to_search(self) -> MergeSpaceConfig:
        if len(self.methods) == 1 and not MERGE_METHODS.get(self.method).scoped("expert", "group"):
            raise ValueError(
                f"method: {self.method} has no genes to search (no per-expert or per-group parameter); "
                "merge and score it once with `mergesearch eval --from-recipe RECIPE`"
            )
        return self

    @model_validator(mode="after")
    def _gates_need_weights(self) -> MergeSpaceConfig:
        for method in self.methods if self.gates is not None else ():
            if "weight" not in (p.name for p in MERGE_METHODS.get(method).params):
                raise ValueError(f"gates: {method} has no per-expert weight for a gate to close")
        return self


class DataConfig(Frozen):
    """The evaluation data: a dataset folder (``path``), or a data spec the search generates it from first."""

    path: str | None = None
    """A dataset folder (`rows.parquet` + `card.json`)."""
    spec: str | None = None
    """A data spec (`data_specs/*.yaml`) generated into `<run dir>/data` when `path` is not set."""
    split: Literal["search", "heldout"] = "search"
    """The split merges are scored on during the search; promotion scores the held-out one."""
    max_alignment_prompts: int = Field(default=200, ge=1)
    """At most this many harmful prompts per evaluation."""
    max_task_prompts: int = Field(default=200, ge=1)
    """At most this many task questions per evaluation."""


class EngineConfig(Frozen):
    """How an inference engine starts: shared by the candidate's backend and the judge's.

    ``dtype`` unset means the pool's (``models.dtype``); the vLLM settings reach ``vllm.LLM`` as they
    are (unset: the backend's defaults, docs/architecture.md); the transformers backend uses ``dtype``
    only."""

    dtype: Dtype | None = None
    """The engine's precision; unset: `models.dtype`."""
    gpu_memory_utilization: float | None = Field(default=None, gt=0.0, le=1.0)
    """vLLM: the share of the GPU's memory the engine takes; unset: the backend's default."""
    max_model_len: int | None = Field(default=None, ge=16)
    """vLLM: the longest prompt plus answer, in tokens; unset: the model's."""
    tensor_parallel_size: int = Field(default=1, ge=1)
    """vLLM: GPUs per engine."""
    enforce_eager: bool = True
    """vLLM: run without CUDA graphs (faster start, slower steps)."""
    prefix_reuse: bool = True
    """hf: the choices of one question share their context, run once; so does the opening every prompt of a
    batch shares (a chat template's system turn, a guard's policy)."""

    def vllm_settings(self) -> dict[str, Any]:
        """The settings ``vllm.LLM`` takes, only those set."""
        settings = {
            "dtype": self.dtype,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_model_len": self.max_model_len,
            "tensor_parallel_size": self.tensor_parallel_size,
            "enforce_eager": self.enforce_eager,
        }
        return {k: v for k, v in settings.items() if v is not None}


class RunnerConfig(EngineConfig):
    """What runs a model: a backend from the registry, on a device, with the engine settings. Data
    generation's models take this alone (their batch size and answer length are the data spec's)."""

    kind: str = "hf"
    """What runs the model: `hf` (transformers) or `vllm` (a registry)."""

    _known_kind = field_validator("kind")(lambda cls, kind: registered(BACKENDS, kind))
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto`: the GPU Ray gave the actor, else the CPU."""

    def with_batches(self, batch_size: int, max_new_tokens: int) -> BackendConfig:
        """The backend settings for this runner at a batch size and answer length of the caller's."""
        return BackendConfig(**self.model_dump(), batch_size=batch_size, max_new_tokens=max_new_tokens)


class BackendConfig(RunnerConfig):
    """What runs each candidate merge: the engine settings, and what only a candidate's engine does."""

    batch_size: int = Field(default=64, ge=1)
    """Prompts per generation batch."""
    max_new_tokens: int = Field(default=32, ge=1, le=4096)
    """The longest answer generated, in tokens."""
    sleep_mode: bool = False
    """vLLM on CUDA: the candidate engine sleeps while its answers are judged, handing its KV cache (and, at
    level 1, its weights, kept in host RAM) to a judge on the same GPU."""

    def vllm_settings(self) -> dict[str, Any]:
        return {**super().vllm_settings(), **({"enable_sleep_mode": True} if self.sleep_mode else {})}

    @model_validator(mode="after")
    def _sleep_on_vllm(self) -> BackendConfig:
        if self.sleep_mode and self.kind != "vllm":
            raise ValueError("sleep_mode is a vLLM feature: it needs kind vllm")
        return self


class JudgeConfig(EngineConfig):
    """Who decides whether a response to a harmful prompt is safe: refusal patterns or a guard model
    (run by ``backend``, started with the engine settings)."""

    kind: str = "refusal"
    """`refusal` (patterns, no model) or `llama_guard` (a guard model) (a registry)."""
    model: str | None = None
    """`llama_guard`: the guard model's folder or scheme (`zoo:guard`)."""
    backend: str = "hf"
    """What runs the guard model: `hf` or `vllm`."""
    version: Literal[1, 2, 3, 4] = 3
    """The Llama Guard generation (prompt format, category codes)."""
    excluded_categories: list[str] = []
    """Category codes left out of the guard's policy, e.g. `[S6, S8]`."""
    batch_size: int = Field(default=32, ge=1)
    """Pairs per guard call."""
    allow_pickle: bool = False
    """Load a `.bin` (pickle) guard model: pickle runs code, so only when asked."""
    verdict_cache: bool = True
    """The judge's actor keeps every verdict by (prompt, response) for the search; off only to measure what
    that saves."""

    _known_kind = field_validator("kind")(lambda cls, kind: registered(JUDGES, kind))
    _known_backend = field_validator("backend")(lambda cls, kind: registered(BACKENDS, kind))

    @model_validator(mode="after")
    def _model_for_guard(self) -> JudgeConfig:
        if self.kind == "llama_guard" and not self.model:
            raise ValueError("a llama_guard judge needs `model` (a Llama Guard style model folder)")
        return self


class EarlyExitConfig(Frozen):
    """In the search, an answer stops once the verdict that reads it is settled: a harmful prompt's by the
    judge's rule (the refusal judge: its opening decided; a guard: ``guard_tokens`` generated), a benign
    one by the refusal rules' (over-refusal reads them, whoever judges safety), a short answer once it is
    stated for good. Held-out evaluation and promotion read full answers (objectives/early_exit.py)."""

    enabled: bool = False
    """Stop each answer of the search's evaluations once its verdict is settled."""
    guard_tokens: int = Field(default=24, ge=1)
    """A guard judge reads answers cut to this many tokens: a length chosen where its verdicts agree with
    full-length ones (docs/concepts/cheaper-fitness.md)."""
    benign_tokens: int | None = Field(default=None, ge=1)
    """Benign answers also stop after this many tokens; unset: only once their refusal verdict is
    settled."""
    answer_tokens: int | None = Field(default=None, ge=1)
    """Short answers also stop after this many tokens; unset: only once they state their answer."""


# Keys an earlier version wrote under `judge` (a run dir's config.yaml holds them all): read as the new ones.
MOVED_KEYS = {
    "early_exit": "enabled",
    "early_exit_tokens": "guard_tokens",
    "early_exit_benign_tokens": "benign_tokens",
    "early_exit_answer_tokens": "answer_tokens",
}
_warned: set[tuple[str, ...]] = set()


def migrate_judge_keys(data: Any) -> Any:
    """A config of an earlier version, its early-exit settings moved from ``judge`` to ``early_exit`` and
    its judge's ``sleep_mode`` (always off: a judge never slept) dropped, said once per process in one
    warning line on stderr."""
    judge = data.get("judge") if isinstance(data, dict) else None
    if not isinstance(judge, dict) or not (set(judge) & {*MOVED_KEYS, "sleep_mode"}):
        return data
    if judge.get("sleep_mode"):
        raise ValueError(
            "judge.sleep_mode: the judge serves every evaluator and never sleeps (set it on backend)"
        )
    moved = {new: judge[old] for old, new in MOVED_KEYS.items() if old in judge}
    if moved and "early_exit" in data:
        raise ValueError("judge.early_exit*: set them under `early_exit` only (both are given)")
    old = tuple(sorted(set(judge) & {*MOVED_KEYS, "sleep_mode"}))
    if old not in _warned:
        _warned.add(old)
        moves = [f"judge.{k} -> early_exit.{MOVED_KEYS[k]}" for k in old if k in MOVED_KEYS]
        moves += ["judge.sleep_mode dropped (a judge never sleeps)"] if "sleep_mode" in old else []
        said = "; ".join(moves)
        print(f"warning: a config of an earlier version, read as this one: {said}", file=sys.stderr)
    kept = {k: v for k, v in judge.items() if k not in MOVED_KEYS and k != "sleep_mode"}
    return {**data, "judge": kept, **({"early_exit": moved} if moved else {})}


class FitnessConfig(Frozen):
    """Weights of the objectives summed into the single fitness the searchers maximise."""

    weights: dict[str, Annotated[float, Field(ge=0.0)]] = {
        "safety": 1.0,
        "task_accuracy": 1.0,
        "over_refusal": 0.5,
    }
    """Each objective's weight in the fitness the searchers maximise (`safety`, `task_accuracy`,
    `over_refusal`, `loss_proxy`, ...)."""
    task_metric: Literal["acc", "acc_norm"] = "acc"
    """lm-eval's multiple-choice metric: `acc` or `acc_norm`."""
    loss_alpha: float = Field(default=1.0, ge=0.0)
    """The loss proxy's task weight: NLL_alignment + alpha × NLL_task."""
    refusal_detector: str = "refusal"
    """What reads a reply to a benign request as a refusal, for `over_refusal`: `refusal` (the refusal
    patterns) or a plug-in's detector (a registry)."""

    _known_detector = field_validator("refusal_detector")(
        lambda cls, name: registered(REFUSAL_DETECTORS, name)
    )

    @field_validator("weights")
    @classmethod
    def _known_objectives(cls, weights: dict[str, float]) -> dict[str, float]:
        for name in weights:
            registered(OBJECTIVES, name)
        if not any(weights.values()):
            raise ValueError("at least one objective needs a positive weight")
        return weights


class MultiFidelityConfig(Frozen):
    """A trial scores its genome on the search split cut into ``rounds`` shards; asynchronous successive
    halving (Tune's ASHA) stops a trial whose running fitness is outside the top 1/``reduction_factor``
    of the trials that reached the same decision point: after ``grace_rounds`` rounds, then after
    ``reduction_factor`` times as many, and so on. A trial scores the rounds between two decision points
    in one call and reports its running fitness there (``decision_points``): a call pays per decoding
    batch, so nine rounds scored one by one cost about twice the whole split scored at once. The
    searcher is told a stopped trial's running fitness moved onto the whole split's scale by the gap
    full trials showed at the same point (``search/imputation.py``). ``rounds: 1``: every trial runs
    in full."""

    rounds: int = Field(default=1, ge=1)
    """Disjoint shards of the search split a trial is scored on; 1: every trial in full."""
    reduction_factor: float = Field(default=3.0, gt=1)
    """ASHA keeps the top 1/`reduction_factor` of the trials at each decision point."""
    grace_rounds: int = Field(default=1, ge=1)
    """Rounds every trial scores before its first decision point."""

    def decision_points(self) -> list[int]:
        """The rounds scored by the time of each report: ASHA's milestones (``grace_rounds`` times a
        power of ``reduction_factor``, rounded up to a whole round) below ``rounds``, then ``rounds``."""
        points, milestone = [], float(self.grace_rounds)
        while milestone < self.rounds:
            points.append(math.ceil(milestone))
            milestone *= self.reduction_factor
        return sorted({point for point in points if point < self.rounds}) + [self.rounds]

    @model_validator(mode="after")
    def _grace_within_rounds(self) -> MultiFidelityConfig:
        if self.rounds > 1 and self.grace_rounds >= self.rounds:
            raise ValueError(f"grace_rounds ({self.grace_rounds}) must be below rounds ({self.rounds})")
        return self


class SearcherConfig(Frozen):
    name: str = "cma"
    """The searcher (a registry: `cma`, `ngopt`, `de`, `pso`, `optuna_cmaes`, `tpe`, `nsga2`, `random`,
    `grid`, `select_cma`)."""
    num_trials: int = Field(default=40, ge=1)
    """The budget: genomes scored."""
    time_budget_s: float | None = Field(default=None, gt=0)
    """Stop proposing after this many seconds; unset: no limit."""
    seed: int = 0
    """The searcher's seed: the same seed proposes the same genomes."""
    warm_starts: list[Literal["uniform", "experts"]] = ["uniform"]
    """First proposals: `uniform` (equal weights) and `experts` (each expert alone)."""
    queued_per_evaluator: int = Field(default=1, ge=0)
    """Proposals waiting at the router per evaluator, so that it never idles while the searcher turns around;
    0: a proposal is made only when an evaluator is free, so each sees every earlier result."""
    multi_fidelity: MultiFidelityConfig = Field(default_factory=MultiFidelityConfig)
    """Multi-fidelity rounds with asynchronous successive halving (ASHA)."""
    objectives: list[str] = ["safety", "task_accuracy"]
    """What a multi-objective searcher (`nsga2`) trades off, and promotion's Pareto front over them: two or
    more objectives (`safety`, `over_refusal`, `task_accuracy`, `short_answer`, `choice_accuracy`,
    `loss_proxy`); each is maximised, or minimised where lower is better (`over_refusal`). Other searchers
    maximise the fitness."""

    _known_name = field_validator("name")(lambda cls, name: registered(SEARCHERS, name))

    @field_validator("objectives")
    @classmethod
    def _two_known_objectives(cls, objectives: list[str]) -> list[str]:
        known = [registered(OBJECTIVES, name) for name in objectives]
        if len(set(known)) < 2 or len(set(known)) < len(known):
            raise ValueError("two or more different objectives, each named once")
        return known


class ResourcesConfig(Frozen):
    num_evaluators: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    """Evaluator actors, each holding the pool and a live model; `auto`: as many as the Ray cluster holds
    at once beside the judge (at most `search.num_trials`), settled when the search sees the cluster (the
    run dir records the number)."""
    cpus_per_evaluator: float = Field(default=1.0, gt=0)
    """CPU cores Ray gives each evaluator."""
    gpus_per_evaluator: Unit = 0.0
    """GPU share of each evaluator (0-1)."""
    gpus_per_judge: Unit = 0.0
    """GPU share of the judge actor (0-1)."""
    _evaluators = field_validator("num_evaluators", mode="before")(
        lambda cls, value: _count_or_auto(value, "an integer of at least 1, or `auto`")
    )
    placement_timeout_s: float = Field(default=300.0, ge=0)
    """On a joined cluster, how long a search whose actors the cluster cannot hold waits for an autoscaler
    to add nodes before it fails (0: fails at once). A local Ray has all its nodes: it fails at once."""


class PromotionConfig(Frozen):
    """The best candidates get a full evaluation: lm-eval tasks and the held-out safety evaluation."""

    top_k: int = Field(default=3, ge=0)
    """How many of the best trials are promoted (the Pareto front for `nsga2`)."""
    validate_top: int = Field(default=0, ge=0)
    """Score this many (at least `top_k`) of the best trials by fitness (of the Pareto front for `nsga2`)
    again on the whole search split (the rows past `data.max_*_prompts` too, never the held-out split), and
    take the `top_k` promoted from them by that score: a fitness read on a few questions per skill favours
    the trial luckiest on them. 0: promote by search fitness."""
    tasks: list[str] = []
    """lm-eval task names (`mmlu_*`, `arc_challenge`, ...) run on each promoted model; the held-out split's
    questions always run."""
    batch_size: int = Field(default=16, ge=1)
    """lm-eval's batch size."""
    backend: str = "hf"
    """What runs lm-eval on the promoted models: `hf` or `vllm`."""

    _known_backend = field_validator("backend")(lambda cls, kind: registered(BACKENDS, kind))
    cpus: float = Field(default=1.0, gt=0)
    """CPU cores per promotion worker."""
    gpus: Unit = 0.0
    """GPU share per promotion worker (0-1)."""


class SearchConfig(Frozen):
    """A whole search: which models, what to vary, how to score, how to search, on what resources."""

    name: Name
    """The run's name: its run dir is `runs/<name>`."""
    plugins: list[str] = []
    """Modules imported first, which register merge methods, searchers, judges... (installed or on
    `PYTHONPATH` on every node)."""
    models: ModelsConfig
    """The base and the experts."""
    merge: MergeSpaceConfig = Field(default_factory=MergeSpaceConfig)
    """What the searcher varies."""
    data: DataConfig = Field(default_factory=DataConfig)
    """What merges are scored on."""
    backend: BackendConfig = Field(default_factory=BackendConfig)
    """What runs each candidate merge."""
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    """Who decides whether an answer to a harmful prompt is safe."""
    early_exit: EarlyExitConfig = Field(default_factory=EarlyExitConfig)
    """Answers in the search stop once their verdict is settled."""
    fitness: FitnessConfig = Field(default_factory=FitnessConfig)
    """How the objectives combine into one fitness."""
    search: SearcherConfig = Field(default_factory=SearcherConfig)
    """The searcher and its budget."""
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    """Actors and their CPU and GPU shares."""
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    """The full evaluation of the best candidates."""

    @model_validator(mode="before")
    @classmethod
    def _import_plugins(cls, data: Any) -> Any:
        """Plug-ins register their names before any field is checked against a registry."""
        if isinstance(data, dict) and isinstance(data.get("plugins"), list):
            try:
                load_plugins([str(m) for m in data["plugins"]])
            except UserError as err:
                raise ValueError(str(err)) from None
        return data

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        return migrate_judge_keys(data)

    @model_validator(mode="before")
    @classmethod
    def _engines_default_to_pool_dtype(cls, data: Any) -> Any:
        """``models.dtype: auto`` resolved (``_gpu_evaluators``), and an engine whose ``dtype`` is unset
        runs in the pool's."""
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            return data
        dtype = data["models"].get("dtype", ModelsConfig.model_fields["dtype"].default)
        if dtype == "auto":
            dtype = "bfloat16" if _gpu_evaluators(data) else "float32"
        data = {**data, "models": {**data["models"], "dtype": dtype}}
        for part in ("backend", "judge"):
            section = data.get(part, {})
            if isinstance(section, dict) and section.get("dtype") is None:
                data[part] = {**section, "dtype": dtype}
        return data

    @model_validator(mode="after")
    def _gpu_engines_get_gpus(self) -> SearchConfig:
        """An engine told to use CUDA runs in a Ray actor or task, which sees a GPU only if given a share:
        one without would start, find no GPU and fail (or take one the scheduler never counted)."""
        if self.backend.device == "cuda" and not self.resources.gpus_per_evaluator:
            raise ValueError("backend.device: cuda needs resources.gpus_per_evaluator above 0")
        if self.backend.device == "cuda" and self.promotion.top_k and not self.promotion.gpus:
            raise ValueError("backend.device: cuda needs promotion.gpus above 0 (promotion runs its engine)")
        for part in ("backend", "judge"):
            if getattr(self, part).tensor_parallel_size > 1:
                raise ValueError(
                    f"{part}.tensor_parallel_size: an engine holds at most one GPU here (GPU shares are "
                    "0-1), so tensor parallelism is not supported yet: use 1"
                )
        return self

    @model_validator(mode="after")
    def _judge_declares_early_exit(self) -> SearchConfig:
        if self.early_exit.enabled and self.judge.kind not in SETTLE_RULES:
            raise ValueError(f"early_exit: the {self.judge.kind} judge declares no early-exit rule")
        return self

    @model_validator(mode="after")
    def _searcher_fits_space(self) -> SearchConfig:
        gates = self.merge.gates.kind if self.merge.gates else None
        SEARCHERS.get(self.search.name).check(self.merge.granularity, gates, len(self.merge.methods) > 1)
        return self


def _count_or_auto(value: Any, expected: str) -> Any:
    """``auto``, or a whole number (as YAML or a string gives it); else one message, not one per
    alternative of the union."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    if isinstance(value, str) and value.isdigit() and int(value) >= 1:
        return int(value)
    raise ValueError(f"{expected} (got {value!r})")


def _gpu_evaluators(data: dict[str, Any]) -> bool:
    """Whether a raw config's evaluators run on a GPU: a GPU share, or a backend told to use CUDA (refused
    without a share, in one line, once validated)."""
    resources, backend = data.get("resources") or {}, data.get("backend") or {}
    try:
        share = float(resources.get("gpus_per_evaluator", 0) or 0) if isinstance(resources, dict) else 0.0
    except (TypeError, ValueError):  # named by the field's own validation
        share = 0.0
    return share > 0 or (isinstance(backend, dict) and backend.get("device") == "cuda")


ModelT = TypeVar("ModelT", bound=BaseModel)


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys allowed at ``loc`` inside ``model`` (for "did you mean" hints); [] if not a model."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        inner = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        models = [a for a in inner if issubclass(a, BaseModel)]
        if not models:
            return []
        model = models[0]
    return list(model.model_fields)


def describe_validation_error(err: ValidationError, model: type[BaseModel] | None = None) -> str:
    """The first problem of a pydantic error as ``field.path: message (got value)``, on one line."""
    first = err.errors()[0]
    loc = ".".join(str(part) for part in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
        allowed = _fields_at(model, first["loc"][:-1]) if model else []
        close = difflib.get_close_matches(str(first["loc"][-1]), allowed, n=1)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        elif allowed:
            msg += f" (allowed: {', '.join(allowed)})"
    elif first["type"] == "missing":
        msg = "required key is missing"
    got = first.get("input")
    shown = (
        "" if first["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
    )
    more = len(err.errors()) - 1
    tail = f" [+{more} more problem{'s' if more > 1 else ''}]" if more else ""
    return f"{loc + ': ' if loc else ''}{msg}{shown}{tail}".replace("\n", " ")


def validate_mapping(model: type[ModelT], data: Any, source: str) -> ModelT:
    """Validate ``data`` into ``model``; any problem becomes one ConfigError line naming ``source``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {describe_validation_error(err, model)}") from None


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None


def load_config(path: str | Path, model: type[ModelT] = SearchConfig) -> ModelT:  # type: ignore[assignment]
    """Load and validate a YAML config file (a ``SearchConfig`` unless told otherwise)."""
    return validate_mapping(model, read_yaml(path), str(path))
