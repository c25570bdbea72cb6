"""Issue 51: why the protocol's searched merges keep less of each skill on held-out prompts than on the
prompts they were chosen on.

A search's fitness reads the first rows of the search split (the config's ``max_alignment_prompts`` and
``max_task_prompts``); the rest of the search split, in the same wordings, is never read by it: a
validation part. Each alignment-aware search cell's merge, and each expert, is scored here on both
parts; its held-out figures come from its cell. If a merge falls on the validation part as it does on
held-out prompts, it was chosen partly for its luck on the few questions the fitness read (the winner's
curse); if it holds there, what it loses is the held-out split's unseen wordings.

    python benchmarks/paper_validation.py [--protocol protocols/smollm2_paper.yaml]
        [--cells runs/protocol-smollm2-paper] [--out benchmarks/results/paper_validation.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from mergesearch.config import load_config
from mergesearch.data.eval_split import load_eval_data
from mergesearch.io import atomic_write_text
from mergesearch.objectives.data import EvalData
from mergesearch.objectives.evaluate import score_model
from mergesearch.protocol.bench import Bench, Merge
from mergesearch.protocol.config import ProtocolConfig
from mergesearch.runtime import offline_and_quiet, ray_session
from mergesearch.search.run_dir import RunDir
from mergesearch.workflow import prepare

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from stamps import provenance  # noqa: E402

SCORED = ("safety", "over_refusal", "short_answer", "choice_accuracy")


def parts(path: str, max_alignment: int, max_task: int) -> dict[str, EvalData]:
    """The search split's rows the fitness reads, and the rest of it."""
    seen = load_eval_data(path, "search", max_alignment, max_task)
    every = load_eval_data(path, "search")
    rest = EvalData(
        harmful=every.harmful[len(seen.harmful) :],
        benign=every.benign[len(seen.benign) :],
        choice_items=every.choice_items[len(seen.choice_items) :],
        short_items=every.short_items[len(seen.short_items) :],
        tagged=(),
        source=f"{path}:search, past the fitness's rows",
    )
    return {"fitness_rows": seen, "validation": rest}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--protocol", type=Path, default=ROOT / "protocols" / "smollm2_paper.yaml")
    parser.add_argument("--cells", type=Path, default=ROOT / "runs" / "protocol-smollm2-paper")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "paper_validation.json")
    args = parser.parse_args()
    stamp = provenance(sys.argv)
    offline_and_quiet()
    ray_session(num_cpus=os.cpu_count())
    log = lambda message: print(message, file=sys.stderr, flush=True)
    protocol = load_config(args.protocol, ProtocolConfig)
    search_path = ROOT / protocol.search_config
    config = load_config(search_path)
    setup = prepare(config, search_path, RunDir(args.cells / "data_run"), log)
    config = setup.config  # its models and dataset resolved
    bench = Bench(protocol, setup, args.cells, log, lambda reads: ("validation",))  # it runs no search
    data = parts(str(config.data.path), config.data.max_alignment_prompts, config.data.max_task_prompts)
    cells = sorted(
        (json.loads(p.read_text()) for p in (args.cells / "cells").glob("*__seed[0-9].json")),
        key=lambda c: (c["row"], c["seed"]),
    )
    wanted = [
        c
        for c in cells
        if c["row"].startswith(("expert:", "search_task_alignment")) and c["row"] != "expert:base"
    ]
    result: dict[str, Any] = {
        "benchmark": "paper_validation",
        "protocol": args.protocol.name,
        "sizes": {
            name: {k: len(getattr(d, k)) for k in ("harmful", "benign", "short_items", "choice_items")}
            for name, d in data.items()
        },
        "merges": [],
    }
    for cell in wanted:
        started = time.perf_counter()
        merge = Merge.from_record(cell["merge"])
        evaluator = bench.evaluator(merge.space, merge.experts)
        evaluator.merge(merge.genes, cell["seed"])
        scored = {}
        for name, part in data.items():
            scores = score_model(
                evaluator.backend, part, evaluator.judge, config.fitness, config.backend.max_new_tokens
            )
            scored[name] = {k: round(scores.objectives[k], 4) for k in SCORED if k in scores.objectives}
        heldout = cell["heldout"]["objectives"]
        scored["heldout"] = {k: round(heldout[k], 4) for k in SCORED if k in heldout}
        result["merges"].append(
            {
                "row": cell["row"],
                "seed": cell["seed"],
                **scored,
                "wall_s": round(time.perf_counter() - started, 1),
            }
        )
        log(f"{cell['row']} seed {cell['seed']}: {scored}")
        atomic_write_text(args.out, json.dumps(result | stamp, indent=2) + "\n")
    bench.close()


if __name__ == "__main__":
    main()
