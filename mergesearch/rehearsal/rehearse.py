"""A rehearsal: the user's job checked against their real model folders and cluster, then run on stand-ins.

Before any weights are downloaded or loaded, ``mergesearch rehearse CONFIG`` reads each model folder's
config.json and tokenizer files and says, one line each, what the real run would hit: a folder that is
not a model, a tokenizer that does not load, experts that do not share the base's architecture, a merged
model without a chat template, an lm-eval dataset not in the cache, an actor the memory plan (computed
from the config.json files alone) cannot place on the cluster. Then it writes stand-ins of every folder
(``standins``) and the same job over them: the same actor layout and Ray resource requests, a tiny budget
(``Budget``), and the transformers backend in vLLM's place where this machine has no CUDA (said in the
log). No check is loosened for the stand-ins: they pass the job's checks because they say refusals,
verdicts and JSON, not because a rehearsal mode skips anything. What the rehearsal changes beyond the
budget is listed in ``rehearsal.json`` (``changes``) beside the stand-in config.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mergesearch.config import SearchConfig, load_config
from mergesearch.datagen.spec import DataSpec
from mergesearch.errors import UserError
from mergesearch.model_files import model_config
from mergesearch.rehearsal.scripts import Role
from mergesearch.rehearsal.standin_cache import cached_standins
from mergesearch.rehearsal.standins import StandIn
from mergesearch.search.run_dir import RunDir

Log = Callable[[str], None]


@dataclass(frozen=True)
class Budget:
    """How small the rehearsal's job is: enough to run every step once over the real layout."""

    trials: int = 4
    prompts: int = 8  # harmful and task prompts per evaluation
    # Enough rows that both splits hold every objective's after the answers' selection drops some
    # (an expert stand-in refuses about half of all prompts, benign and task ones too).
    per_category: int = 1  # generated harmful requests per harm category
    benign: int = 12
    task_questions: int = 12  # per task domain: the held-out split needs some for its task accuracy
    new_tokens: int = 16  # answers; the generator writes up to GENERATOR_TOKENS
    top_k: int = 2


GENERATOR_TOKENS = 128
# The first expert stands for the aligned one (the shipped configs name the instruct model first); a
# domain expert refuses less, and answers its own domain's questions for the data to keep.
FIRST_EXPERT_REFUSES, OTHER_EXPERTS_REFUSE = 0.5, 0.2


@dataclass
class Findings:
    """What the real run would hit (``lines``), and what keeps this rehearsal from running its stand-in
    job though the real run might not mind (``limits``: a stand-in it cannot build), one line each."""

    lines: list[str] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)

    def check(self, what: str, action: Callable[[], Any]) -> Any:
        """``action``'s result, or None with its one-line error recorded under ``what``."""
        try:
            return action()
        except UserError as err:
            self.lines.append(f"{what}: {err}")
            return None


# ------------------------------------------------------------------------------------ the real folders
def _folder(path: str) -> Path:
    return Path(path).expanduser().resolve()


def _has_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    try:
        return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))
    except (UnicodeDecodeError, ValueError, AttributeError):
        raise UserError(f"{config}: not a JSON object") from None


def check_search(config: SearchConfig, config_path: Path, cluster: Path | None, findings: Findings) -> None:
    """The search config's folders, tokenizer, datasets and memory plan, from config.json and tokenizer
    files alone."""
    from mergesearch.merge.resident import check_compatible
    from mergesearch.merge.tokenizer import TokenizerChoice
    from mergesearch.objectives.lm_eval_tasks import check_task_datasets, check_tasks
    from mergesearch.plan import cluster_nodes, place, plan_actors, this_machine, together_shortfall
    from mergesearch.setup import SearchSetup, genome_space

    models = config.models
    base, experts = _folder(models.base), {e.name: _folder(e.path) for e in models.experts}
    folders = {"models.base": base, **{f"models.experts.{n}": f for n, f in experts.items()}}
    if config.judge.model:
        folders["judge.model"] = _folder(config.judge.model)
    tasks = config.promotion.tasks
    findings.check("promotion.tasks", lambda: check_tasks(tasks, f"{config_path}: promotion.tasks"))
    findings.check("promotion.tasks", lambda: check_task_datasets(tasks, f"{config_path}: promotion.tasks"))
    readable = {
        w: f for w, f in folders.items() if findings.check(w, lambda f=f: model_config(f)) is not None
    }
    if len(readable) < len(folders):
        return  # the checks below read every folder
    findings.check("models", lambda: check_compatible(base, experts))
    choice = findings.check(
        "models", lambda: TokenizerChoice.of(models.tokenizer_source, models.chat_template, base, experts)
    )
    if (
        choice is not None
        and choice.template is None
        and findings.check("models", lambda: not _has_template(choice.source))
    ):
        findings.lines.append(
            f"models: the merged model takes {choice.source}'s tokenizer, which has no chat template: set "
            "models.tokenizer_source to an expert with one (or models.chat_template)"
        )
    resolved = config.model_copy(
        update={
            "models": models.model_copy(
                update={
                    "base": str(base),
                    "experts": [e.model_copy(update={"path": str(experts[e.name])}) for e in models.experts],
                }
            )
        }
    )
    layers = model_config(base).get("num_hidden_layers")
    if not isinstance(layers, int):
        findings.lines.append(f"models.base: {base}/config.json has no num_hidden_layers")
        return
    setup = findings.check("merge", lambda: SearchSetup(resolved, genome_space(resolved, layers)))
    actors = setup and findings.check("plan", lambda: plan_actors(setup, from_config=True))
    if actors is None:
        return
    if cluster is not None:
        nodes, source = cluster_nodes(cluster), str(cluster)
    elif os.environ.get("RAY_ADDRESS"):
        from mergesearch.runtime import ray_session
        from mergesearch.search.placement import SOURCE, live_nodes

        ray_session()  # joins the cluster at RAY_ADDRESS
        nodes, source = live_nodes(), SOURCE
    else:
        nodes, source = [this_machine()], "this machine"
    waits = source == "the Ray cluster" and config.resources.placement_timeout_s > 0
    autoscaler = (
        f" (on the nodes up now; the search waits up to {config.resources.placement_timeout_s:g} s for an "
        "autoscaler to add one)"
        if waits
        else ""
    )
    for placement in place(actors, nodes):
        if placement.node is None:
            findings.lines.append(
                f"plan ({source}): {placement.actor.role}: {placement.shortfall}{autoscaler}"
            )
    together = together_shortfall(actors, nodes) if cluster is None else ""
    if together:
        findings.lines.append(f"plan ({source}): {together}")


def check_spec(spec: DataSpec, findings: Findings) -> None:
    """The data spec's folders: each a model whose tokenizer renders chats (the backends require one)."""
    chats = {"generator.model": spec.generator.model} if spec.generator.model else {}
    if spec.answer is not None:
        chats |= {f"answer.experts.{e.name}": e.path for e in spec.answer.experts}
    for what, path in chats.items():
        folder = _folder(path)
        if findings.check(what, lambda f=folder: model_config(f)) is None:
            continue
        if findings.check(what, lambda f=folder: not _has_template(f)):
            findings.lines.append(f"{what}: {folder} has no chat template, which the backends require")
    if spec.answer is None:
        return
    if spec.answer.judge.model:
        findings.check("answer.judge.model", lambda: model_config(_folder(spec.answer.judge.model)))


# ------------------------------------------------------------------------------------ the stand-ins
class StandIns:
    """One stand-in per (folder, role), named after the folder (and the role where it is not the
    folder's first); each folder's path maps to the stand-in playing each role."""

    def __init__(self) -> None:
        self.wanted: dict[tuple[Path, Role], StandIn] = {}

    def of(self, path: str, role: Role) -> str:
        folder = _folder(path)
        key = (folder, role)
        if key not in self.wanted:
            taken = {s.name for s in self.wanted.values()}
            name = next(
                n
                for n in (
                    folder.name,
                    f"{folder.name}.{role}",
                    *(f"{folder.name}.{role}{i}" for i in range(2, 999)),
                )
                if n not in taken
            )
            experts = sum(s.role == "expert" for s in self.wanted.values())
            share = FIRST_EXPERT_REFUSES if experts == 0 else OTHER_EXPERTS_REFUSE
            self.wanted[key] = StandIn(folder, role, name, share)
        return self.wanted[key].name


@dataclass(frozen=True)
class Engines:
    """Whether the stand-in job keeps the config's engines: by default vLLM (and any CUDA device) gives way
    to the transformers backend on the CPU where the machine running ``rehearse`` has no CUDA; ``keep``:
    as configured (a job submitted from a CPU head to GPU workers)."""

    keep: bool = False

    @property
    def swap(self) -> bool:
        import torch

        return not self.keep and not torch.cuda.is_available()


def _runner(section: dict, log: Log, what: str, engines: Engines) -> dict:
    """A runner section for the stand-in job (``Engines``)."""
    backend = dict(section.get("backend") or {})
    if engines.swap and (backend.get("kind") == "vllm" or backend.get("device") == "cuda"):
        log(
            f"rehearsal: {what}: no CUDA on this machine, the transformers backend on the CPU in vLLM's place"
        )
        backend.update(kind="hf", device="cpu")
        backend.pop("sleep_mode", None)
    return backend


def standin_config(
    config: SearchConfig,
    names: StandIns,
    models_dir: Path,
    budget: Budget,
    data: dict,
    log: Log,
    engines: Engines,
) -> dict:
    """The search config over the stand-ins: the same layout and resource requests, a tiny budget."""
    raw = config.model_dump(mode="json", exclude_unset=True)
    models = raw["models"]
    models["base"] = str(models_dir / names.of(config.models.base, "base"))
    for expert in models.get("experts", []):
        expert["path"] = str(models_dir / names.of(expert["path"], "expert"))
    # a tokenizer_source folder that is a model gets a stand-in; one with tokenizer files only is kept
    source = config.models.tokenizer_source
    named = ("base", *(e.name for e in config.models.experts))
    if source not in named and (_folder(source) / "config.json").is_file():
        models["tokenizer_source"] = str(models_dir / names.of(source, "base"))
    raw["name"] = f"{config.name}_rehearsal"
    raw["data"] = {**raw.get("data", {}), **data}
    raw["data"]["max_alignment_prompts"] = raw["data"]["max_task_prompts"] = budget.prompts
    backend = _runner({"backend": raw.get("backend")}, log, "backend", engines)
    backend["max_new_tokens"] = budget.new_tokens
    raw["backend"] = backend
    judge = dict(raw.get("judge") or {})
    if config.judge.model:
        judge["model"] = str(models_dir / names.of(config.judge.model, "guard"))
    if engines.swap and judge.get("backend") == "vllm":
        log("rehearsal: judge: no CUDA on this machine, the transformers backend on the CPU in vLLM's place")
        judge["backend"] = "hf"
    raw["judge"] = judge
    search = dict(raw.get("search") or {})
    search["num_trials"] = budget.trials
    raw["search"] = search
    promotion = dict(raw.get("promotion") or {})
    if promotion.get("tasks"):
        log("rehearsal: promotion: lm-eval tasks checked against the cache above, not run on stand-ins")
    promotion.update(tasks=[], top_k=min(config.promotion.top_k, budget.top_k), backend="hf")
    raw["promotion"] = promotion
    return raw


def standin_spec(
    spec: DataSpec, names: StandIns, models_dir: Path, budget: Budget, log: Log, engines: Engines
) -> dict:
    """The data spec over the stand-ins: every step of it, a few prompts each."""
    raw = spec.model_dump(mode="json", exclude_unset=True)
    generator = dict(raw.get("generator") or {})
    if spec.generator.model:
        generator["model"] = str(models_dir / names.of(spec.generator.model, "generator"))
        generator["backend"] = _runner(generator, log, "generator", engines)
        generator.update(max_new_tokens=GENERATOR_TOKENS, requests_per_attempt=4)  # one question each
    raw["generator"] = generator
    if spec.alignment is not None:
        raw["alignment"] = {**raw.get("alignment", {}), "per_category": budget.per_category}
    raw["benign"] = min(spec.benign, budget.benign)
    for task in raw.get("tasks", []):
        task["count"] = min(task.get("count", 20), budget.task_questions)
    if spec.answer is not None:
        answer = raw["answer"]
        for expert in answer["experts"]:
            expert["path"] = str(models_dir / names.of(expert["path"], "expert"))
        if spec.answer.judge.model:
            answer["judge"]["model"] = str(models_dir / names.of(spec.answer.judge.model, "guard"))
            if engines.swap and answer["judge"].get("backend") == "vllm":
                answer["judge"]["backend"] = "hf"
        answer["backend"] = _runner(answer, log, "answer", engines)
        answer["max_new_tokens"] = budget.new_tokens
    return raw


# ------------------------------------------------------------------------------------ the rehearsal
@dataclass(frozen=True)
class Prepared:
    """What a rehearsal wrote: the stand-in config (and data spec), and what the real run would hit."""

    config: Path
    spec: Path | None
    findings: tuple[str, ...]
    limits: tuple[str, ...]  # why the stand-in job cannot run (it is not run then)


def prepare(
    config_path: Path,
    out: Path,
    spec_path: Path | None = None,
    cluster: Path | None = None,
    budget: Budget = Budget(),
    log: Log = print,
    engines: Engines = Engines(),
) -> Prepared:
    """Check the real job and write its stand-in version under ``out`` (``models/``, ``config.yaml``,
    ``data_spec.yaml``, ``rehearsal.json``)."""
    config = load_config(config_path)
    spec = load_config(spec_path, DataSpec) if spec_path else None
    findings = Findings()
    check_search(config, config_path, cluster, findings)
    if spec is not None:
        check_spec(spec, findings)
    names = StandIns()
    models_dir = (out / "models").resolve()
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(models_dir, ignore_errors=True)  # a rehearsal's own: none left from an earlier one
    changes: list[str] = []

    def said(line: str) -> None:
        changes.append(line)
        log(line)

    data: dict[str, Any] = {}
    if spec is not None:
        data = {"path": str((out / "data").resolve()), "spec": None}
    elif config.data.spec:
        findings.limits.append("data.spec: pass it with --data-spec, so that its models get stand-ins too")
    raw = standin_config(
        config, names, models_dir, budget, data, said, engines
    )  # first: experts keep their names
    config_out = out / "config.yaml"
    config_out.write_text(yaml.safe_dump(raw, sort_keys=False))
    spec_out = None
    if spec is not None:
        spec_out = out / "data_spec.yaml"
        spec_out.write_text(
            yaml.safe_dump(standin_spec(spec, names, models_dir, budget, said, engines), sort_keys=False)
        )
    wanted = list(names.wanted.values())
    readable = [s for s in wanted if (s.source / "config.json").is_file()]
    if len(readable) < len(wanted):
        findings.limits.append("stand-ins: not every model folder could be read (above)")
    written = None
    try:
        written = cached_standins(readable, models_dir, log)
    except Exception as err:  # a stand-in this rehearsal cannot build: one line, not a traceback
        findings.limits.append(f"stand-ins: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    record = {"config": str(config_path), "data_spec": str(spec_path) if spec_path else None}
    record |= {"budget": budget.__dict__, "changes": changes, "stand_ins": written}
    record |= {"findings": findings.lines, "limits": findings.limits}
    (out / "rehearsal.json").write_text(json.dumps(record, indent=1))
    return Prepared(config_out, spec_out, tuple(findings.lines), tuple(findings.limits))


def run(prepared: Prepared, out: Path, use_ray: bool, log: Log = print, actors: int = 2) -> RunDir:
    """The job on the stand-ins: data generation (Ray Data pools with ``use_ray``), then search,
    promotion and report in ``out/run``. Without ``RAY_ADDRESS`` a local Ray is started with the CPUs and
    GPUs the job asks for, as logical resources, so every actor's request is placed as on the cluster."""
    from mergesearch.model_refs import resolve_model
    from mergesearch.runtime import ray_session
    from mergesearch.workflow import Steps, search_to_report
    from mergesearch.workflow import prepare as prepare_search

    config = load_config(prepared.config)
    spec = load_config(prepared.spec, DataSpec) if prepared.spec else None
    for made in (out / "data", out / "run"):  # a rehearsal starts afresh, never resumes the last one
        shutil.rmtree(made, ignore_errors=True)
    if not os.environ.get("RAY_ADDRESS"):
        cpus, gpus = _asks(config, spec, actors)
        log(f"rehearsal: a local Ray with the {cpus} CPUs and {gpus} GPUs the job asks for (logical ones)")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None and gpus > len([d for d in visible.split(",") if d.strip()]):
            # Ray refuses more GPUs than CUDA_VISIBLE_DEVICES lists; these are logical, the engines chosen
            # when the stand-in job was written (Engines) decide where the stand-ins compute.
            log(f"rehearsal: CUDA_VISIBLE_DEVICES={visible!r} lists fewer: unset for the local Ray")
            del os.environ["CUDA_VISIBLE_DEVICES"]
        ray_session(num_cpus=cpus, num_gpus=gpus)
    if spec is not None:
        from mergesearch.datagen.pipeline import build_dataset

        spec = spec.with_models(lambda ref, at: resolve_model(ref, at, log))
        card = build_dataset(spec, out / "data", use_ray, actors, log=log)
        log(f"rehearsal: data: {card['rows']} rows, dropped {card.get('dropped', {})}")
    run_dir = RunDir(out / "run")
    setup = prepare_search(config, prepared.config, run_dir, log, check_promotion=True)
    search_to_report(setup, run_dir, log, Steps())
    return run_dir


def _asks(config: SearchConfig, spec: DataSpec | None, actors: int) -> tuple[int, int]:
    """The CPUs and GPUs the job's actors ask for together (the search's evaluators and judge at once;
    promotion, and data generation's pools of ``actors``, after them)."""
    res = config.resources
    evaluators = 1 if res.num_evaluators == "auto" else res.num_evaluators
    cpus = evaluators * res.cpus_per_evaluator + 1
    gpus = evaluators * res.gpus_per_evaluator + res.gpus_per_judge
    gpus = max(
        gpus,
        config.promotion.gpus,
        *(actors * m.gpus for m in (spec.generator, spec.answer) if m) if spec else (0,),
    )
    return max(math.ceil(cpus), math.ceil(config.promotion.cpus), 2), math.ceil(gpus)
