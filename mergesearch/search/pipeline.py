"""What runs around the search: the data it needs, and the LM-Cocktail baseline next to it."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergesearch.config import SearchConfig, load_config
from mergesearch.errors import UserError
from mergesearch.io import atomic_write_text


def prepare_config(
    config: SearchConfig, config_path: Path, run_dir: Path, log: Callable[[str], None] = print
) -> SearchConfig:
    """The config as it will run: ``data.spec`` generated into ``<run dir>/data`` (once) and ``data.path`` set."""
    if config.data.path or not config.data.spec:
        if not config.data.path:
            raise UserError(
                f"{config_path}: data: set `path` (a dataset) or `spec` (a data spec to generate it from)"
            )
        return config
    from mergesearch.data.pipeline import build_dataset
    from mergesearch.data.spec import DataSpec

    candidates = [Path(config.data.spec), Path(config_path).resolve().parent.parent / config.data.spec]
    spec_path = next((c for c in candidates if c.is_file()), None)
    if spec_path is None:
        raise UserError(f"{config_path}: data.spec: {config.data.spec} not found")
    out = Path(run_dir).resolve() / "data"
    if not (out / "card.json").is_file():
        log(f"data: generating {spec_path} into {out}")
        build_dataset(load_config(spec_path, DataSpec), out, log=log)
    return config.model_copy(update={"data": config.data.model_copy(update={"path": str(out)})})


def cocktail_weights(losses: dict[str, float], temperature: float) -> dict[str, float]:
    """LM-Cocktail: softmax(−loss / T) over the experts."""
    top = max(-v / temperature for v in losses.values())
    exps = {k: math.exp(-v / temperature - top) for k, v in losses.items()}
    total = sum(exps.values())
    return {k: v / total for k, v in exps.items()}


def run_baselines(
    run_dir: Path, temperature: float = 5.0, examples: int = 8, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """LM-Cocktail (linear merge, weights from each expert's loss on a few examples per type), with and
    without alignment examples, scored like a trial on the search split; into ``baselines.json``."""
    from mergesearch.actors import Evaluator
    from mergesearch.merge.genome import GenomeSpace
    from mergesearch.search.tuner import load_run_config

    config = load_run_config(run_dir)
    linear = config.model_copy(
        update={
            "merge": config.merge.model_copy(
                update={"method": "linear", "granularity": "global", "density": None}
            )
        }
    )
    evaluator = Evaluator(linear, log=lambda _: None)
    data = evaluator.data
    by_type: dict[str, list] = {}
    for row in data.tagged:
        by_type.setdefault(row[2], []).append(row)
    few = {t: rows[:examples] for t, rows in by_type.items()}
    experts = list(evaluator.space.experts)
    space = GenomeSpace("linear", experts, evaluator.merger.num_layers)
    results = []
    for name, types in (("lm_cocktail", ("task",)), ("lm_cocktail_aligned", ("task", "alignment"))):
        rows = tuple(r for t in types for r in few.get(t, []))
        losses = {}
        for expert in experts:
            evaluator.backend.merge_from(evaluator.merger, space.decode(space.expert_alone(expert)))
            lls = evaluator.backend.loglikelihood([(evaluator.backend.render(p), r) for p, r, _ in rows])
            tokens = [
                len(evaluator.backend.tokenizer(r, add_special_tokens=False)["input_ids"]) for _, r, _ in rows
            ]
            losses[expert] = -sum(ll for ll, _ in lls) / max(1, sum(tokens))
        weights = cocktail_weights(losses, temperature)
        outcome = evaluator.evaluate({f"w.{e}.g0": w for e, w in weights.items()})
        results.append(
            {
                "name": name,
                "examples_per_type": examples,
                "types": list(types),
                "temperature": temperature,
                "losses": losses,
                "weights": weights,
                "fitness": outcome["fitness"],
                "objectives": outcome["objectives"],
            }
        )
        log(
            f"baseline {name}: weights {json.dumps({k: round(v, 3) for k, v in weights.items()})} fitness {outcome['fitness']:.4f}"
        )
    atomic_write_text(Path(run_dir) / "baselines.json", json.dumps(results, indent=2) + "\n")
    return results
