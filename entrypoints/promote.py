"""Promote a finished search's best trials as a Ray job (lm-eval + held-out safety, leaderboard, best/):

ray job submit --working-dir . -- python entrypoints/promote.py /shared/runs/demo --top 3
"""

from __future__ import annotations

import sys

from mergesearch.cli import cli

if __name__ == "__main__":
    cli.main(["promote", *sys.argv[1:]], prog_name="mergesearch")
