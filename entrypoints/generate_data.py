"""Generate alignment and task data on a Ray cluster, as a Ray job:

    ray job submit --working-dir . -- python entrypoints/generate_data.py data_specs/toy.yaml --out /shared/data/toy --actors 4

Generation and answering run as Ray Data actor pools (``--ray`` is implied), each actor keeping its
models resident; the driver writes the dataset atomically to shared storage.
"""

from __future__ import annotations

import sys

from mergesearch.cli import cli

if __name__ == "__main__":
    args = sys.argv[1:]
    cli.main(["data", "generate", *args, *([] if "--ray" in args else ["--ray"])], prog_name="mergesearch")
