"""The report of a per-layer search of a 30-layer, 3-expert pool, as a browser shows it at 1920x1080.

Renders ``report.html`` for the synthetic run dir the report tests read (tests/synthetic_runs.py: the run
dir a finished, promoted search writes, with 180 genes) and screenshots it with headless Chromium
(Debian's ``chromium``). The picture goes to ``docs/assets/``: whether the report fits a screen is judged
by looking at it.

    python benchmarks/report_screenshot.py [--out docs/assets/report_per_layer.png]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from synthetic_runs import per_layer_run  # noqa: E402

from mergesearch.report import write_report  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "assets" / "report_per_layer.png")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("error: chromium not found (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        run = write_report(per_layer_run(Path(scratch) / "run"))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1920,1080",
            f"--screenshot={args.out.resolve()}",
            run.report_html.resolve().as_uri(),
        ]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
