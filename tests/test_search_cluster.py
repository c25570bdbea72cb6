"""The search as users run it: a job submitted to a Ray cluster, and a driver killed mid-search, resumed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from demo_configs import demo_config

from mergesearch.search.run_dir import RunDir

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def write_config(toy_dataset: Path, folder: Path, num_trials: int, prompts: int, **changes) -> Path:
    config = demo_config(resolved=False)
    config["name"] = "clustertest"
    config["data"] = {"path": str(toy_dataset), "max_alignment_prompts": prompts, "max_task_prompts": prompts}
    config["search"] = {"name": "cma", "num_trials": num_trials, "seed": 0, "warm_starts": ["uniform"]}
    config["promotion"] = {"top_k": 1}
    config.update(changes)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    return env


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: their sockets are held open together, so the system cannot hand
    one out twice (ports taken one at a time can repeat, and Ray refuses a port given to two parts)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


# about 45 s on 2 cores; `make test-slow` runs it, and benchmarks/kill_points.py kills the same command at
# random points of every phase and checks the same (nothing repeated or lost, the searcher rebuilt)
@pytest.mark.slow
def test_a_killed_driver_resumes_without_repeating_or_losing_trials(toy_dataset, tmp_path) -> None:
    config = write_config(toy_dataset, tmp_path, num_trials=10, prompts=40)
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "mergesearch.cli",
        "search",
        str(config),
        "--run-dir",
        str(run),
        "--no-promote",
        "--no-baseline",
    ]
    first = subprocess.Popen(
        command,
        cwd=REPO,
        env=clean_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and RunDir(run).trial_count() < 3:
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
    first.wait(timeout=60)
    before = RunDir(run).trials()
    assert 3 <= len(before) < 10, f"killed after {len(before)} trials"

    done = subprocess.run(
        command,
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stderr
    after = RunDir(run).trials()
    assert len(after) == 10 and len({t.trial_id for t in after}) == 10
    assert after[: len(before)] == before  # nothing lost or rewritten
    genomes = [json.dumps(t.genes, sort_keys=True) for t in after]
    assert len(set(genomes)) == 10  # a searcher restarted from scratch would propose its first points again


# Where `ray start` records the latest head, which a bare ray.init() on this machine joins.
LATEST_HEAD = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"


def stop_head(gcs_port: int) -> None:
    """Stop the head this test started, and only it: `ray stop` would also stop every other Ray on the
    machine (a user's search, a protocol run). Its processes name the GCS port on their command line;
    their workers exit with the raylet."""
    import psutil

    marks = (f":{gcs_port}", f"={gcs_port}")
    ours = [
        proc
        for proc in psutil.process_iter(["cmdline"])
        if any(mark in arg for arg in proc.info["cmdline"] or () for mark in marks)
    ]
    for proc in ours:
        proc.terminate()
    _, alive = psutil.wait_procs(ours, timeout=30)
    for proc in alive:
        proc.kill()
    if LATEST_HEAD.is_file() and LATEST_HEAD.read_text().strip().endswith(f":{gcs_port}"):
        LATEST_HEAD.unlink()  # as `ray stop` does: no stale pointer to a head that is gone


@pytest.mark.slow  # ~85 s, a `ray start` head and `ray job submit`: `make test-slow` (CI)
def test_a_search_submitted_through_the_jobs_api_completes_its_run_dir(toy_dataset, tmp_path) -> None:
    config = write_config(toy_dataset, tmp_path, num_trials=4, prompts=12)
    run = tmp_path / "run"
    agent_flags = (
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
        "ray-client-server-port",
    )
    dashboard, gcs, *agent_ports = free_ports(2 + len(agent_flags))
    env = {**clean_env(), "RAY_AUTH_MODE": "token"}  # as our documented clusters run: token authentication on
    subprocess.run(
        [str(BIN / "ray"), "get-auth-token", "--generate"],
        env=env,
        capture_output=True,
        timeout=60,
        check=True,
    )
    start = subprocess.run(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--num-cpus=2",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            "--include-dashboard=true",
            "--disable-usage-stats",
            # Ray's fixed default ports clash with any other Ray on the machine (its agent then cannot bind
            # and jobs are refused with "No available agent"): this head takes free ones.
            *(f"--{flag}={port}" for flag, port in zip(agent_flags, agent_ports)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        job = subprocess.run(
            [
                str(BIN / "ray"),
                "job",
                "submit",
                "--address",
                f"http://127.0.0.1:{dashboard}",
                "--working-dir",
                str(REPO),
                "--",
                "python",
                "entrypoints/search.py",
                str(config),
                "--run-dir",
                str(run),
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
        assert "succeeded" in job.stdout.lower()
    finally:
        stop_head(gcs)
    for name in (
        "config.yaml",
        "trials.parquet",
        "report.md",
        "pareto.png",
        "best/recipe.yaml",
        "best/model/model.safetensors",
        "promotion/leaderboard.json",
        "baselines.json",
        "tune",
    ):
        assert (run / name).exists(), name
    assert len(RunDir(run).trials()) == 4


def test_a_local_search_starts_its_own_ray_even_when_a_dead_head_was_the_last_started() -> None:
    """A bare ray.init() joins the last `ray start` head on the machine, and waits minutes on a dead one."""
    if LATEST_HEAD.exists():
        pytest.skip(f"{LATEST_HEAD} belongs to a Ray on this machine")
    LATEST_HEAD.parent.mkdir(exist_ok=True)
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    LATEST_HEAD.write_text(dead)
    try:
        started = subprocess.run(
            [sys.executable, "-c", SESSION_PROBE],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        LATEST_HEAD.unlink()
    assert started.returncode == 0, started.stderr[-2000:]
    assert started.stdout.strip() and dead not in started.stdout  # a Ray of its own


SESSION_PROBE = """
import ray
from mergesearch.runtime import ray_session
ray_session(num_cpus=1)
print(ray.get_runtime_context().gcs_address)
ray.shutdown()
"""
