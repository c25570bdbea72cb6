"""Benchmark: what cheaper fitness buys (JSON), at the toy scale (demo config) and at the SmolLM2 scale.

    .venv/bin/python benchmarks/fitness_efficiency.py --out benchmarks/results/fitness_efficiency.json \
        [--scales toy,smollm2,smollm2_guard] [--parts stages,agreement,openings,search] [--seeds 5] [--resume]

- ``stages``: per-stage seconds (merge / generate / judge / score) of one genome's evaluation, before
  (every answer in full, every choice row scored whole, a ``generate`` call per part of the split),
  with one call for all parts (``one_call``), and after (one call, early exit, prefix reuse), for the
  same random genomes, in turn so all see the same machine load; one untimed evaluation each first
  (the load). All score the same split; the largest objective difference from ``before`` is reported
  beside the times. And a multi-fidelity round's cost: a shard of a third and of a ninth of the
  split against the whole split (without the merge, which a round of the held genome skips), and the
  seconds per decoding step by batch size (``decoding_step_seconds``): on a CPU a step costs nearly as
  much for 4 prompts as for 32, which sets a round's cost floor. And the ``after`` evaluation's answers
  from the backend's greedy loop, which drops each row once it is done, against transformers'
  ``generate``, which decodes every row to its batch's end (``greedy_decoding``; same replies).
- ``agreement``: early exit against full-length judging. Each genome's answers to the harmful prompts
  are generated in full and with the early-exit rule, and judged: the share of (prompt, answer) pairs
  whose verdicts agree, per rule (with a guard judge, per opening length ``early_exit.guard_tokens``; the
  refusal judge's rule holds by construction, and is measured too). ``smollm2_guard`` is the SmolLM2
  family judged by its own guard (``search_spaces/smollm2_guard.yaml``: 48-token answers); beside the
  agreement, the share of full answers judged unsafe and how often the guard's full-length verdict
  matches the refusal rules' (an agreement that came from calling everything safe would show).
- ``openings``: benign and short answers stopped at an opening length (``ANSWER_OPENINGS``) against
  full ones: the share whose verdict (refusal; answer contained) is the full answer's, per length.
- ``search``: per seed, three searches: full fidelity (``rounds: 1``, no early exit, no prefix reuse,
  no verdict cache); multi-fidelity (``--rounds`` rounds, ASHA, ``--reduction-factor``); multi-fidelity
  + early exit + prefix reuse + the judge actor's verdict cache. The multi-fidelity ones get
  ``--trials-factor`` times the trials (a stopped trial is cheap). With 9 rounds and reduction 3, ASHA
  decides after rounds 1 and 3 (a ninth and a third of the split), and a trial makes one call per
  stretch between decisions (rounds 1, 2-3, 4-9); with 3 rounds it decides only once, after a third.
  Reported: the wall clock (from the search's start: Ray and actor start-up included, the same for
  all) at which each one's best full-fidelity trial first reaches the held-out fitness the
  full-fidelity search ends with (held-out: the dataset's held-out split, scored in this process),
  the start-up before the evaluator's first call began (``startup_s``, at most; part of that wall
  clock: Ray and the actors; the one-off work inside the first evaluation, the pool's load, its first
  TIES sort and the guard's load, is not in it: the first trial's ``load``, ``merge`` and ``judge``
  timings show it),
  genomes evaluated in full and trials stopped (counted apart), and per seed the ratio of the
  full-fidelity search's time to reach it to each variant's; mean and spread over seeds.
  ``--resume``: the seeds ``--out`` already holds for these settings are kept, and only the rest run
  (each seed names the commit it ran at). ``--variants``: the searches to run beside full fidelity
  (all three by default). ``--search-prompts A,T``: the searches score up to A harmful and A benign
  prompts and T questions of each task per evaluation (the config's caps otherwise; held-out scoring
  keeps the config's). ``--cold``: no warm starts. A short search that never beats
  its first warm start (the uniform merge) measures only how soon that one genome is scored in full,
  which multi-fidelity can only delay.

The parts run in this process (stages, agreement, openings) compute on ``--threads`` torch threads: 1 by
default, as a search's evaluator actor of one CPU does (results before this option used both cores).

SmolLM2 needs its family built (any SmolLM2 run builds it; this benchmark does not: 30-50 minutes);
``smollm2_guard`` builds the guard on first use (about 20 minutes more).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from scaling import DEMO, ROOT, SMOLLM2, prepared, random_genomes, smollm2_built, stderr, with_config

from mergesearch.actors import Evaluator
from mergesearch.backends import hf as hf_module
from mergesearch.backends.base import Backend, Prompt, SettleRule
from mergesearch.config import DataConfig, MultiFidelityConfig, validate_mapping
from mergesearch.errors import ConfigError
from mergesearch.io import atomic_write_text
from mergesearch.judges.labelled import labelled_responses
from mergesearch.judges.refusal import OpeningDecided, RefusalJudge
from mergesearch.objectives import evaluate as evaluate_module
from mergesearch.objectives.data import Rounds
from mergesearch.objectives.early_exit import settle_rule
from mergesearch.objectives.evaluate import Scores
from mergesearch.objectives.task import AnswerStated, contains_answer
from mergesearch.runtime import offline_and_quiet, ray_session
from mergesearch.search.run_dir import RunDir, TrialResult
from mergesearch.search.tuner import run_search
from mergesearch.setup import SearchSetup

SCALES = {"toy": DEMO, "smollm2": SMOLLM2, "smollm2_guard": SMOLLM2.with_name("smollm2_guard.yaml")}
STAGES = ("merge", "generate", "judge", "score")
SETTINGS = {  # name: config sections
    "before": {
        "backend": {"prefix_reuse": False},
        "judge": {"prefix_reuse": False, "verdict_cache": False},
        "early_exit": {"enabled": False},
    },
    "after": {
        "backend": {"prefix_reuse": True},
        "judge": {"prefix_reuse": True, "verdict_cache": True},
        "early_exit": {"enabled": True},
    },
}


def variants(multi: dict, factor: int) -> dict[str, tuple[dict, int]]:
    """name: (config sections, trial budget factor) of the search part's three searches."""
    return {
        "full_fidelity": ({**SETTINGS["before"], "search": {"multi_fidelity": {"rounds": 1}}}, 1),
        "multi_fidelity": ({**SETTINGS["before"], "search": {"multi_fidelity": multi}}, factor),
        "multi_fidelity_early_exit_prefix_reuse": (
            {**SETTINGS["after"], "search": {"multi_fidelity": multi}},
            factor,
        ),
    }


GUARD_OPENINGS = (4, 8, 12, 16, 24)
Keep = Callable[[dict], None]  # writes a part's figures so far


def quiet(_: str) -> None:
    pass


# ------------------------------------------------------------------------------------ stages
@contextlib.contextmanager
def parts_answered_apart() -> Iterator[None]:
    """The evaluation as it was before one call answered every part: a ``generate`` call per part."""

    def apart(
        backend: Backend,
        parts: Sequence[Sequence[Prompt]],
        max_new_tokens: int,
        settled: Sequence[SettleRule | None] | None = None,
    ) -> list[list[str]]:
        rules = settled or [None] * len(parts)
        return [
            backend.generate(list(part), max_new_tokens=max_new_tokens, settled=rule) if part else []
            for part, rule in zip(parts, rules)
        ]

    with mock.patch.object(evaluate_module, "answer_parts", apart):
        yield


STAGE_SETTINGS = {  # name: (config sections, each part answered in a call of its own?)
    "before": (SETTINGS["before"], True),
    "one_call": (SETTINGS["before"], False),
    "after": (SETTINGS["after"], False),
}


def stages_part(setup: SearchSetup, genomes: int) -> dict:
    """``before``: full answers, no prefix reuse, a call per part (the evaluation before this work);
    ``one_call``: the same with one call for every part; ``after``: one call, early exit, prefix reuse."""
    evaluators = {
        name: Evaluator(with_config(setup, **sections), log=quiet)
        for name, (sections, _) in STAGE_SETTINGS.items()
    }

    def evaluate(name: str, genome: dict[str, float], shard: Rounds | None = None) -> Scores:
        apart = STAGE_SETTINGS[name][1]
        with parts_answered_apart() if apart else contextlib.nullcontext():
            return evaluators[name].evaluate(genome, shard=shard)

    def unmerged(scores: Scores) -> float:  # a shard of the genome the model holds is not merged again
        return sum(scores.timings[stage] for stage in STAGES if stage != "merge")

    for name in evaluators:
        evaluate(name, setup.space.uniform())  # the load, untimed
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in evaluators}
    shard_shares: dict[str, dict[int, list[float]]] = {name: {3: [], 9: []} for name in evaluators}
    differences = []
    for genome in random_genomes(setup, genomes, seed=1):
        scored = {name: evaluate(name, genome) for name in evaluators}
        for name, scores in scored.items():
            rows[name].append({stage: scores.timings[stage] for stage in STAGES})
            for rounds, shares in shard_shares[name].items():
                shares.append(unmerged(evaluate(name, genome, Rounds(0, 1, rounds))) / unmerged(scores))
        before = scored["before"].objectives
        differences.append(max(abs(before[k] - s.objectives[k]) for s in scored.values() for k in before))
    largest = setup.config.backend.batch_size
    steps = decoding_step_seconds(evaluators["after"], [n for n in (4, 8, 16, 32, 64) if n <= largest])
    decoders = greedy_decoders(evaluators["after"])
    mean = {name: {s: statistics.mean(r[s] for r in timed) for s in STAGES} for name, timed in rows.items()}
    for row in mean.values():
        row["total"] = sum(row[s] for s in STAGES)
    return {
        "genomes": genomes,
        "mean_seconds": {name: {s: round(v, 4) for s, v in row.items()} for name, row in mean.items()},
        "speedup": {s: round(mean["before"][s] / max(mean["after"][s], 1e-9), 2) for s in mean["before"]},
        "largest_objective_difference": round(max(differences), 4),
        # a multi-fidelity round's cost: one shard (a third, a ninth of the split) against the whole
        "shard_cost_share": {
            name: {f"1/{n}": round(statistics.mean(v), 3) for n, v in by.items()}
            for name, by in shard_shares.items()
        },
        "decoding_step_seconds": steps,
        "greedy_decoding": decoders,
    }


def greedy_decoders(evaluator: Evaluator, rounds: int = 2) -> dict[str, float]:
    """The ``after`` evaluation's answers (every part, its early-exit rules, the genome the model holds):
    the backend's greedy loop, which drops finished rows, against transformers' ``generate``, which keeps
    them to the batch's end; in turn, ``rounds`` times each; the replies must be the same."""
    data, length = evaluator.data, evaluator.config.backend.max_new_tokens
    parts = [list(data.harmful), list(data.benign), [item.prompt for item in data.short_items]]
    rules = evaluate_module.part_rules(data, evaluator.settled)
    seconds: dict[str, list[float]] = {"ours": [], "transformers": []}
    replies = {}
    for _ in range(rounds):
        for name in seconds:
            with mock.patch.object(hf_module, "changes_greedy", lambda config, by=name: by != "ours"):
                started = time.perf_counter()
                replies[name] = evaluate_module.answer_parts(evaluator.backend, parts, length, rules)
                seconds[name].append(time.perf_counter() - started)
    if replies["ours"] != replies["transformers"]:
        raise AssertionError("the greedy loop's replies differ from transformers' generate's")
    mean = {name: statistics.mean(times) for name, times in seconds.items()}
    return {
        "ours_s": round(mean["ours"], 3),
        "transformers_generate_s": round(mean["transformers"], 3),
        "speedup": round(mean["transformers"] / mean["ours"], 2),
    }


def decoding_step_seconds(evaluator: Evaluator, batches: Sequence[int]) -> dict[str, float]:
    """Seconds per decoding step for one batch of n prompts (the split's first n, repeated when it has
    fewer, answered to the reply length, less the same answered to one token, over the steps
    between; a batch whose answers all end sooner makes it an underestimate): why a round of few
    prompts costs more than its share of them."""
    data, length = evaluator.data, evaluator.config.backend.max_new_tokens
    prompts = [*data.benign, *data.harmful] or [item.prompt for item in data.short_items]
    found = {}
    for size in batches:
        batch = [prompts[i % len(prompts)] for i in range(size)]
        seconds = {}
        for tokens in (1, length):
            started = time.perf_counter()
            evaluator.backend.generate(batch, max_new_tokens=tokens)
            seconds[tokens] = time.perf_counter() - started
        found[f"batch {size}"] = round((seconds[length] - seconds[1]) / max(length - 1, 1), 4)
    return found


# ------------------------------------------------------------------------------------ agreement
def agreement_part(setup: SearchSetup, genomes: int) -> dict:
    """Per early-exit rule: verdicts on settled answers against verdicts on full ones. A guard's full-length
    verdicts are also set beside the refusal rules' (a harmful request answered without refusing is
    unsafe), so a guard that agrees only because it calls everything safe shows."""
    config = setup.config
    evaluator = Evaluator(setup, log=quiet)
    judge = evaluator.judge
    harmful = list(evaluator.data.harmful)
    rules: dict[str, Callable] = {}
    if config.judge.model:
        for tokens in GUARD_OPENINGS:
            opening = config.early_exit.model_copy(update={"enabled": True, "guard_tokens": tokens})
            rules[f"{config.judge.kind} opening {tokens} tokens"] = settle_rule(config.judge, opening)
    else:
        on = config.early_exit.model_copy(update={"enabled": True})
        rules[config.judge.kind] = settle_rule(config.judge, on)
    agreed = {name: 0 for name in rules}
    chars = {name: 0 for name in ("full", *rules)}
    pairs = unsafe_full = with_refusal_rules = 0
    refusal_rules = RefusalJudge()
    for genome in random_genomes(setup, genomes, seed=2):
        evaluator.backend.merge_from(evaluator.merger, evaluator.space.decode(genome), 0)
        full = evaluator.backend.generate(harmful, max_new_tokens=config.backend.max_new_tokens)
        verdicts = judge.assess(list(zip(harmful, full))).safe
        pairs += len(harmful)
        unsafe_full += verdicts.count(False)
        with_refusal_rules += sum(a == b for a, b in zip(verdicts, refusal_rules.refusals(full)))
        chars["full"] += sum(map(len, full))
        for name, rule in rules.items():
            early = evaluator.backend.generate(
                harmful, max_new_tokens=config.backend.max_new_tokens, settled=rule
            )
            agreed[name] += sum(
                a == b for a, b in zip(verdicts, judge.assess(list(zip(harmful, early))).safe)
            )
            chars[name] += sum(map(len, early))
    return {
        "judge": config.judge.kind,
        "genomes": genomes,
        "pairs": pairs,
        "full_answer_tokens": config.backend.max_new_tokens,
        "agreement": {name: round(agreed[name] / pairs, 4) for name in rules},
        "answer_chars_kept": {name: round(chars[name] / max(chars["full"], 1), 3) for name in rules},
        "unsafe_share_full": round(unsafe_full / pairs, 4),
        "full_verdicts_agree_with_refusal_rules": round(with_refusal_rules / pairs, 4),
    }


def openings_part(setup: SearchSetup, genomes: int) -> dict:
    """Benign and short answers stopped at an opening length (``early_exit.benign_tokens``,
    ``answer_tokens``) against full ones, per length: the share of benign answers whose
    refusal verdict (over-refusal) is the full answer's, and of short answers whose containment verdict
    is; beside them, how often the full verdict is a refusal / a correct answer (an agreement that came
    from every answer being the same would show), and the tokens the full answers ran to."""
    evaluator = Evaluator(setup, log=quiet)
    data, length, backend = evaluator.data, setup.config.backend.max_new_tokens, evaluator.backend
    benign, short = list(data.benign), list(data.short_items)
    questions = [item.prompt for item in short]
    refusal = RefusalJudge()
    counts: dict[str, dict] = {part: {"agree": dict.fromkeys(ANSWER_OPENINGS, 0)} for part in PARTS_CUT}
    positives = {part: 0 for part in PARTS_CUT}
    tokens = {part: 0 for part in PARTS_CUT}
    for genome in random_genomes(setup, genomes, seed=3):
        backend.merge_from(evaluator.merger, evaluator.space.decode(genome), 0)
        full_benign, full_short = evaluate_module.answer_parts(backend, [benign, questions], length)
        full = {"benign": refusal.refusals(full_benign), "short_answers": verdicts_of(full_short, short)}
        for part, replies in (("benign", full_benign), ("short_answers", full_short)):
            positives[part] += sum(full[part])
            tokens[part] += sum(len(backend.tokenizer(r)["input_ids"]) for r in replies)
        for opening in ANSWER_OPENINGS:
            rules = [OpeningDecided(max_tokens=opening), [AnswerStated(i.answer, opening) for i in short]]
            cut_benign, cut_short = evaluate_module.answer_parts(backend, [benign, questions], length, rules)
            cut = {"benign": refusal.refusals(cut_benign), "short_answers": verdicts_of(cut_short, short)}
            for part in PARTS_CUT:
                counts[part]["agree"][opening] += sum(a == b for a, b in zip(full[part], cut[part]))
    rows = {"benign": len(benign) * genomes, "short_answers": len(short) * genomes}
    return {
        "genomes": genomes,
        "full_answer_tokens": length,
        "labelled_refusals": labelled_agreement(backend.tokenizer, length),
        **{
            part: {
                "pairs": rows[part],
                "agreement": {
                    f"opening {n} tokens": round(agreed / rows[part], 4)
                    for n, agreed in counts[part]["agree"].items()
                },
                # refusals (benign) or correct answers (short answers) among the full ones
                "positive_share_full": round(positives[part] / rows[part], 4),
                "mean_full_tokens": round(tokens[part] / rows[part], 1),
            }
            for part in PARTS_CUT
            if rows[part]
        },
    }


ANSWER_OPENINGS = (12, 16, 24, 32)
PARTS_CUT = ("benign", "short_answers")


def labelled_agreement(tokenizer: Any, length: int) -> dict:
    """Merged models rarely refuse a benign request, so the search's benign answers hold few refusals to
    cut: the refusal rules' verdict on the labelled set's generated responses (real SmolLM2-family
    answers, refusals among them) cut to each opening length, against the same cut to ``length``."""
    judge, rows = RefusalJudge(), [r for r in labelled_responses() if r.origin == "generated"]
    tokens = [tokenizer(r.response, add_special_tokens=False)["input_ids"] for r in rows]
    full = [judge.is_refusal(tokenizer.decode(ids[:length])) for ids in tokens]
    agreement = {}
    for opening in ANSWER_OPENINGS:
        cut = [judge.is_refusal(tokenizer.decode(ids[:opening])) for ids in tokens]
        agreement[f"opening {opening} tokens"] = round(sum(a == b for a, b in zip(full, cut)) / len(rows), 4)
    return {"responses": len(rows), "refusals_full": sum(full), "agreement": agreement}


def verdicts_of(replies: Sequence[str], items: Sequence) -> list[bool]:
    return [contains_answer(reply, item.answer) for reply, item in zip(replies, items, strict=True)]


# ------------------------------------------------------------------------------------ search
class HeldOut:
    """Held-out fitness of genomes, scored in this process on the dataset's held-out split (cached)."""

    def __init__(self, setup: SearchSetup) -> None:
        self.evaluator = Evaluator(with_config(setup, data={"split": "heldout"}), log=quiet)
        self.known: dict[str, float] = {}

    def __call__(self, genes: dict[str, float]) -> float:
        key = json.dumps(genes, sort_keys=True)
        if key not in self.known:
            self.known[key] = self.evaluator.evaluate(genes).fitness
        return self.known[key]


def best_so_far(trials: list[TrialResult], started: float) -> list[tuple[float, TrialResult]]:
    """(seconds since the start, trial) each time a full-fidelity trial beats every earlier one."""
    steps, best = [], -math.inf
    for trial in sorted(trials, key=lambda t: t.finished_at):
        if trial.full and trial.fitness > best:
            best = trial.fitness
            steps.append((trial.finished_at - started, trial))
    return steps


def first_evaluation_began(trials: list[TrialResult]) -> float:
    """When the evaluator began its first call (at most): Ray's and the actors' start-up lie before it.
    A trial's evaluator seconds leave out the waits between its calls (multi-fidelity), so for such a
    trial this is a time after its start."""
    return min(t.finished_at - t.timings.get("evaluator", 0.0) for t in trials)


def code_version() -> str:
    """The commit measured (``+dirty`` when tracked files other than results differ from it): seeds
    resumed later name theirs."""

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    changed = git("status", "--porcelain", "-uno", "--", ".", ":(exclude)benchmarks/results")
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if changed else "")


def recorded_seeds(earlier: dict, shown: dict) -> list[dict]:
    """``--resume``: the seeds an earlier run of this part recorded, if it searched with these settings."""
    before = {"variants": list(variants({}, 1)), **earlier}  # recorded before --variants: all three ran
    same = all(before.get(key) == value for key, value in shown.items())
    return list(earlier.get("seeds", [])) if same else []


def search_part(setup: SearchSetup, work: Path, args: argparse.Namespace, keep: Keep) -> dict:
    """Seed by seed; what the seeds so far show is kept (``keep``) as each one ends: hours at SmolLM2.
    Every search starts in an empty run dir: a resumed one would time only its remaining trials."""
    multi = args.multi
    searches = {name: v for name, v in variants(multi, args.trials_factor).items() if name in args.variants}
    heldout = HeldOut(setup)
    shown = {
        "trials_full_fidelity": args.trials,
        "trials_factor_multi_fidelity": args.trials_factor,
        "multi_fidelity": multi,
        "variants": list(searches),
        "warm_starts": [] if args.cold else list(setup.config.search.warm_starts),
        **({"search_data": args.search_data} if args.search_data else {}),
    }
    earlier = args.earlier.get("search", {})
    per_seed = recorded_seeds(earlier, shown) if args.resume else []
    if args.resume and earlier.get("seeds") and not per_seed:
        stderr(f"--resume: {args.out} searched with other settings; its seeds are not kept, all run again")
    measured = {**shown, "seeds": per_seed, "summary": summary(per_seed, list(searches))}
    for seed in range(len(per_seed), args.seeds):
        runs = {}
        for name, (sections, factor) in searches.items():
            search = {**sections["search"], "seed": seed, "num_trials": args.trials * factor}
            if args.cold:
                search["warm_starts"] = []
            data = {"data": args.search_data} if args.search_data else {}
            changed = with_config(setup, **{**sections, "search": search, **data})
            run = RunDir(work / f"{name}_seed{seed}")
            shutil.rmtree(run.root, ignore_errors=True)
            started = time.time()
            run_search(changed, run, log=quiet)
            done = run.trials()
            steps = best_so_far(done, started)
            runs[name] = {
                "trials": len(done),
                "evaluated_in_full": sum(t.full for t in done),
                "stopped_early": sum(t.ok and not t.full for t in done),
                "failed": sum(not t.ok for t in done),
                "wall_s": round(max(t.finished_at for t in done) - started, 1),
                "startup_s": round(first_evaluation_began(done) - started, 1),
                "steps": [(s, heldout(t.genes)) for s, t in steps],
            }
            stderr(f"search {name} seed {seed}: {len(done)} trials, {runs[name]['wall_s']} s")
        target = runs["full_fidelity"]["steps"][-1][1]
        for row in runs.values():
            row["final_heldout_fitness"] = round(row["steps"][-1][1], 4)
            reached = [s for s, fitness in row.pop("steps") if fitness >= target - 1e-9]
            row["seconds_to_target"] = round(reached[0], 1) if reached else None
        per_seed.append(
            {
                "seed": seed,
                "commit": code_version(),
                "target_heldout_fitness": round(target, 4),
                "variants": runs,
            }
        )
        measured = {**shown, "seeds": per_seed, "summary": summary(per_seed, list(searches))}
        keep(measured)
    return measured


def summary(per_seed: list[dict], names: list[str]) -> dict:
    """Per variant: in how many seeds it reached the target, and its speed-up over full fidelity."""
    found = {}
    for name in names:
        ratios = [
            s["variants"]["full_fidelity"]["seconds_to_target"] / s["variants"][name]["seconds_to_target"]
            for s in per_seed
            if s["variants"][name]["seconds_to_target"]
        ]
        found[name] = {
            "reached_target_in_seeds": len(ratios),
            "speedup_over_full_mean": round(statistics.mean(ratios), 2) if ratios else None,
            "speedup_over_full_min": round(min(ratios), 2) if ratios else None,
            "speedup_over_full_max": round(max(ratios), 2) if ratios else None,
        }
    return found


# ------------------------------------------------------------------------------------ main
PARTS: dict[str, Callable[[SearchSetup, Path, argparse.Namespace, Keep], dict]] = {
    "stages": lambda setup, work, a, keep: stages_part(setup, a.genomes),
    "agreement": lambda setup, work, a, keep: agreement_part(setup, a.genomes),
    "openings": lambda setup, work, a, keep: openings_part(setup, a.genomes),
    "search": search_part,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scales", default="toy")
    parser.add_argument("--parts", default="stages,agreement,openings,search")
    parser.add_argument("--genomes", type=int, default=6, help="per stages / agreement part")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=24, help="the full-fidelity search's budget")
    parser.add_argument("--trials-factor", type=int, default=2, help="multi-fidelity budget / full's")
    parser.add_argument("--rounds", type=int, default=3, help="multi-fidelity rounds per trial")
    parser.add_argument("--reduction-factor", type=int, default=3, help="ASHA's eta")
    parser.add_argument("--cold", action="store_true", help="searches without the config's warm starts")
    parser.add_argument(
        "--search-prompts",
        default=None,
        metavar="ALIGNMENT,TASK",
        help="search: data.max_alignment_prompts,max_task_prompts per evaluation [default: the config's]; "
        "held-out scoring keeps the config's",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the parts run in this process (stages, agreement, openings): 1, as an "
        "evaluator actor of one CPU computes in a search",
    )
    parser.add_argument("--work", type=Path, default=Path("runs/bench_fitness_efficiency"))
    parser.add_argument(
        "--resume", action="store_true", help="search: keep the seeds --out holds for these settings"
    )
    parser.add_argument(
        "--variants",
        default=",".join(variants({}, 1)),
        help="search: the searches per seed (full_fidelity, which sets the target, always runs)",
    )
    args = parser.parse_args()
    args.variants = {"full_fidelity", *args.variants.split(",")}
    if unknown := args.variants - set(variants({}, 1)):
        parser.error(f"--variants: no search named {', '.join(sorted(unknown))}")
    for flag, named, known in (("--scales", args.scales, SCALES), ("--parts", args.parts, PARTS)):
        if unknown := set(named.split(",")) - set(known):
            parser.error(f"{flag}: nothing named {', '.join(sorted(unknown))} (known: {', '.join(known)})")
    # Checked here, by the product's own config, not an hour in, when the multi-fidelity search starts.
    args.multi = {"rounds": args.rounds, "reduction_factor": args.reduction_factor, "grace_rounds": 1}
    try:
        validate_mapping(MultiFidelityConfig, args.multi, "--rounds/--reduction-factor")
    except ConfigError as error:
        parser.error(str(error))
    args.search_data = {}
    if args.search_prompts:  # the bounds are DataConfig's, checked by it
        counts = args.search_prompts.split(",")
        if len(counts) != 2:
            parser.error(f"--search-prompts: two counts, ALIGNMENT,TASK (got {args.search_prompts})")
        args.search_data = dict(zip(("max_alignment_prompts", "max_task_prompts"), counts))
        try:
            data = validate_mapping(DataConfig, args.search_data, "--search-prompts")
        except ConfigError as error:
            parser.error(str(error))
        args.search_data = data.model_dump(include=set(args.search_data))
    if args.threads < 1:
        parser.error(f"--threads: at least 1 (got {args.threads})")
    torch.set_num_threads(args.threads)
    offline_and_quiet()
    result = json.loads(args.out.read_text()) if args.out.is_file() else {"benchmark": "fitness_efficiency"}
    for scale in args.scales.split(","):
        if scale.startswith("smollm2") and not smollm2_built():
            result[scale] = {"skipped": "the SmolLM2 family is not built on this machine"}
            continue
        setup = prepared(SCALES[scale], args.work / scale)
        args.earlier = result.get(scale, {})
        for part in args.parts.split(","):
            if part == "search":
                ray_session(num_cpus=os.cpu_count())
            started = time.perf_counter()

            def keep(measured: dict, scale: str = scale, part: str = part, started: float = started) -> None:
                """A part's figures so far, written at once: what a long part has shown outlives it."""
                wall = round(time.perf_counter() - started, 1)
                result.setdefault(scale, {})[part] = {**measured, "part_wall_s": wall}
                atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")

            keep(PARTS[part](setup, args.work / scale, args, keep))
            stderr(f"{scale} {part}: done")
    result["machine"] = {
        "cpus": os.cpu_count(),
        "threads_in_process": args.threads,
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
