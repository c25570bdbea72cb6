"""The cluster guide (docs/cluster.md) run end to end on a simulated multi-node GPU cluster, on stand-ins of
the paper's models: the rehearsal a researcher runs before paying for GPUs, run here.

    .venv/bin/python benchmarks/rehearsal_cluster.py [--trials 6] [--out FILE]

On this machine: the paper's four folders as they are before a download (config.json and tokenizer
files: ``paper_folders``), copies of the paper's search config and data spec pointing at them, then the
guide's marked commands (``<!-- rehearsed: NAME -->`` before a code block), with its placeholders filled
in: a head with no CPUs for work and 4 worker nodes declaring one GPU each and the GPU-memory label
(``ray start``, each on its own ports, with the flags a simulation on one machine needs added), the
rehearsal (``mergesearch rehearse ... --no-run``, checking the plan against the live nodes, writing the
stand-ins and the stand-in job), data generation and the search through ``ray job submit``, the search's
driver killed once after its first trials and the job re-submitted, promotion re-submitted, the run dir
copied back and its report rebuilt. The JSON records each actor's node and resources against the plan,
the drivers' peak memory, the trials run against the budget, each candidate's promotions, the wall time
of each phase; ``tests/test_rehearsal.py`` checks the guide still has every command this script runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, closing
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GUIDE = ROOT / "docs" / "cluster.md"
CONFIG = ROOT / "search_spaces" / "paper_llama3_openbio_guard_gpu.yaml"
SPEC = ROOT / "data_specs" / "llama3_openbio_gpu.yaml"
WORKERS = 4
WORKER_CPUS = 3  # logical: the shipped configs ask 3 CPUs per evaluator
WORKER_MEMORY = 120 * 2**30  # logical heap: the real plan's pinned 8B pool fits, as on a g6e.4xlarge
GPU_MEMORY_GIB = 45
MARKED = ("cluster", "rehearse", "jobs", "promote", "results")
# `ray start` ports a second node on one machine must not share with the first (Ray's fixed defaults).
NODE_PORTS = (
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
)


def guide_blocks(text: str) -> dict[str, list[str]]:
    """The commands of each marked code block: ``<!-- rehearsed: NAME -->`` then a fenced block; comment
    lines and ``export`` lines dropped (their settings are the environment this script passes)."""
    blocks = {}
    for name, body in re.findall(r"<!-- rehearsed: (\w+) -->\n```bash\n(.*?)```", text, re.S):
        lines = [line.split("  #")[0].strip() for line in body.splitlines()]
        blocks[name] = [line for line in lines if line and not line.startswith(("#", "export "))]
    return blocks


def filled(command: str, places: dict[str, str]) -> list[str]:
    """A guide command with its placeholders (the keys of ``places``, regular expressions) filled in."""
    for pattern, value in places.items():
        command = re.sub(pattern, value, command)
    left = re.findall(r"<\w+>|(?<![\w.-])/shared/\S*", command)
    if left:
        raise SystemExit(f"{GUIDE}: unfilled placeholder {left[0]} in: {command}")
    words = shlex.split(command)
    while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes: our env has them
        words.pop(0)
    return words


def placeholders(work: Path, dashboard: str, gcs: int, dashboard_port: int) -> dict[str, str]:
    """What fills the guide's placeholders here: the stand-in job ``mergesearch rehearse`` wrote, this
    machine's head, folders under ``work`` for the shared storage and the copy back."""
    rehearsal = work / "rehearsal"
    return {
        r"search_spaces/\S+\.yaml": str(rehearsal / "config.yaml"),
        r"data_specs/\S+\.yaml|SPEC\.yaml": str(rehearsal / "data_spec.yaml"),
        r"--cluster \S+": "",
        r"/shared/data/NAME": str(rehearsal / "data"),  # where the stand-in job reads its data
        r"<head>:/shared/runs/\S+": str(work / "shared" / "runs" / "paper"),
        r"/shared/runs/llama3": str(work / "shared" / "runs" / "paper"),
        r"(?<= )runs/llama3": str(work / "back" / "paper"),
        r"(?<= )runs/$": str(work / "back") + "/",
        r"http://<head>:8265": dashboard,
        r"<head>:6379": f"127.0.0.1:{gcs}",
        r"--port=6379": f"--port={gcs}",
        r"--dashboard-host=0\.0\.0\.0": f"--dashboard-host=127.0.0.1 --dashboard-port={dashboard_port}",
        r"--working-dir \.": f"--working-dir {ROOT}",
    }


def free_ports(count: int) -> list[int]:
    sockets = []
    with ExitStack() as stack:
        for _ in range(count):
            s = stack.enter_context(closing(socket.socket()))
            s.bind(("127.0.0.1", 0))
            sockets.append(s.getsockname()[1])
    return sockets


class Watch:
    """Polls the machine's processes for a command line containing ``mark``: the peak RSS of each such
    process (a job's driver), and lets the caller kill them."""

    def __init__(self, mark: str) -> None:
        self.mark, self.peak, self.pids = mark, 0, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _matching(self):
        import psutil

        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if self.mark in cmdline and "ray job submit" not in cmdline and "job submit" not in cmdline:
                yield proc

    def _poll(self) -> None:
        import psutil

        while not self._stop.is_set():
            for proc in self._matching():
                try:
                    self.peak = max(self.peak, proc.memory_info().rss)
                    self.pids.add(proc.pid)
                except psutil.Error:
                    pass
            time.sleep(0.2)

    def kill(self) -> int:
        killed = 0
        for proc in self._matching():
            proc.send_signal(signal.SIGKILL)
            killed += 1
        return killed

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def actors_now(dashboard: str) -> list[dict]:
    """The live actors of the search (namespace mergesearch) with their node and resources."""
    from ray.util.state import list_actors

    found = list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], detail=True, limit=1000)
    return [
        {
            "class": a.class_name,
            "name": a.name,
            "node_id": a.node_id,
            "resources": {k: v for k, v in (a.required_resources or {}).items() if k in ("CPU", "GPU")},
        }
        for a in found
        if a.ray_namespace == "mergesearch"
    ]


def nodes_now(dashboard: str) -> dict[str, dict]:
    from ray.util.state import list_nodes

    return {
        n.node_id: {"head": n.is_head_node, "resources": n.resources_total, "labels": n.labels}
        for n in list_nodes(address=dashboard, detail=True)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "rehearsal_cluster.json"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from paper_folders import write_paper_folders
    from stamps import provenance

    blocks = guide_blocks(GUIDE.read_text())
    missing = [name for name in MARKED if name not in blocks]
    if missing:
        raise SystemExit(f"{GUIDE}: no block marked `<!-- rehearsed: {missing[0]} -->`")
    work = Path(tempfile.mkdtemp(prefix="rehearsal-"))
    phases: dict[str, float] = {}
    record: dict = {"workers": WORKERS, "gpus_per_worker": 1, "trials_budget": args.trials}

    def timed(name: str, action):
        started = time.monotonic()
        result = action()
        phases[name] = round(time.monotonic() - started, 1)
        print(f"[{name}] {phases[name]} s", flush=True)
        return result

    # The user's side: the four folders before a download, the shipped config and spec pointing at them.
    real = work / "shared" / "models"
    timed("folders", lambda: write_paper_folders(real))
    config, spec = work / "config.yaml", work / "spec.yaml"
    config.write_text(CONFIG.read_text().replace("/shared/models", str(real)))
    spec.write_text(SPEC.read_text().replace("/shared/models", str(real)))

    gcs, dashboard_port, *ports = free_ports(2 + len(NODE_PORTS) * (WORKERS + 1))
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    rehearsal = work / "rehearsal"
    places = placeholders(work, dashboard, gcs, dashboard_port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{env.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
    os.environ["RAY_AUTH_MODE"] = "token"  # this process reads the state API with the same token

    def sh(words: list[str], timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(words, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode:
            raise SystemExit(f"{' '.join(words)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
        return done

    def node_flags(i: int) -> list[str]:
        own = ports[i * len(NODE_PORTS) : (i + 1) * len(NODE_PORTS)]
        flags = [f"--{flag}={port}" for flag, port in zip(NODE_PORTS, own, strict=True)]
        return [*flags, "--node-ip-address=127.0.0.1", "--disable-usage-stats"]

    # 1. The cluster: the guide's head line, then its worker line once per simulated GPU node.
    head_line, worker_line = blocks["cluster"]
    sh([str(BIN / "ray"), "get-auth-token", "--generate"], check=False)

    def start_cluster() -> None:
        sh([*filled(head_line, places), "--include-dashboard=true", *node_flags(0)])
        for i in range(1, WORKERS + 1):
            simulated = ["--num-gpus=1", f"--num-cpus={WORKER_CPUS}", f"--memory={WORKER_MEMORY}"]
            words = filled(worker_line.replace("=45", f"={GPU_MEMORY_GIB}"), places)
            sh([*words, *simulated, *node_flags(i)])

    try:
        timed("cluster_start", start_cluster)
        record["nodes"] = nodes_now(dashboard)
        run_env = env | {"RAY_ADDRESS": f"127.0.0.1:{gcs}"}

        # 2. The rehearsal's checks and stand-ins, on the machine that submits (the plan: the live nodes).
        (rehearse_line,) = blocks["rehearse"]
        words = filled(rehearse_line, places)
        words = [str(BIN / "mergesearch"), *words[1:], "--out", str(rehearsal)]
        words[2:3] = [str(config)]
        words[words.index("--data-spec") + 1] = str(spec)
        checked = timed(
            "rehearse_check",
            lambda: subprocess.run(words, cwd=work, env=run_env, capture_output=True, text=True, timeout=600),
        )
        record["rehearse_findings"] = [
            line for line in checked.stdout.splitlines() if line.startswith("would fail:")
        ]
        if not (rehearsal / "config.yaml").is_file():
            raise SystemExit(f"rehearse wrote no stand-in job:\n{(checked.stdout + checked.stderr)[-3000:]}")
        plan_config = yaml.safe_load((rehearsal / "config.yaml").read_text())
        plan_config["search"]["num_trials"] = args.trials
        (rehearsal / "config.yaml").write_text(yaml.safe_dump(plan_config, sort_keys=False))

        # 3. The jobs: data, then the search, its driver killed once, re-submitted.
        data_line, search_line = blocks["jobs"]
        timed("data_job", lambda: sh(filled(data_line, places), timeout=1800))
        run = work / "shared" / "runs" / "paper"
        watch = Watch("entrypoints/search.py")
        placements: list[dict] = []

        def search_until_killed() -> int:
            log = (work / "search_first.log").open("w")
            job = subprocess.Popen(
                filled(search_line, places), cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT
            )
            from mergesearch.search.run_dir import RunDir

            deadline = time.monotonic() + 1200
            while time.monotonic() < deadline and job.poll() is None:
                if not placements:
                    found = actors_now(dashboard)
                    if sum(a["class"] == "Evaluator" for a in found) >= 1 and RunDir(run).trial_count() >= 1:
                        placements.extend(found)
                if RunDir(run).trial_count() >= 1:  # killed with trials done and others in flight
                    break
                time.sleep(0.5)
            if job.poll() is not None:
                raise SystemExit(
                    f"the search job ended before its driver was killed:\n{_tail(work / 'search_first.log')}"
                )
            killed = watch.kill()
            job.wait(timeout=120)
            return killed

        record["driver_processes_killed"] = timed("search_until_killed", search_until_killed)
        from mergesearch.search.run_dir import RunDir

        record["trials_before_kill"] = RunDir(run).trial_count()
        resumed = timed("search_resumed", lambda: sh(filled(search_line, places), timeout=1800))
        record["resumed_log_says_resuming"] = "resum" in resumed.stdout.lower()
        record["driver_peak_rss_mib"] = round(watch.stop() / 2**20, 1)
        trials = RunDir(run).trials()
        genomes = [json.dumps(t.genes, sort_keys=True) for t in trials]
        record["trials_run"] = len(trials)
        record["trials_unique"] = len(set(genomes))
        record["trial_ids_unique"] = len({t.trial_id for t in trials})

        # 4. Promotion re-submitted: what the search promoted is kept, not redone.
        (promote_line,) = blocks["promote"]
        promoted = timed("promote_job", lambda: sh(filled(promote_line, places), timeout=1800))
        record["search_promote_log"] = _promote_lines(resumed.stdout)
        record["promote_log"] = _promote_lines(promoted.stdout)
        leaderboard = json.loads((run / "promotion" / "leaderboard.json").read_text())
        record["promotions"] = _promotions([record["search_promote_log"], record["promote_log"]])
        record["leaderboard_rows"] = (
            len(leaderboard) if isinstance(leaderboard, list) else len(leaderboard.get("rows", []))
        )

        # 5. The results back, the report rebuilt there.
        for line in blocks["results"]:
            words = filled(line, places)
            if words[0] == "rsync" and shutil.which("rsync") is None:  # not on this project's machines
                record["copy_back"] = "rsync is not installed here: the run dir copied with shutil.copytree"
                source, target = Path(words[-2]), Path(words[-1])
                timed("results_copy", lambda s=source, t=target: shutil.copytree(s, t / s.name))
                continue
            if words[0] == "rsync":
                record["copy_back"] = "rsync, as the guide says"
            (work / "back").mkdir(exist_ok=True)
            timed(
                f"results_{words[0]}", lambda w=words: sh([shutil.which(w[0], path=str(BIN)) or w[0], *w[1:]])
            )
        record["report_back"] = (work / "back" / "paper" / "report.md").is_file()
        record["placements"] = _against_plan(placements, record["nodes"], plan_config)
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
    record["phases_s"] = phases
    record["work_dir"] = str(work)
    record = {**provenance(sys.argv), **record}
    args.out.write_text(json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in record.items() if k not in ("nodes", "placements")}, indent=1))
    print(f"-> {args.out}")


def _tail(path: Path) -> str:
    return path.read_text()[-3000:]


def _promote_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("promote:")]


def _promotions(logs: list[list[str]]) -> dict[str, int]:
    """How many times each candidate was promoted over the jobs' logs: each job lists its candidates
    (``promote: N candidate(s): a, b``) and names those it kept from before (``promote: a: promoted before
    with these settings, kept``); the rest it promoted."""
    counts: dict[str, int] = {}
    for lines in logs:
        listed = [line.split(": ", 2)[2].split(", ") for line in lines if "candidate(s):" in line]
        kept = {
            c
            for line in lines
            if line.endswith("promoted before with these settings, kept")
            for c in line.removeprefix("promote: ").split(":")[0].split(", ")
        }
        for candidate in (c for group in listed for c in group if c not in kept):
            counts[candidate] = counts.get(candidate, 0) + 1
    return counts


def _against_plan(actors: list[dict], nodes: dict[str, dict], config: dict) -> list[dict]:
    """Each live actor: its node, what it asked, and whether that is what the config's plan asks (an
    evaluator ``cpus_per_evaluator`` + ``gpus_per_evaluator``, the judge 1 CPU + ``gpus_per_judge``) on a
    worker that has it."""
    res = config["resources"]
    asks = {
        "Evaluator": {"CPU": res["cpus_per_evaluator"], "GPU": res["gpus_per_evaluator"]},
        "JudgeServer": {"CPU": 1.0, "GPU": res["gpus_per_judge"]},
    }
    rows = []
    for actor in actors:
        node = nodes.get(actor["node_id"], {})
        want = asks.get(actor["class"])
        got = {k: float(v) for k, v in actor["resources"].items()}
        rows.append(
            {
                **actor,
                "on_head": node.get("head"),
                "node_gpus": node.get("resources", {}).get("GPU"),
                "as_planned": None
                if want is None
                else all(got.get(k, 0.0) == v for k, v in want.items() if v),
            }
        )
    return rows


if __name__ == "__main__":
    main()
