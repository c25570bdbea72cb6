"""Generate alignment and task data on a Ray cluster, as a Ray job:

    ray job submit --working-dir . -- \
        python entrypoints/generate_data.py data_specs/toy.yaml --out /shared/data/toy --actors 4

Generation and answering run as Ray Data actor pools (``--ray`` is implied), each actor keeping its
models resident; the driver writes the dataset atomically to shared storage. The spec's model references
(``zoo:<member>``, ``smollm2``, paths) are resolved once, on the driver, before the pools start
(``DataSpec.with_models``, as ``mergesearch data generate`` does): the actors get folders, which must be
on storage every node can read.
"""

from __future__ import annotations

import sys

from mergesearch.cli import cli

if __name__ == "__main__":
    args = sys.argv[1:]
    cli.main(["data", "generate", *args, *([] if "--ray" in args else ["--ray"])], prog_name="mergesearch")
