"""mergekit interop: write a merge as a mergekit YAML config and materialise it with ``mergekit-yaml``.

Running the real CLI (not its internals) is the point: what we report is what a user reproduces with
plain mergekit.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from mergesearch.errors import UserError
from mergesearch.io import atomic_dir, atomic_write_text


def mergekit_config(
    method: str,
    base: str | Path,
    experts: Mapping[str | Path, Mapping[str, float]],
    dtype: str = "float32",
    extra: Mapping[str, object] | None = None,
) -> dict:
    """A mergekit config dict: ``experts`` maps each model path to its parameters (weight, density...)."""
    return {
        "merge_method": method,
        "base_model": str(base),
        "models": [{"model": str(path), "parameters": dict(params)} for path, params in experts.items()],
        "dtype": dtype,
        **(dict(extra) if extra else {}),
    }


def mergekit_executable() -> str:
    local = Path(sys.executable).with_name("mergekit-yaml")
    found = str(local) if local.exists() else shutil.which("mergekit-yaml")
    if not found:
        raise UserError("mergekit-yaml not found; install mergesearch's dependencies (`make install`)")
    return found


def run_mergekit_yaml(config: Mapping, out_dir: Path, seed: int | None = None) -> Path:
    """Materialise ``config`` with the ``mergekit-yaml`` CLI into ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        config_path = tmp.parent / f".{out_dir.name}.mergekit.yaml"
        atomic_write_text(config_path, yaml.safe_dump(dict(config), sort_keys=False))
        command = [mergekit_executable(), str(config_path), str(tmp / "model"), "--quiet"]
        if seed is not None:
            command += ["--random-seed", str(seed)]
        try:
            done = subprocess.run(command, capture_output=True, text=True)
        finally:
            config_path.unlink(missing_ok=True)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"mergekit-yaml failed for {out_dir}: {last[0]}")
        for item in (tmp / "model").iterdir():
            item.rename(tmp / item.name)
        (tmp / "model").rmdir()
    return out_dir
