"""Answering and selection: experts answer every prompt in batches; the judge picks what to keep.

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


class Answerer:
    """The experts (and a guard model, when the judge is ``llama_guard``), loaded once."""

    def __init__(
        self,
        spec: AnswerSpec,
        tasks: Sequence[TaskSpec],
        log: Callable[[str], None] = print,
    ) -> None:
        self.spec = spec
        engine = spec.backend.with_batches(spec.batch_size, spec.max_new_tokens)
        self.experts = {
            e.name: make_backend(check_model_folder(Path(e.path), f"answer.experts.{e.name}"), engine, e.name)
            for e in spec.experts
        }
        self.task_experts = {t.domain: t.expert for t in tasks}
        for domain, expert in self.task_experts.items():
            if expert not in self.experts:
                raise UserError(
                    f"tasks: domain {domain!r} names expert {expert!r}, "
                    f"which is not in answer.experts ({', '.join(self.experts)})"
                )
        self.refusal = refusal_detector(spec.refusal_detector)
        self.judge = make_judge(spec.judge, str(resolve_device(spec.backend.device)), log)

    def close(self) -> None:
        """Stops every engine (on vLLM each runs processes of its own; in transformers there is nothing
        to stop). A second call does nothing."""
        for backend in self.experts.values():
            backend.close()
        self.judge.close()

    def answer(self, rows: Sequence[Row]) -> list[Row]:
        """Each row answered (response set) or dropped (response None, reason in provenance), in order."""
        done: dict[int, Row] = {}
        by_type: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            by_type.setdefault(row.type, []).append(i)
        for i, row in zip(
            by_type.get("alignment", []), self._alignment([rows[i] for i in by_type.get("alignment", [])])
        ):
            done[i] = row
        for i, row in zip(
            by_type.get("benign", []), self._benign([rows[i] for i in by_type.get("benign", [])])
        ):
            done[i] = row
        tasks = by_type.get("task", [])
        for domain in dict.fromkeys(rows[i].category for i in tasks):
            members = [i for i in tasks if rows[i].category == domain]
            for i, row in zip(members, self._task(domain, [rows[i] for i in members])):
                done[i] = row
        return [done[i] for i in range(len(rows))]

    def _replies(self, rows: Sequence[Row]) -> dict[str, list[str]]:
        prompts = [r.prompt for r in rows]
        return {name: backend.generate(prompts) for name, backend in self.experts.items()} if rows else {}

    def _alignment(self, rows: Sequence[Row]) -> list[Row]:
        replies = self._replies(rows)
        accepted = {
            name: list(self.judge.assess([(r.prompt, t) for r, t in zip(rows, texts)]).safe)
            for name, texts in replies.items()
        }
        judge = self.spec.judge.kind
        reason = "no_refusal" if judge == "refusal" else "no_safe_response"
        return [
            self._pick(
                row, {n: replies[n][i] for n in replies}, {n: accepted[n][i] for n in accepted}, reason, judge
            )
            for i, row in enumerate(rows)
        ]

    def _benign(self, rows: Sequence[Row]) -> list[Row]:
        replies = self._replies(rows)
        complied = {name: [not r for r in self.refusal.refusals(texts)] for name, texts in replies.items()}
        return [
            self._pick(
                row,
                {n: replies[n][i] for n in replies},
                {n: complied[n][i] for n in complied},
                "all_refused",
                "refusal",
            )
            for i, row in enumerate(rows)
        ]

    def _pick(
        self, row: Row, replies: dict[str, str], accepted: dict[str, bool], reason: str, judge: str
    ) -> Row:
        chosen = next((name for name in self.experts if accepted[name]), None)
        record = {**json.loads(row.provenance), "judge": judge, "accepted": accepted}
        if chosen is None:
            return row.with_(
                response=None, provenance=json.dumps({**record, "dropped": reason}, sort_keys=True)
            )
        return row.with_(
            response=replies[chosen], provenance=json.dumps({**record, "answered_by": chosen}, sort_keys=True)
        )

    def _task(self, domain: str, rows: Sequence[Row]) -> list[Row]:
        if domain not in self.task_experts:
            raise UserError(
                f"task domain {domain!r} has no answering expert (add it to `tasks` with an `expert`)"
            )
        expert = self.task_experts[domain]
        replies = self.experts[expert].generate([r.prompt for r in rows])
        out = []
        for row, reply in zip(rows, replies):
            correct = None
            if row.answer is not None:
                correct = (
                    choice_correct(reply, row.answer) if row.choices else contains_answer(reply, row.answer)
                )
            record = {**json.loads(row.provenance), "answered_by": expert, "correct": correct}
            if self.spec.task_correct_only and correct is False:
                out.append(
                    row.with_(
                        response=None,
                        provenance=json.dumps({**record, "dropped": "wrong_answer"}, sort_keys=True),
                    )
                )
            else:
                out.append(row.with_(response=reply, provenance=json.dumps(record, sort_keys=True)))
        return out
