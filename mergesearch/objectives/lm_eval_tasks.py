"""Evaluation data as lm-eval tasks: local YAML tasks written from our items, run with ``simple_evaluate``.

lm-eval declares tasks as data; we write one per question set (a JSONL file and a YAML next to it) so a
merge can be scored by lm-eval itself, offline, and compared with our own ``task_accuracy``. The context
of each item is the question already rendered with the model's chat template, and the options follow it
with no delimiter: exactly the (context, continuation) pairs our backend scores.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from mergesearch.objectives.task import ChoiceItem


def write_choice_task(items: Sequence[ChoiceItem], render: Callable[[str], str], folder: Path, name: str) -> str:
    """A multiple-choice lm-eval task (``acc``, ``acc_norm``) in ``folder``; returns its name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"context": render(i.prompt), "choices": list(i.choices), "answer": i.answer}) + "\n" for i in items))
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
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return name


def run_lm_eval(model: Any, tokenizer: Any, tasks: Sequence[str], include_path: Path | None = None, batch_size: int = 16, device: str = "cpu") -> dict[str, dict[str, float]]:
    """lm-eval's ``simple_evaluate`` on an in-memory model; per task, its metrics (``acc``, ``acc_norm``, ...)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    results = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, log_samples=False, bootstrap_iters=0, verbosity="ERROR")
    return {task: {k.split(",")[0]: v for k, v in metrics.items() if isinstance(v, (int, float)) and not k.endswith("_stderr,none")}
            for task, metrics in results["results"].items()}
