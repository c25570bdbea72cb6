"""Run (or resume) a search as a Ray job, then promote its best candidates and write the report:

    ray job submit --working-dir . -- \
        python entrypoints/search.py search_spaces/demo.yaml --run-dir /shared/runs/demo

The driver connects to the cluster (RAY_ADDRESS, set by `ray job submit`); evaluator and judge actors are
placed on the workers with the resources the config asks for. Re-submitting the same command resumes.
"""

from __future__ import annotations

import sys

from mergesearch.cli import cli

if __name__ == "__main__":
    cli.main(["search", *sys.argv[1:]], prog_name="mergesearch")
