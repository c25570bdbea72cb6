"""The cluster files and the cluster guide's commands work as written: each cluster file passes the schema
Ray ships and Ray's own preparation (what `ray up` runs before it starts a machine), and every `ray start`
and `ray job submit` line of the files and the docs parses with Ray's own command line."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILES = [ROOT / "cluster.yaml", ROOT / "cluster-existing.yaml"]
DOCS = [ROOT / "docs" / "cluster.md", ROOT / "README.md"]
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
GPU_MEMORY_LABEL = "mergesearch/gpu-memory-gib"


def ray_lines(text: str, command: str) -> list[str]:
    """Every ``ray <command> ...`` invocation in ``text`` (YAML commands or a doc's code), as written."""
    found = re.findall(rf"(?:RAY_AUTH_MODE=token )?ray {command}\b[^\n`]*", text)
    return [line.strip() for line in found if " --" in line]  # not prose naming the command


def parsed(line: str, command: object) -> dict:
    """The options Ray's click command reads from ``line`` (an unknown option or a bad value raises)."""
    words = shlex.split(line.replace("$RAY_HEAD_IP", "10.0.0.1"))
    words = words[words.index("ray") + 1 :]
    while words and words[0] in ("start", "job", "submit"):
        words = words[1:]
    context = command.make_context("ray", words, resilient_parsing=False)  # type: ignore[attr-defined]
    return context.params


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_each_cluster_file_passes_rays_schema_and_rays_own_preparation(path: Path) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    jsonschema.validate(config, json.loads(SCHEMA.read_text()))
    validate_config(prepare_config(config))
    assert {".venv", ".venv-vllm"} <= set(config["rsync_exclude"])  # gigabytes no node needs
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_the_launcher_cluster_mounts_shared_storage_and_labels_every_gpu_node() -> None:
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert any("mount -t nfs4" in c and "/shared" in c for c in config["initialization_commands"])
    for name, node in config["available_node_types"].items():
        if node["resources"].get("GPU"):
            assert float(node["labels"][GPU_MEMORY_LABEL]) > 0, name
    assert config["available_node_types"]["head"]["resources"]["CPU"] == 0  # no actor on the head


@pytest.mark.parametrize("path", [*CLUSTER_FILES, *DOCS], ids=lambda p: p.name)
def test_every_ray_start_line_parses_with_rays_command_line(path: Path) -> None:
    from ray._private.label_utils import parse_node_labels_string, validate_node_labels
    from ray.scripts.scripts import start

    lines = ray_lines(path.read_text(), "start")
    if path.name == "README.md":
        assert not lines  # the README points at the guide
        return
    assert lines
    for line in lines:
        options = parsed(line, start)
        assert options["head"] or options["address"], line
        if options["labels"]:
            labels = parse_node_labels_string(options["labels"])
            validate_node_labels(labels)
            assert float(labels[GPU_MEMORY_LABEL]) > 0, line


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_job_submit_line_names_the_cluster_and_parses_with_rays_command_line(path: Path) -> None:
    from ray.dashboard.modules.job.cli import submit

    lines = ray_lines(path.read_text(), "job submit")
    assert lines
    for line in lines:
        options = parsed(line, submit)
        assert options["address"], f"{path.name}: no --address: {line}"
        assert options["working_dir"] == ".", line
