"""The README's main job, end to end (slow: a few minutes with the zoo cached; `make test-slow`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert summary["expectations"]["task-only search is less safe than the aligned expert"]
    means = {r["row"]: {k: v["mean"] for k, v in r.items() if isinstance(v, dict)} for r in summary["rows"]}
    task_only, aligned = means["search_task_only"], means["search_task_alignment"]
    assert aligned["safety"] > task_only["safety"] + 0.1  # what alignment data buys (measured: +18 points)
    assert aligned["short_answer"] >= 0.5  # without giving up the misaligned expert's sums (76.5%)
    assert (out / "protocol.png").is_file()
