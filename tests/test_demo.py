"""The README's main job, end to end (slow: a few minutes with the zoo cached; `make test-slow`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from demo_claims import demo_claims

from mergesearch.config import load_config
from mergesearch.protocol.config import ProtocolConfig

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "protocols" / "demo.yaml"


@pytest.mark.slow
def test_the_demo_prints_the_papers_table_and_alignment_data_makes_the_search_safer(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "mergesearch.cli", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    protocol = load_config(PROTOCOL, ProtocolConfig)
    summary = json.loads((out / "protocol.json").read_text())
    assert [r["row"] for r in summary["rows"]] == protocol.rows
    assert all(f"| {row} |" in done.stdout for row in protocol.rows)
    for name in ("search_task_only", "search_task_alignment"):
        cells = [c for c in summary["cells"] if c["row"] == name]
        assert sorted(c["seed"] for c in cells) == protocol.seeds
        assert all(c["search_split"]["trials"] == protocol.search.trials for c in cells)
    # The README's claims, set on zoos of training seeds 0-2 and checked on seed 3 (demo_claims.py).
    claims = demo_claims(summary)
    assert all(claims.values()), claims
    assert (out / "protocol.png").is_file()
