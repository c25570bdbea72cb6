"""The data pipeline: generate prompts per quota, answer them, select, split, write.

Generation, answering and judging run in *workers* that load their model once (``GenerateWorker``;
``ReplyWorker``, one per expert, the experts one after another; ``VerdictWorker``, the judge), so no
process holds more than one model. Locally they are called in-process batch by batch; on a cluster the
very same classes run as Ray Data ``map_batches`` actor pools (with ``answer.gpus`` of a GPU each), fed
the same batches, so both paths give the same rows. Selecting what to keep needs no model (``select``).
A worker is closed when its batches are done: in-process by ``_run``, in a pool through ``__del__``,
which Ray Data calls as it shuts each actor down.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from mergesearch.data.dataset import assign_splits, drop_duplicates, read_card, write_rows
from mergesearch.data.schema import Row, from_table, read_rows, to_table
from mergesearch.datagen.generators import Quota, make_generator, plan_quotas
from mergesearch.datagen.spec import DataSpec
from mergesearch.errors import UserError
from mergesearch.runtime import ray_session

Log = Callable[[str], None]


class Worker(Protocol):
    def __call__(self, batch: pa.Table) -> pa.Table: ...

    def close(self) -> None: ...


class GenerateWorker:
    """Holds a generator (and its model); turns a batch of quotas into rows and reports."""

    def __init__(self, spec_json: str) -> None:
        self.spec = DataSpec.model_validate_json(spec_json)
        self.generator = make_generator(self.spec, log=lambda m: print(m, flush=True))

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: dict[str, list[str]] = {"quota": [], "rows": [], "report": []}
        for text in batch.column("quota").to_pylist():
            quota = Quota.from_json(text)
            rows, report = self.generator.generate(quota, quota.seed(self.spec.seed))
            out["quota"].append(text)
            out["rows"].append(json.dumps(to_table(rows).to_pylist()))
            out["report"].append(json.dumps(report.to_dict()))
        return pa.table(out)

    def close(self) -> None:
        self.generator.close()

    def __del__(self) -> None:  # Ray Data's pool: its graceful actor shutdown calls this
        if "generator" in vars(self):  # not when __init__ raised
            self.close()


class ReplyWorker:
    """Holds one expert; a batch of prompt rows in, the expert's replies out (id, response; null for a
    row it does not answer)."""

    def __init__(self, spec_json: str, expert: str) -> None:
        from mergesearch.datagen.answer import ExpertReplies

        spec = answering_spec(spec_json)
        self.expert = ExpertReplies(spec.answer, expert, spec.tasks)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = from_table(batch)
        return pa.table({"id": [r.id for r in rows], "response": self.expert.replies(rows)})

    def close(self) -> None:
        self.expert.close()

    def __del__(self) -> None:  # Ray Data's pool: its graceful actor shutdown calls this
        if "expert" in vars(self):  # not when __init__ raised
            self.close()


class VerdictWorker:
    """Holds the judge (and the refusal detector); a batch of one expert's replies in (the rows, with the
    reply as response), whether each counts out (id, accepted)."""

    def __init__(self, spec_json: str) -> None:
        from mergesearch.datagen.answer import Verdicts

        self.verdicts = Verdicts(answering_spec(spec_json).answer, log=lambda m: print(m, flush=True))

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = from_table(batch.drop_columns(["expert"]))
        accepted = self.verdicts.accepted(rows, [r.response or "" for r in rows])
        return pa.table({"expert": batch.column("expert"), "id": [r.id for r in rows], "accepted": accepted})

    def close(self) -> None:
        self.verdicts.close()

    def __del__(self) -> None:
        if "verdicts" in vars(self):
            self.close()


def answering_spec(spec_json: str) -> DataSpec:
    spec = DataSpec.model_validate_json(spec_json)
    if spec.answer is None:
        raise UserError(f"{spec.name}: the spec has no `answer` section (which experts answer, which judge)")
    return spec


def _chunks(table: pa.Table, size: int) -> list[pa.Table]:
    return [table.slice(start, size) for start in range(0, table.num_rows, size)] or [table]


def _run(
    worker: Callable[..., Worker],
    args: dict[str, Any],
    tables: list[pa.Table],
    use_ray: bool,
    actors: int,
    log: Log,
    what: str,
    gpus: float = 0.0,
) -> pa.Table:
    """Apply ``worker`` to each table: in-process, or as a Ray Data actor pool with one table per batch
    (each actor with ``gpus`` of a GPU)."""
    if not use_ray:
        done = []
        with contextlib.closing(worker(**args)) as instance:
            for i, table in enumerate(tables, 1):
                done.append(instance(table))
                if i == len(tables) or i % 10 == 0:
                    log(f"{what}: batch {i}/{len(tables)}")
        return pa.concat_tables(done)
    import ray

    ray_session()
    dataset = ray.data.from_arrow(tables)  # one block per table: batches line up with the local path's
    sizes = {t.num_rows for t in tables}
    mapped = dataset.map_batches(
        worker,
        fn_constructor_kwargs=args,
        batch_format="pyarrow",
        batch_size=max(sizes),
        concurrency=actors,
        num_cpus=1,
        num_gpus=gpus,
        zero_copy_batch=True,
    )
    shares = f", {gpus:g} GPU each" if gpus else ""
    log(f"{what}: {len(tables)} batches on a Ray Data pool of {actors} actors{shares}")
    parts = [ray.get(ref) for ref in mapped.to_arrow_refs()]
    return pa.concat_tables([p for p in parts if p.num_rows]) if parts else pa.table({})


def _asked(chunk: pa.Table, expert: str, by_domain: dict[str, str]) -> pa.Table:
    """The rows of ``chunk`` that ``expert`` answers."""
    from mergesearch.datagen.answer import answers

    return to_table([r for r in from_table(chunk) if answers(r, expert, by_domain)])


def _judged(chunk: pa.Table, expert: str, replies: dict[str, str]) -> pa.Table:
    """The alignment and benign rows of ``chunk`` with ``expert``'s replies as responses, and its name."""
    rows = [r.with_(response=replies[r.id]) for r in from_table(chunk) if r.type in ("alignment", "benign")]
    return to_table(rows).append_column("expert", pa.array([expert] * len(rows), pa.string()))


def generate_prompts(
    spec: DataSpec, use_ray: bool = False, actors: int = 2, log: Log = print
) -> tuple[list[Row], dict[str, Any]]:
    """Every quota's rows (exact duplicates across quotas removed) and the generation report."""
    quotas = plan_quotas(spec)
    if not quotas:
        raise UserError(
            f"{spec.name}: nothing to generate (no alignment categories, benign prompts or tasks)"
        )
    tables = [pa.table({"quota": [q.to_json()]}) for q in quotas]
    gpus = spec.generator.gpus if spec.generator.model else 0.0  # a template generator holds no model
    worker = {"spec_json": spec.model_dump_json()}
    done = _run(GenerateWorker, worker, tables, use_ray, actors, log, "generate", gpus)
    by_quota = {
        q: (json.loads(r), json.loads(rep))
        for q, r, rep in zip(
            done.column("quota").to_pylist(),
            done.column("rows").to_pylist(),
            done.column("report").to_pylist(),
        )
    }
    rows: list[Row] = []
    reports = {}
    for quota in quotas:  # plan order, whatever order the pool finished in
        records, report = by_quota[quota.to_json()]
        rows += from_table(pa.Table.from_pylist(records, schema=to_table([]).schema)) if records else []
        reports[quota.key] = report
    rows, duplicates = drop_duplicates(rows)
    return rows, {"quotas": reports, "duplicates_removed": duplicates}


def answer_rows(
    spec: DataSpec, rows: Sequence[Row], use_ray: bool = False, actors: int = 2, log: Log = print
) -> tuple[list[Row], dict[str, dict[str, int]]]:
    """Answered rows (dropped ones removed) and the drops: reason → type/category → count."""
    from mergesearch.datagen.answer import select, task_experts

    spec_json = spec.model_dump_json()
    answer = answering_spec(spec_json).answer  # the workers read the spec so: the same check here
    ordered = sorted(rows, key=lambda r: r.id)
    chunks = _chunks(to_table(ordered), answer.batch_size)
    by_domain = task_experts(answer, spec.tasks)
    replies: dict[str, dict[str, str]] = {}
    accepted: dict[str, dict[str, bool]] = {}
    for expert in (e.name for e in answer.experts):  # one model per actor: the experts one after another
        asked = [t for c in chunks if (t := _asked(c, expert, by_domain)).num_rows]
        if not asked:
            continue
        worker = {"spec_json": spec_json, "expert": expert}
        said = _run(ReplyWorker, worker, asked, use_ray, actors, log, f"answer: {expert}", answer.gpus)
        replies[expert] = dict(zip(said.column("id").to_pylist(), said.column("response").to_pylist()))
    # The judge last, batch by batch on each expert's replies to the prompts whose replies it judges (the
    # calls an answering of every expert at once made).
    judged = [t for chunk in chunks for e in replies if (t := _judged(chunk, e, replies[e])).num_rows]
    if judged:
        gpus = answer.gpus if answer.judge.model else 0.0  # refusal patterns hold no model
        verdicts = _run(VerdictWorker, {"spec_json": spec_json}, judged, use_ray, actors, log, "judge", gpus)
        for expert, row_id, ok in zip(
            *(verdicts.column(c).to_pylist() for c in ("expert", "id", "accepted"))
        ):
            accepted.setdefault(expert, {})[row_id] = ok
    answered = select(answer, spec.tasks, ordered, replies, accepted)
    kept, drops = [], Counter()
    for row in answered:
        reason = json.loads(row.provenance).get("dropped")
        if reason:
            drops[(reason, f"{row.type}/{row.category}")] += 1
        else:
            kept.append(row)
    dropped: dict[str, dict[str, int]] = {}
    for (reason, key), n in sorted(drops.items()):
        dropped.setdefault(reason, {})[key] = n
    return kept, dropped


def finish_dataset(spec: DataSpec, rows: Sequence[Row], out: Path, card: dict[str, Any]) -> dict[str, Any]:
    rows, groups = assign_splits(
        rows, spec.split.heldout_share, spec.split.near_duplicate_threshold, spec.seed
    )
    return write_rows(
        out, rows, {**card, "near_duplicate_groups": groups, "heldout_share": spec.split.heldout_share}
    )


def build_dataset(
    spec: DataSpec,
    out: Path,
    use_ray: bool = False,
    actors: int = 2,
    prompts_only: bool = False,
    log: Log = print,
) -> dict[str, Any]:
    """generate → (answer → select → split) → ``out``; returns the card."""
    rows, generation = generate_prompts(spec, use_ray, actors, log)
    log(f"generate: {len(rows)} prompts ({generation['duplicates_removed']} duplicates removed)")
    card: dict[str, Any] = {
        "kind": "prompt_set" if prompts_only else "dataset",
        "name": spec.name,
        "config_hash": spec.digest(),
        "spec": spec.model_dump(mode="json"),
        "generation": generation,
    }
    if prompts_only:
        return write_rows(out, rows, card)
    kept, dropped = answer_rows(spec, rows, use_ray, actors, log)
    log(f"answer: kept {len(kept)}, dropped {sum(n for d in dropped.values() for n in d.values())} {dropped}")
    return finish_dataset(spec, kept, out, {**card, "dropped": dropped})


def answer_prompt_set(
    spec: DataSpec, prompt_set: Path, out: Path, use_ray: bool = False, actors: int = 2, log: Log = print
) -> dict[str, Any]:
    """Answer an existing prompt set (generated or imported) with the spec's experts and judge."""
    source_card, rows = read_card(prompt_set), read_rows(prompt_set)
    kept, dropped = answer_rows(spec, rows, use_ray, actors, log)
    card = {
        "kind": "dataset",
        "name": spec.name,
        "config_hash": spec.digest(),
        "spec": spec.model_dump(mode="json"),
        "prompt_set": {
            "path": str(prompt_set),
            "config_hash": source_card.get("config_hash"),
            "rows_sha256": source_card.get("rows_sha256"),
            "generation": source_card.get("generation"),
            "import": source_card.get("import"),
        },
        "dropped": dropped,
    }
    return finish_dataset(spec, kept, out, card)
