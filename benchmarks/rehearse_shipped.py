"""``mergesearch rehearse`` on every shipped GPU config, with the model folders it names written here
(``paper_folders``: config.json and tokenizer files, no weights): what each real run would hit.

    .venv/bin/python benchmarks/rehearse_shipped.py [--out benchmarks/results/rehearse_shipped.json]

Each config is checked with its data spec against ``cluster.yaml``'s node types (``--no-run``): folders,
tokenizers, chat templates, lm-eval datasets, the memory plan from the config.json files; its stand-ins
and stand-in job are written. The JSON holds each config's exit status and findings, one line each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# each shipped GPU config and the data spec that makes its data
SHIPPED = {
    "paper_llama3_openbio_guard_gpu": "llama3_openbio_gpu",
    "paper_llama3_openbio_loss_gpu": "llama3_openbio_gpu",
    "paper_mistral_mammoth2_guard_gpu": "mistral_mammoth2_gpu",
    "paper_mistral_mammoth2_loss_gpu": "mistral_mammoth2_gpu",
    "llama3_8b_experts_gpu": "llama3_experts_gpu",
}


def rehearse(name: str, spec: str, models: Path, work: Path) -> dict:
    """One config's rehearsal (checks and stand-ins, no run): exit status, findings, seconds."""
    folder = work / name
    folder.mkdir()
    config_path, spec_path = folder / "config.yaml", folder / "spec.yaml"
    config_path.write_text(
        (ROOT / "search_spaces" / f"{name}.yaml").read_text().replace("/shared/models", str(models))
    )
    spec_path.write_text(
        (ROOT / "data_specs" / f"{spec}.yaml").read_text().replace("/shared/models", str(models))
    )
    started = time.monotonic()
    done = subprocess.run(
        [
            str(BIN / "mergesearch"),
            "rehearse",
            str(config_path),
            "--data-spec",
            str(spec_path),
            "--out",
            str(folder / "rehearsal"),
            "--cluster",
            str(ROOT / "cluster.yaml"),
            "--no-run",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    findings = [
        line.removeprefix("would fail: ")
        for line in done.stdout.splitlines()
        if line.startswith("would fail:")
    ]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    return {
        "config": f"search_spaces/{name}.yaml",
        "data_spec": f"data_specs/{spec}.yaml",
        "exit_status": done.returncode,
        "findings": [line.replace(str(folder), "<config dir>") for line in findings],
        "error": errors[-1] if errors else None,
        "traceback": "Traceback" in done.stderr,
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "rehearse_shipped.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from paper_folders import write_folders
    from stamps import provenance

    work = Path(tempfile.mkdtemp(prefix="rehearse-shipped-"))
    models = work / "models"
    write_folders(models)
    results = [rehearse(name, spec, models, work) for name, spec in SHIPPED.items()]
    record = {**provenance(sys.argv), "configs": results}
    args.out.write_text(json.dumps(record, indent=1))
    for result in results:
        print(f"{result['config']}: exit {result['exit_status']}, {len(result['findings'])} finding(s)")
        for line in result["findings"]:
            print(f"  {line}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
