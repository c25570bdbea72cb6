"""Benchmark: SIGKILL `mergesearch search` (the driver and its local Ray) at random moments, re-run it (JSON).

    .venv/bin/python benchmarks/kill_points.py --out benchmarks/results/kill_points.json [--kills 20]
    .venv/bin/python benchmarks/kill_points.py --out benchmarks/results/kill_points_multi_fidelity.json \
        --rounds 3 --trials 12 --phases trials

The command is the demo search as a user runs it (`mergesearch search CONFIG --run-dir DIR`): its data
spec generated into the run dir, a CMA search, promotion (a held-out evaluation through lm-eval), the
report. One evaluator and no queued proposal (`search.queued_per_evaluator: 0`), so that one trial is in
flight and an uninterrupted run's proposals are a fixed sequence for its seed; the pattern judge keeps
each run short (the guard judge's actor is killed and restarted the same way as the evaluators).

First an uninterrupted reference run, which also times the phases (start-up, data generation, search
start-up: Ray, Tune and the actors, trials, promotion, report writing) from the lines the command
prints. Then episodes, each in a fresh run dir: the command is started, killed at a random moment inside
one phase (uniform over the shortest time that phase has taken so far, after the line that opens it;
the phase it landed in is the last one opened before the kill), started again and killed in the next
phase (of those ``--phases`` names), and so on; the last start runs to the end. A kill that does not
land (the command finished first) is counted as tried, not landed, and the kills go on until --kills
have landed. Every episode
must end with exactly the budgeted trials, none repeated, the same genomes in the same order as the
reference (the searcher rebuilt, not restarted), each stopped at the same fidelity (with ``--rounds``
above 1, a multi-fidelity search: ASHA rebuilt from the ledger too), and promotion and the report
complete with the reference's winner.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mergesearch.io import atomic_write_text
from mergesearch.search.run_dir import RunDir

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "search_spaces" / "demo.yaml"

# (phase, the line that opens it); start-up opens at launch. Report writing opens with the last promoted
# candidate's line: the leaderboard, best/ and report.md follow it.
PHASES = (
    ("start-up", None),
    ("data generation", re.compile(r"^data: generating")),
    ("search start-up", re.compile(r"^search: \w+ over")),
    ("trials", re.compile(r"^\[trial 1/")),
    ("promotion", re.compile(r"^promote: \d+ candidate")),
    ("report writing", re.compile(r"^promote: .*held-out fitness")),
)


def write_config(folder: Path, trials: int, seed: int, rounds: int) -> Path:
    config = yaml.safe_load(DEMO.read_text())
    config["name"] = "killpoints"
    config["data"] |= {"spec": str(REPO / config["data"]["spec"]), "max_alignment_prompts": 30}
    config["data"]["max_task_prompts"] = 30
    config["judge"] = {"kind": "refusal"}
    config["search"] = {
        "name": "cma",
        "num_trials": trials,
        "seed": seed,
        "warm_starts": ["uniform"],
        "queued_per_evaluator": 0,
        "multi_fidelity": {"rounds": rounds, "reduction_factor": 3, "grace_rounds": 1},
    }
    config["promotion"] = {"top_k": 1}
    path = folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def command(config: Path, run: Path) -> list[str]:
    args = ["search", str(config), "--run-dir", str(run), "--no-baseline"]
    return [sys.executable, "-m", "mergesearch.cli", *args]


def env() -> dict[str, str]:
    """A local search: no RAY_ADDRESS inherited; the venv's `ray` on PATH for Ray's own processes."""
    out = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out["PATH"] = f"{Path(sys.executable).parent}:{out.get('PATH', '')}"
    return out


@dataclass
class Session:
    """One start of the command: its output lines with their times, and how it ended."""

    lines: list[tuple[float, str]] = field(default_factory=list)
    started: float = 0.0
    returncode: int | None = None

    def opened(self, marker: re.Pattern | None) -> float | None:
        if marker is None:
            return self.started
        return next((t for t, line in self.lines if marker.search(line)), None)


def start(cmd: list[str], log: Path) -> tuple[subprocess.Popen, Session]:
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the driver and the Ray it starts
    )
    session = Session(started=time.time())

    def read() -> None:
        with log.open("a") as out:
            for line in proc.stdout:
                session.lines.append((time.time(), line.rstrip("\n")))
                out.write(line)
                out.flush()

    threading.Thread(target=read, daemon=True).start()
    return proc, session


def finish(proc: subprocess.Popen, session: Session, timeout: float) -> Session:
    session.returncode = proc.wait(timeout=timeout)
    time.sleep(0.2)  # the reader drains the pipe
    return session


def reference(config: Path, work: Path, timeout: float) -> tuple[Session, dict[str, float]]:
    run = work / "reference"
    proc, session = start(command(config, run), work / "reference.log")
    finish(proc, session, timeout)
    if session.returncode != 0:
        raise SystemExit(f"the reference run failed (rc {session.returncode}); see {work / 'reference.log'}")
    lengths = {name: float("inf") for name, _ in PHASES}
    shorten(lengths, session, until_exit=True)
    return session, lengths


def shorten(lengths: dict[str, float], session: Session, until_exit: bool = False) -> None:
    """Each phase's length: the shortest seen so far. A kill is drawn inside it, so a phase that runs
    faster than in the reference (a less busy machine) still gets killed, not outrun."""
    opened = [session.opened(marker) for _, marker in PHASES]
    ends = [*opened[1:], session.lines[-1][0] if until_exit and session.lines else None]
    for (name, _), begin, end in zip(PHASES, opened, ends):
        if begin is not None and end is not None and end >= begin:
            lengths[name] = round(min(lengths[name], end - begin), 2)


def kill_in(
    cmd: list[str], phase: int, lengths: dict[str, float], rng: random.Random, log: Path, timeout: float
) -> dict:
    """Start the command, wait for ``phase`` to open, kill it a random part of the phase's length later."""
    name, marker = PHASES[phase]
    delay = rng.uniform(0, lengths[name])
    proc, session = start(cmd, log)
    deadline = time.time() + timeout
    while (opened := session.opened(marker)) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    killed = False
    if opened is not None:
        while time.time() < opened + delay and proc.poll() is None:
            time.sleep(0.01)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
    elif proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    finish(proc, session, 120)
    shorten(lengths, session, until_exit=not killed)
    seen = [i for i, (_, m) in enumerate(PHASES) if session.opened(m) is not None]
    return {
        "phase": name,
        "landed_in": PHASES[max(seen)][0] if killed else None,  # the last phase opened before the kill
        "delay_s": round(delay, 2),
        "killed": killed,
        "returncode": session.returncode,
        "last_line": session.lines[-1][1][:160] if session.lines else "",
    }


def check(run: Path, reference_run: Path, trials: int) -> dict:
    """What a recovered run must hold, against the uninterrupted reference."""
    ours, theirs = RunDir(run), RunDir(reference_run)
    ledger, expected = ours.trials(), theirs.trials()
    board, expected_board = ours.leaderboard() or [], theirs.leaderboard() or []
    genomes = [json.dumps(t.genes, sort_keys=True) for t in ledger]
    ids = {t.trial_id for t in ledger}
    return {
        "trials": len(ledger),
        "exact_budget": len(ledger) == trials,
        "none_repeated": len(set(genomes)) == len(genomes) == len(ids),
        "same_proposals": [t.genes for t in ledger] == [t.genes for t in expected],
        "same_fidelities": [t.fidelity for t in ledger] == [t.fidelity for t in expected],
        "first_differing_trial": next(
            (i for i, (a, b) in enumerate(zip(ledger, expected)) if a.genes != b.genes), None
        ),
        "promotion_complete": bool(board) and (ours.best / "model" / "config.json").is_file(),
        "same_winner": bool(board) and board[0]["genes"] == expected_board[0]["genes"],
        "report_complete": ours.report_file.is_file() and ours.pareto_file.is_file(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--kills", type=int, default=20, help="kills that land, one phase after another")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="multi-fidelity rounds (1: full fidelity)")
    names = [name for name, _ in PHASES]
    parser.add_argument("--phases", nargs="+", choices=names, default=names, help="where kills land")
    parser.add_argument("--seed", type=int, default=0, help="draws the kill moments (the search's is 0)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_kill_points"))
    parser.add_argument("--timeout", type=float, default=900, help="seconds one start may take")
    args = parser.parse_args()
    work = args.work.resolve()
    if work.exists():  # this benchmark's own scratch folder, from an earlier run
        shutil.rmtree(work)
    config = write_config(work, args.trials, seed=0, rounds=args.rounds)
    rng = random.Random(args.seed)

    began = time.time()
    session, lengths = reference(config, work, args.timeout)
    reference_lengths = dict(lengths)
    reference_s = round(session.lines[-1][0] - session.started, 1)
    print(f"reference: {reference_s}s; phases {lengths}", file=sys.stderr)

    # Episodes: kill phase after phase in one run dir, then let it finish and check it. A kill that did not
    # land (the command finished first) ends its episode; the next episode goes on from the next phase.
    phases = [i for i, name in enumerate(names) if name in args.phases]
    episodes, landed, at, number = [], 0, 0, 0
    while landed < args.kills:
        run = work / f"episode-{number}"
        log = work / f"episode-{number}.log"
        cmd = command(config, run)
        kills = []
        while landed < args.kills:
            kills.append(kill_in(cmd, phases[at], lengths, rng, log, args.timeout))
            print(f"episode {number}: {kills[-1]}", file=sys.stderr)
            at = (at + 1) % len(phases)
            landed += kills[-1]["killed"]
            if not kills[-1]["killed"] or at == 0:
                break
        started = time.time()
        proc, last = start(cmd, log)
        finish(proc, last, args.timeout)
        outcome = check(run, work / "reference", args.trials)
        outcome |= {"final_returncode": last.returncode, "final_run_s": round(time.time() - started, 1)}
        print(f"episode {number}: {outcome}", file=sys.stderr)
        episodes.append({"episode": number, "kills": kills, "outcome": outcome})
        number += 1

    kills = [k for e in episodes for k in e["kills"]]
    recovered = [e for e in episodes if e["outcome"]["final_returncode"] == 0 and _all_true(e["outcome"])]
    summary = {
        "kills_tried": len(kills),
        "kills_landed": sum(k["killed"] for k in kills),
        "landed_by_phase": {name: sum(k["landed_in"] == name for k in kills) for name, _ in PHASES},
        "episodes": len(episodes),
        "episodes_recovered": len(recovered),
        "proposals_identical": sum(e["outcome"]["same_proposals"] for e in episodes),
        "fidelities_identical": sum(e["outcome"]["same_fidelities"] for e in episodes),
    }
    result = {
        "benchmark": "kill_points",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "config": yaml.safe_load(config.read_text()),
        "reference_s": reference_s,
        "phase_lengths_s": {"reference": reference_lengths, "shortest_seen": lengths},
        "summary": summary,
        "episodes": episodes,
        "wall_s": round(time.time() - began, 1),
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


RECOVERED = (
    "exact_budget",
    "none_repeated",
    "same_proposals",
    "same_fidelities",
    "promotion_complete",
    "same_winner",
    "report_complete",
)


def _all_true(outcome: dict) -> bool:
    return all(outcome[k] for k in RECOVERED)


if __name__ == "__main__":
    main()
