"""Build (or reuse) the toy zoo and print its scores, as a Ray job:

    ray job submit --working-dir . -- python entrypoints/build_zoo.py --zoo /shared/zoo

The same as `mergesearch demo`: a cluster prepares the zoo once on shared storage for every worker.
"""

from __future__ import annotations

import sys

from mergesearch.cli import cli

if __name__ == "__main__":
    cli.main(["demo", *sys.argv[1:]], prog_name="mergesearch")
