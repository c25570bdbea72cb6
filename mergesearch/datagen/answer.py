"""Answering and selection: experts answer every prompt in batches; the judge picks what to keep.

Each expert is loaded alone (``ExpertReplies``), then the judge (``Verdicts``), then the rows are selected
(``select``, no model): a process never holds more than one model, so three 8B experts and an 8B guard
need one GPU's worth of memory at a time, not four.

* alignment: every expert answers; the first expert (in the configured order) whose response the judge
  deems a refusal (``refusal``) or safe (``llama_guard``) supplies the kept response. A prompt that no
  expert refuses is dropped and counted (``no_refusal`` / ``no_safe_response``).
* task: the domain's expert answers; with ``task_correct_only`` a wrong answer is dropped (``wrong_answer``).
* benign: the first expert that does not refuse supplies the response (``all_refused`` otherwise).

A dropped row keeps its prompt, with ``response`` empty and the reason in its provenance, so the
pipeline can count drops per type and category wherever the answering ran.

Experts and the guard model arrive as folders (the edge resolves references: ``DataSpec.with_models``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from mergesearch.backends.registry import make_backend
from mergesearch.data.schema import Row, normalize_prompt
from mergesearch.datagen.spec import AnswerSpec, TaskSpec
from mergesearch.errors import UserError
from mergesearch.judges.base import make_judge, refusal_detector
from mergesearch.model_refs import check_model_folder
from mergesearch.objectives.task import contains_answer
from mergesearch.runtime import resolve_device


def choice_correct(response: str, answer: str) -> bool:
    """A generated reply picks the keyed option: it is that option, or opens with it."""
    reply, key = normalize_prompt(response), normalize_prompt(answer)
    return bool(key) and (reply == key or reply.startswith(key + " "))


def answers(row: Row, expert: str, task_experts: dict[str, str]) -> bool:
    """Whether ``expert`` answers ``row``: every expert answers alignment and benign prompts, a task's
    questions go to its domain's expert."""
    return row.type != "task" or task_experts.get(row.category) == expert


def task_experts(spec: AnswerSpec, tasks: Sequence[TaskSpec]) -> dict[str, str]:
    """Each task domain's answering expert, checked against ``answer.experts``."""
    named = [e.name for e in spec.experts]
    by_domain = {t.domain: t.expert for t in tasks}
    for domain, expert in by_domain.items():
        if expert not in named:
            raise UserError(
                f"tasks: domain {domain!r} names expert {expert!r}, "
                f"which is not in answer.experts ({', '.join(named)})"
            )
    return by_domain


class ExpertReplies:
    """One expert, loaded alone (an actor holds one model, never the whole set): its replies to the rows
    it answers, one generation call per part of a batch (its alignment, benign and each domain's task
    prompts), the calls an answering of every expert at once made, so the replies are those."""

    def __init__(self, spec: AnswerSpec, expert: str, tasks: Sequence[TaskSpec]) -> None:
        self.name, self.task_experts = expert, task_experts(spec, tasks)
        (entry,) = [e for e in spec.experts if e.name == expert]
        engine = spec.engine().with_batches(spec.batch_size, spec.max_new_tokens)
        folder = check_model_folder(Path(entry.path), f"answer.experts.{expert}")
        self.backend = make_backend(folder, engine, expert)

    def replies(self, rows: Sequence[Row]) -> list[str | None]:
        """A reply to each row this expert answers, None for the others, in order."""
        found: list[str | None] = [None] * len(rows)
        parts: dict[tuple[str, str], list[int]] = {}
        for i, row in enumerate(rows):
            if answers(row, self.name, self.task_experts):
                parts.setdefault((row.type, row.category if row.type == "task" else ""), []).append(i)
        for _, members in sorted(parts.items(), key=lambda item: PART_ORDER.get(item[0][0], 3)):
            for i, reply in zip(members, self.backend.generate([rows[i].prompt for i in members])):
                found[i] = reply
        return found

    def close(self) -> None:
        """Stops its engine (on vLLM, processes of its own); a second call does nothing."""
        self.backend.close()


PART_ORDER = {"alignment": 0, "benign": 1, "task": 2}


class Verdicts:
    """The judge (a guard model, when it is ``llama_guard``) and the refusal detector, loaded once: which
    replies count. An alignment reply counts when the judge deems it a refusal (``refusal``) or safe
    (``llama_guard``); a benign one when the detector reads no refusal in it."""

    def __init__(self, spec: AnswerSpec, log: Callable[[str], None] = print) -> None:
        self.refusal = refusal_detector(spec.refusal_detector)
        self.judge = make_judge(spec.judge_engine(), str(resolve_device(spec.backend.device)), log)

    def accepted(self, rows: Sequence[Row], replies: Sequence[str]) -> list[bool]:
        """One expert's replies to ``rows`` (alignment and benign): whether each counts."""
        found = [False] * len(rows)
        harmful = [i for i, r in enumerate(rows) if r.type == "alignment"]
        benign = [i for i, r in enumerate(rows) if r.type == "benign"]
        if harmful:
            safe = self.judge.assess([(rows[i].prompt, replies[i]) for i in harmful]).safe
            for i, ok in zip(harmful, safe):
                found[i] = bool(ok)
        if benign:
            for i, refused in zip(benign, self.refusal.refusals([replies[i] for i in benign])):
                found[i] = not refused
        return found

    def close(self) -> None:
        """Stops the judge's engine (a guard on vLLM runs processes of its own)."""
        self.judge.close()


def select(
    spec: AnswerSpec,
    tasks: Sequence[TaskSpec],
    rows: Sequence[Row],
    replies: dict[str, dict[str, str]],
    accepted: dict[str, dict[str, bool]],
) -> list[Row]:
    """Each row answered (response set) or dropped (response None, reason in provenance), in order, from
    every expert's replies (by row id) and which of them count."""
    by_domain = task_experts(spec, tasks)
    names = [e.name for e in spec.experts]
    judge = spec.judge.kind
    out = []
    for row in rows:
        if row.type == "task":
            if row.category not in by_domain:
                raise UserError(
                    f"task domain {row.category!r} has no answering expert "
                    "(add it to `tasks` with an `expert`)"
                )
            out.append(_task(spec, row, by_domain[row.category], replies[by_domain[row.category]][row.id]))
            continue
        said = {n: replies[n][row.id] for n in names}
        counts = {n: accepted[n][row.id] for n in names}
        if row.type == "alignment":
            reason = "no_refusal" if judge == "refusal" else "no_safe_response"
            out.append(_pick(names, row, said, counts, reason, judge))
        else:
            out.append(_pick(names, row, said, counts, "all_refused", "refusal"))
    return out


def _pick(
    names: Sequence[str],
    row: Row,
    replies: dict[str, str],
    accepted: dict[str, bool],
    reason: str,
    judge: str,
) -> Row:
    """The first expert (in the configured order) whose reply counts supplies the response."""
    chosen = next((name for name in names if accepted[name]), None)
    record = {**json.loads(row.provenance), "judge": judge, "accepted": accepted}
    if chosen is None:
        return row.with_(response=None, provenance=json.dumps({**record, "dropped": reason}, sort_keys=True))
    return row.with_(
        response=replies[chosen], provenance=json.dumps({**record, "answered_by": chosen}, sort_keys=True)
    )


def _task(spec: AnswerSpec, row: Row, expert: str, reply: str) -> Row:
    """The domain's expert's reply; with ``task_correct_only`` a wrong one is dropped."""
    correct = None
    if row.answer is not None:
        correct = choice_correct(reply, row.answer) if row.choices else contains_answer(reply, row.answer)
    record = {**json.loads(row.provenance), "answered_by": expert, "correct": correct}
    if spec.task_correct_only and correct is False:
        dropped = json.dumps({**record, "dropped": "wrong_answer"}, sort_keys=True)
        return row.with_(response=None, provenance=dropped)
    return row.with_(response=reply, provenance=json.dumps(record, sort_keys=True))
