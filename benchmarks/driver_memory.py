"""Benchmark: the driver's peak memory does not grow with the pool (JSON).

    .venv/bin/python benchmarks/driver_memory.py --out benchmarks/results/driver_memory.json

On a cluster the driver runs on a small head node: it must hold no model. This runs the user's command,
``mergesearch search CONFIG`` (the search, the LM-Cocktail baselines, promotion of the best trial and the
report, every step the CLI runs), for a 3-expert and a 16-expert pool (pool files over the toy pool's
members: pools/toy16.yaml), at the same trials, data and judge, each in a fresh process, and
reads the driver process's own peak resident memory (``VmHWM`` in /proc/self/status, read at exit: the
Ray workers, which hold the pools, are other processes). Both pools' models are built before (cached);
the dataset is made once and shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Runs the CLI as `python -m mergesearch.cli` would and reports the process's peak RSS when it exits.
LAUNCH = (
    "import atexit, runpy, sys\n"
    "def peak():\n"
    "    line = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
    "    sys.stderr.write('driver ' + line)\n"
    "atexit.register(peak)\n"
    "sys.argv = ['mergesearch', *sys.argv[1:]]\n"
    "runpy.run_module('mergesearch.cli', run_name='__main__')\n"
)
# Both pools come from pool files over the 16-expert toy pool's members, so the two runs import the same
# code and differ in the pool's size alone (a `zoo:` expert list imports less than a `zoo_pool:` file: an
# earlier run compared those and measured the imports, not the pool).
POOLS = {
    "3 experts": ["zoo_pool:aligned", "zoo_pool:math", "zoo_pool:facts"],
    "16 experts": ["zoo_pool:*"],
}


def config_for(pool_file: Path, dataset: Path, trials: int) -> dict:
    return {
        "name": "driver_memory",
        "models": {"base": "zoo:base", "dtype": "float32", "pool": str(pool_file)},
        "data": {"path": str(dataset), "max_alignment_prompts": 24, "max_task_prompts": 24},
        "merge": {"method": "task_arithmetic", "granularity": "global"},
        "judge": {"kind": "llama_guard", "model": "zoo:guard"},
        "search": {"name": "cma", "num_trials": trials, "seed": 0},
        "resources": {"num_evaluators": 1, "cpus_per_evaluator": 1},
        "promotion": {"top_k": 1},
    }


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LAUNCH, *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def measure(name: str, pool: list[str], dataset: Path, trials: int, work: Path) -> dict:
    path = work / f"{name.replace(' ', '_')}.yaml"
    pool_file = path.with_suffix(".pool.yaml")
    pool_file.write_text(yaml.safe_dump({"experts": pool}))
    path.write_text(yaml.safe_dump(config_for(pool_file, dataset, trials)))
    started = time.perf_counter()
    done = cli("search", str(path), "--run-dir", str(work / path.stem), cwd=work)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name}: search failed:\n{done.stderr[-3000:]}")
    peak = re.search(r"driver VmHWM:\s+(\d+) kB", done.stderr)
    experts = len(yaml.safe_load((work / path.stem / "config.yaml").read_text())["models"]["experts"])
    return {
        "pool": name,
        "experts": experts,
        "driver_peak_rss_mib": round(int(peak.group(1)) / 1024, 1) if peak else None,
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mergesearch-driver-memory"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    dataset = args.work / "dataset"
    if not (dataset / "card.json").is_file():
        made = cli("data", "generate", str(ROOT / "data_specs" / "toy.yaml"), "--out", str(dataset), cwd=ROOT)
        if made.returncode != 0:
            raise SystemExit(f"data generate failed:\n{made.stderr[-3000:]}")
    rows = [measure(name, pool, dataset, args.trials, args.work) for name, pool in POOLS.items()]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    result = {
        "benchmark": "driver_memory",
        "commit": commit.strip(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, python {platform.python_version()}, {os.cpu_count()} cores",
        "what": "peak RSS of the `mergesearch search` process (search, baselines, promotion, report)",
        "trials": args.trials,
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
