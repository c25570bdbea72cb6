"""The data a search needs, made before the search starts: a data spec generated into the run dir, or a
dataset scheme (``smollm2_family``) written on first use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mergesearch.config import DataConfig, SearchConfig, load_config
from mergesearch.errors import UserError
from mergesearch.model_refs import resolve_dataset, resolve_model
from mergesearch.search.run_dir import RunDir


def prepare_data(
    config: SearchConfig, config_path: Path, run: RunDir, log: Callable[[str], None] = print
) -> DataConfig:
    """The data section as it runs: ``data.spec`` generated into ``<run dir>/data`` (once), ``path`` set."""
    if config.data.path or not config.data.spec:
        if not config.data.path:
            raise UserError(
                f"{config_path}: data: set `path` (a dataset) or `spec` (a data spec to generate it from)"
            )
        folder = resolve_dataset(config.data.path, f"{config_path}: data.path", log)
        return config.data.model_copy(update={"path": str(folder)})
    from mergesearch.datagen.pipeline import build_dataset
    from mergesearch.datagen.spec import DataSpec

    candidates = [Path(config.data.spec), Path(config_path).resolve().parent.parent / config.data.spec]
    spec_path = next((c for c in candidates if c.is_file()), None)
    if spec_path is None:
        raise UserError(f"{config_path}: data.spec: {config.data.spec} not found")
    if not (run.data / "card.json").is_file():
        log(f"data: generating {spec_path} into {run.data}")
        spec = load_config(spec_path, DataSpec).with_models(lambda ref, field: resolve_model(ref, field, log))
        build_dataset(spec, run.data, log=log)
    return config.data.model_copy(update={"path": str(run.data)})
