"""Benchmark: train the toy zoo from scratch (never the shipped fixture): wall time, per-model training
time and peak memory (JSON).

    .venv/bin/python benchmarks/zoo_build.py --out benchmarks/results/zoo_build.json [--smoke] [--twice]

Target: a full build in <= 15 minutes on 2 cores. ``--twice`` builds again and compares every file's
hash (determinism of the full recipe, not just the smoke recipe the tests use). The members trained
from the base train side by side (one process each, two at a time on 2 cores), so their
``train_seconds`` overlap: the wall time is the figure to compare. ``--against ZOO`` compares every file
with a zoo built before (a cached one), say by an older builder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

from mergesearch.io import atomic_write_text
from mergesearch.runtime import offline_and_quiet
from mergesearch_zoo.build import build_zoo
from mergesearch_zoo.layout import read_manifest
from mergesearch_zoo.recipe import ZooRecipe, smoke_recipe

TARGET_SECONDS = 15 * 60


def file_hashes(zoo: Path) -> dict[str, str]:
    return {
        str(p.relative_to(zoo)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(zoo.rglob("*"))
        if p.is_file() and p.name != "zoo.json"
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--smoke", action="store_true", help="the few-step smoke recipe (plumbing only)")
    parser.add_argument("--twice", action="store_true", help="build twice and compare file hashes")
    parser.add_argument("--against", type=Path, help="a zoo folder to compare each member's files with")
    args = parser.parse_args()
    offline_and_quiet()
    recipe = smoke_recipe() if args.smoke else ZooRecipe()
    log = lambda m: print(m, file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        zoo = build_zoo(recipe, Path(tmp) / "zoo", log=log, train=True)
        wall = time.monotonic() - started
        result = {
            "benchmark": "zoo_build",
            "recipe": "smoke" if args.smoke else "default",
            "recipe_digest": recipe.digest(),
            "wall_seconds": round(wall, 1),
            "train_seconds": read_manifest(zoo)["train_seconds"],
            # The building process's peak. A worker's own is not measurable this way: a spawned child's
            # ru_maxrss starts at its parent's size when it was forked, before exec.
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "zoo_size_mib": round(sum(p.stat().st_size for p in zoo.rglob("*") if p.is_file()) / 2**20, 2),
            "target_seconds": TARGET_SECONDS,
            "meets_target": wall <= TARGET_SECONDS,
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
        }
        if args.against:
            ours, theirs = file_hashes(zoo), file_hashes(args.against)
            result["identical_to"] = {
                "zoo": str(args.against),
                "members": {
                    m: all(ours[f] == theirs.get(f) for f in ours if f.startswith(f"{m}/"))
                    for m in sorted({f.split("/")[0] for f in ours})
                },
            }
        if args.twice:
            started = time.monotonic()
            again = build_zoo(recipe, Path(tmp) / "again", log=log, train=True)
            result["rebuild_wall_seconds"] = round(time.monotonic() - started, 1)
            result["identical_rebuild"] = file_hashes(again) == file_hashes(zoo)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
