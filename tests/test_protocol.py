"""`mergesearch reproduce`: the paper's table as resumable cells (issue 11, item 4), on the toy zoo."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from cli_helpers import assert_one_line_error, run
from demo_configs import DEMO

import mergesearch
from mergesearch.config import SearchConfig, load_config
from mergesearch.data.dataset import write_rows
from mergesearch.data.schema import read_rows
from mergesearch.objectives.fitness import fitness
from mergesearch.protocol.config import GridRows, ProtocolConfig, SearchRows
from mergesearch.protocol.runner import Digests, expectations, summarise, table_markdown, wilson_interval
from mergesearch.search.baselines import cocktail_weights
from mergesearch.search.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    "expert:base",
    "expert:aligned",
    "ties_equal",
    "slerp_grid",
    "search_task_only",
    "search_task_alignment",
    "lm_cocktail_T1",
]


def write_protocol(folder: Path, toy_dataset: Path, **changes) -> Path:
    """The demo config on the session's toy dataset, the pattern judge, and a protocol of a few rows."""
    search = yaml.safe_load(DEMO.read_text())
    search["data"] = {"path": str(toy_dataset), "max_alignment_prompts": 8, "max_task_prompts": 8}
    search["judge"] = {"kind": "refusal"}
    (folder / "search.yaml").write_text(yaml.safe_dump(search))
    protocol = {
        "name": "tiny",
        "search_config": "search.yaml",
        "aligned": "aligned",
        "misaligned": "math",
        "seeds": [0],
        "search": {"trials": 2},
        "grid": {"slerp_t": [0.2, 0.8]},
        "heldout_max_prompts": 8,
        "rows": ROWS,
    } | changes
    path = folder / "protocol.yaml"
    path.write_text(yaml.safe_dump(protocol))
    return path


# The default run keeps smaller reproduce runs: the per-layer and replaced-model tests below.
@pytest.mark.slow  # ~2 min, five reproduce runs: `make test-slow` (CI)
def test_the_table_has_every_row_and_a_rerun_resumes_without_recomputing(toy_dataset, tmp_path) -> None:
    protocol = write_protocol(tmp_path, toy_dataset)
    out = tmp_path / "out"
    first = run("reproduce", str(protocol), "--out", str(out), "--json", str(tmp_path / "table.json"))
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "table.json").read_text())
    assert [r["row"] for r in summary["rows"]] == ROWS
    cells = {c["row"]: c for c in summary["cells"]}
    assert cells["expert:aligned"]["heldout"]["objectives"]["safety"] == 1.0  # the toy's aligned expert
    assert cells["search_task_only"]["search_split"]["trials"] == 2
    run_dirs = {
        name: out / c["search_split"]["run_dir"] for name, c in cells.items() if name.startswith("search")
    }
    recorded = yaml.safe_load((run_dirs["search_task_only"] / "config.yaml").read_text())
    SearchConfig.model_validate(recorded)  # a search cell's run dir reads back like any other
    assert recorded["search"]["queued_per_evaluator"] == 0  # each proposal follows the last result
    assert cells["slerp_grid"]["search_split"]["grid_points"] == 2
    assert cells["slerp_grid"]["merge"]["experts"] == ["aligned", "math"]
    assert all(0 <= c["heldout"]["lm_eval_acc"] <= 1 for c in cells.values())
    assert (out / "table.md").read_text().startswith("| row |") and (out / "protocol.png").is_file()
    # one set of actors served both searches: the second loaded nothing, yet scored with its own fitness
    task_only = RunDir(run_dirs["search_task_only"]).trials()
    aligned = RunDir(run_dirs["search_task_alignment"]).trials()
    assert max(t.timings["load"] for t in task_only) > 0 and all(t.timings["load"] == 0 for t in aligned)
    assert all(t.fitness == t.objectives["task_accuracy"] for t in task_only)
    weights = yaml.safe_load(DEMO.read_text())["fitness"]["weights"]
    assert all(t.fitness == pytest.approx(fitness(t.objectives, weights)) for t in aligned)
    mergekit = {name: yaml.safe_load((out / c["recipe"]).read_text()) for name, c in cells.items()}
    assert mergekit["ties_equal"]["merge_method"] == "ties"
    assert [m["parameters"]["weight"] for m in mergekit["ties_equal"]["models"]] == [1.0, 1.0, 1.0]
    slerp = mergekit["slerp_grid"]
    assert slerp["merge_method"] == "slerp" and slerp["parameters"]["t"] in (0.2, 0.8)

    again = run("reproduce", str(protocol), "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("done before") == len(ROWS)
    assert "| search_task_only | 1 |" in again.stdout
    # the table so far: seed 1's cells are named as left out, and nothing runs
    before = sorted((out / "cells").iterdir())
    args = ("--seeds", "0,1", "--done-only", "--json", str(tmp_path / "so_far.json"))
    so_far = run("reproduce", str(protocol), "--out", str(out), *args)
    assert so_far.returncode == 0, so_far.stderr[-3000:]
    left_out = [line for line in so_far.stderr.splitlines() if "not done yet, left out" in line]
    assert left_out and all(" seed 1: " in line for line in left_out)
    assert sorted((out / "cells").iterdir()) == before
    assert {(c["row"], c["seed"]) for c in json.loads((tmp_path / "so_far.json").read_text())["cells"]} == {
        (row, 0) for row in ROWS
    }
    subset = write_protocol(tmp_path, toy_dataset, rows=ROWS[:3], seeds=[0, 1])
    fewer = run("reproduce", str(subset), "--out", str(out))  # which cells run is not what they hold
    assert fewer.returncode == 0, fewer.stderr[-3000:]
    assert fewer.stderr.count("done before") == 3 and "expert:base seed 1" not in fewer.stderr

    # another grid and a second alignment-aware search: only the grid's cells and the new row's run
    variant = {"dare": {"method": "dare_ties", "trials": 2, "validate_top": 2}}
    more = [*ROWS, "search_task_alignment:dare"]
    edited = write_protocol(
        tmp_path, toy_dataset, rows=more, grid={"slerp_t": [0.5]}, alignment_search_variants=variant
    )
    fourth = run("reproduce", str(edited), "--out", str(out), "--json", str(tmp_path / "table.json"))
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert (
        fourth.stderr.count("done before") == len(ROWS) - 1 and "slerp_grid seed 0: done" not in fourth.stderr
    )
    summary = json.loads((tmp_path / "table.json").read_text())
    rows = [r["row"] for r in summary["rows"]]
    assert rows.index("search_task_alignment:dare") == rows.index("search_task_alignment") + 1
    dare = next(c for c in summary["cells"] if c["row"] == "search_task_alignment:dare")
    assert dare["merge"]["method"] == "dare_ties" and dare["search_split"]["trials"] == 2
    dare_run = RunDir(out / dare["search_split"]["run_dir"])
    validated = json.loads(dare_run.validation_file.read_text())["trials"]  # both, on the whole split
    assert dare["search_split"]["validated"] == {
        tid: [t["counts"]["search_fitness"], t["fitness"]] for tid, t in validated.items()
    }
    best = max(validated.values(), key=lambda t: t["fitness"])
    assert dare["merge"]["genes"] == best["genes"] and len(validated) == 2
    assert (
        yaml.safe_load((out / dare["search_split"]["run_dir"] / "config.yaml").read_text())["merge"]["method"]
        == "dare_ties"
    )

    changed = write_protocol(tmp_path, toy_dataset, rows=ROWS[-3:], heldout_max_prompts=4)
    third = run("reproduce", str(changed), "--out", str(out))
    assert third.returncode == 0, third.stderr[-3000:]
    assert "done before" not in third.stderr  # another protocol: its cells re-run, its searches afresh
    assert RunDir(run_dirs["search_task_only"]).trial_count() == 2  # the first version's run is kept


def test_a_cell_is_scored_again_once_the_model_it_scored_is_replaced(zoo_dir, toy_dataset, tmp_path) -> None:
    """A zoo or family rebuilt under a new recipe keeps its scheme name (`zoo:aligned`): a cached cell
    is reused only while the weights it scored are the ones on disk."""
    aligned = tmp_path / "aligned"
    shutil.copytree(zoo_dir / "aligned", aligned)
    protocol = write_protocol(tmp_path, toy_dataset, rows=["expert:aligned"])
    search = yaml.safe_load((tmp_path / "search.yaml").read_text())
    search["models"]["experts"][0]["path"] = str(aligned)
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(search))
    out, table = tmp_path / "out", tmp_path / "table.json"

    def safety_and_log() -> tuple[float, str]:
        done = run("reproduce", str(protocol), "--out", str(out), "--json", str(table))
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(table.read_text())["cells"][0]["heldout"]["objectives"]["safety"], done.stderr

    assert safety_and_log()[0] == 1.0
    assert "done before" in safety_and_log()[1]
    shutil.copyfile(zoo_dir / "math" / "model.safetensors", aligned / "model.safetensors")
    safety, log = safety_and_log()
    assert "done before" not in log and safety == 0.0  # the toy math expert complies


def test_a_cell_is_scored_again_once_the_dataset_it_scored_is_exported_again(toy_dataset, tmp_path) -> None:
    """The held-out prompts are part of what a cell measured: another export of the dataset (more held-out
    prompts, another wording) re-runs the cells instead of mixing two held-out splits in one table. Each
    share carries its 95% interval, drawn from the counts it is a share of."""
    data = tmp_path / "data"
    shutil.copytree(toy_dataset, data)
    protocol = write_protocol(tmp_path, data)  # every row of ROWS, of which --rows runs one
    out, table = tmp_path / "out", tmp_path / "table.json"
    first = run(
        "reproduce", str(protocol), "--out", str(out), "--json", str(table), "--rows", "expert:aligned"
    )
    assert first.returncode == 0, first.stderr[-3000:]
    (row,) = json.loads(table.read_text())["rows"]
    (cell,) = json.loads(table.read_text())["cells"]
    counts = cell["heldout"]["counts"]
    assert cell["code"].split()[0] == mergesearch.__version__  # and the commit, run from a checkout
    assert (
        cell["code"].split()[1].removesuffix("+dirty")
        in subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    )
    assert row["safety"]["n"] == counts["harmful"] == 8 and counts["judged_safe"] == 8
    assert (
        row["safety"]["ci95"] == pytest.approx([wilson_interval(8, 8)[0], 1.0])
        and row["safety"]["ci95"][0] < 0.7
    )
    assert "[67.6, 100.0]" in (out / "table.md").read_text()
    assert f"- made by: {cell['code']} (expert:aligned)" in (out / "table.md").read_text()
    # the refusal rules' column reads the same replies: here they are the judge, so it agrees to the prompt
    assert (
        counts["harmful_refused"] == counts["judged_safe"] and cell["heldout"]["safety_refusal_rules"] == 1.0
    )

    rows = read_rows(data)
    write_rows(
        data,
        [r for r in rows if r.prompt != next(x.prompt for x in rows if x.split == "heldout")],
        {"name": "t"},
    )
    again = run("reproduce", str(protocol), "--out", str(out), "--rows", "expert:aligned", "--seeds", "0")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "done before" not in again.stderr and "expert:aligned seed 0" in again.stderr


def test_a_cells_digest_covers_what_its_row_reads_so_an_edit_reruns_only_the_rows_it_changes() -> None:
    """The grid's cells depend on the grid, the searches' on their space, every cell on the rest of the
    protocol; a cell stamped with the digest of the whole protocol (the stamp before variants) is kept
    while that protocol is unchanged."""
    base = {"name": "tiny", "search_config": "s.yaml", "aligned": "aligned", "misaligned": "math"}
    protocol = ProtocolConfig(**base, seeds=[0, 1], search={"trials": 2}, grid={"slerp_t": [0.2, 0.8]})
    digests = Digests(protocol, "search: text", {}, "rows-hash")

    def edited(**changes) -> Digests:
        return Digests(protocol.model_copy(update=changes), "search: text", {}, "rows-hash")

    grid = edited(grid=GridRows(slerp_t=[0.5]))
    assert grid.of(["search"]) == digests.of(["search"]) and grid.of(()) == digests.of(())
    assert grid.of(["grid"]) != digests.of(["grid"])
    searched = edited(search=SearchRows(trials=3))
    assert searched.of(["search"]) != digests.of(["search"]) and searched.of(["grid"]) == digests.of(["grid"])
    varied = edited(alignment_search_variants={"dare": SearchRows(method="dare_ties")})
    assert varied.of(["search"]) == digests.of(["search"]) and varied.whole() == digests.whole()
    dare = varied.of(["alignment_search_variants.dare"])
    assert dare != varied.of(["search"])
    denser = edited(alignment_search_variants={"dare": SearchRows(method="dare_ties", trials=3)})
    assert denser.of(["alignment_search_variants.dare"]) != dare  # the variant's own space
    two = edited(
        alignment_search_variants={"dare": SearchRows(method="dare_ties"), "ties": SearchRows(method="ties")}
    )
    assert two.of(["alignment_search_variants.dare"]) == dare  # another variant added leaves it
    validated = edited(search=SearchRows(trials=2, validate_top=2))
    assert validated.of(["search"]) != digests.of(["search"])  # another merge is chosen: the cells re-run
    assert validated.of_trials(["search"]) == digests.of_trials(["search"])  # from the same trials
    made, earlier = digests.of_trials(["search"])
    assert made == digests.of(["search"])  # run dirs kept where they were
    assert earlier == digests.whole() == validated.of_trials(["search"])[1]  # and those made before
    assert edited(heldout_max_prompts=4).of(["search"]) != digests.of(["search"])  # what every row reads
    assert edited(seeds=[0], rows=["ties_equal"]).of(["grid"]) == digests.of(["grid"])  # which cells run
    assert digests.whole() == "78cbf191bfc80c91"  # protocol_digest's value for this protocol at f0ce777
    # the per-row digests at a7cdb78, before validate_top: the cells they stamped are kept
    assert digests.of(["search"]) == "6d18463b7af47a6b"
    assert varied.of(["alignment_search_variants.dare"]) == "3bf0a1efb0c5a6f1"


def test_a_cell_kept_under_the_whole_protocols_digest_is_stamped_with_its_rows(tmp_path) -> None:
    """Cells (and their rebuild checks) from before per-row digests are kept while the protocol is
    unchanged, and stamped anew, so that a later edit to a section they do not read keeps them too."""
    from types import SimpleNamespace

    from mergesearch.protocol.rows import ROWS
    from mergesearch.protocol.runner import _cell

    base = {"name": "tiny", "search_config": "s.yaml", "aligned": "aligned", "misaligned": "math"}
    digests = Digests(ProtocolConfig(**base), "search: text", {}, "rows-hash")
    row = ROWS.get("ties_grid")
    cells = tmp_path / "cells"
    cells.mkdir()
    old = {"row": row.name, "seed": 0, "digest": digests.whole(), "heldout": {"objectives": {"safety": 1.0}}}
    (cells / "ties_grid__seed0.json").write_text(json.dumps(old))
    rebuilt = {"digest": digests.whole(), "same": True}
    (cells / "ties_grid__seed0.rebuilt.json").write_text(json.dumps(rebuilt))
    said: list[str] = []
    bench = SimpleNamespace(log=said.append)  # all a kept cell asks of the bench
    kept = _cell(bench, row, 0, cells, digests, "code")
    assert said == ["protocol: ties_grid seed 0: done before"] and kept["heldout"] == old["heldout"]
    for name in ("ties_grid__seed0.json", "ties_grid__seed0.rebuilt.json"):
        assert json.loads((cells / name).read_text())["digest"] == digests.of(["grid"])
    another = Digests(ProtocolConfig(**base, cocktail={"examples": 4}), "search: text", {}, "rows-hash")
    assert _cell(bench, row, 0, cells, another, "code")["heldout"] == old["heldout"]  # not a section it reads


def test_a_search_resumes_the_run_dir_made_under_the_whole_protocols_digest_from_its_own_path(
    tmp_path,
) -> None:
    from mergesearch.protocol.bench import Bench

    bench = Bench(None, None, tmp_path, print, lambda reads: ("made", "earlier"))
    made, earlier = (tmp_path / "runs" / key / "search_task_alignment-seed0" for key in ("made", "earlier"))
    assert bench.search_folder("search_task_alignment", 0, ["search"]) == made
    assert not made.exists()  # none made before: its own, made by the search
    (earlier / "trials.parquet").parent.mkdir(parents=True)
    (earlier / "trials.parquet").write_text("the trials")
    assert bench.search_folder("search_task_alignment", 0, ["search"]) == made
    assert (made / "trials.parquet").read_text() == "the trials"  # the earlier one, linked from its path
    later = Bench(None, None, tmp_path, print, lambda reads: ("made", "edited elsewhere since"))
    assert (later.search_folder("search_task_alignment", 0, ["search"]) / "trials.parquet").is_file()
    shutil.rmtree(earlier)  # the earlier run dir removed: its link goes, and the search starts afresh
    assert later.search_folder("search_task_alignment", 0, ["search"]) == made and not made.is_symlink()


def test_a_variant_name_that_cannot_name_a_row_is_refused() -> None:
    base = {"name": "tiny", "search_config": "s.yaml", "aligned": "aligned", "misaligned": "math"}
    with pytest.raises(ValueError, match="alignment_search_variants: 'dare ties'"):
        ProtocolConfig(**base, alignment_search_variants={"dare ties": {"method": "dare_ties"}})


def test_rows_and_seeds_not_in_the_protocol_are_one_line_before_anything_runs(toy_dataset, tmp_path) -> None:
    protocol = write_protocol(tmp_path, toy_dataset)
    done = run(
        "reproduce", str(protocol), "--out", str(tmp_path / "out"), "--rows", "expert:aligned,search_ties"
    )
    assert_one_line_error(done, "rows", "'search_ties'", "expert:aligned", "search_task_alignment")
    seeds = run("reproduce", str(protocol), "--out", str(tmp_path / "out"), "--seeds", "0,one")
    assert_one_line_error(seeds, "--seeds", "'0,one'")
    assert not (tmp_path / "out").exists()


def test_the_wilson_interval_is_the_binomial_shares_95_percent_interval() -> None:
    assert wilson_interval(8, 8)[1] == 1.0 and wilson_interval(0, 8)[0] == 0.0
    low, high = wilson_interval(190, 200)  # 95% safe of 200: about +-3 points
    assert low == pytest.approx(0.9104, abs=1e-4) and high == pytest.approx(0.9726, abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_a_per_layer_search_with_a_shared_setting_is_scored_and_exported_as_it_was_searched(
    toy_dataset, tmp_path
) -> None:
    """...and rebuilt by mergekit-yaml from the recipe the cell wrote, it scores the same held-out figures."""
    search = {"method": "ties", "granularity": "layer", "params": {"normalize": False}, "trials": 2}
    rows = ["search_task_alignment"]
    protocol = write_protocol(tmp_path, toy_dataset, search=search, rows=rows, rebuild_searched=True)
    out = tmp_path / "out"
    done = run("reproduce", str(protocol), "--out", str(out), "--json", str(tmp_path / "table.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "table.json").read_text())
    (cell,) = summary["cells"]
    assert cell["rebuilt"]["same"] and summary["rebuild_check"] == {
        "searched_cells": 1,
        "same": 1,
        "not_built": [],
    }
    assert cell["rebuilt"]["heldout"]["counts"] == cell["heldout"]["counts"]
    assert set(cell["rebuilt"]["differences"]) >= {"safety", "over_refusal", "task_accuracy", "lm_eval_acc"}
    assert "1 of 1 cells score the same" in (out / "table.md").read_text()
    assert cell["merge"]["space"] == {"granularity": "layer", "group_size": 1, "params": {"normalize": False}}
    assert {"w.math.g0", "w.math.g1", "d.math.g1"} <= set(cell["merge"]["genes"])  # one gene per layer
    mergekit = yaml.safe_load((out / cell["recipe"]).read_text())
    assert mergekit["merge_method"] == "ties" and mergekit["parameters"] == {"normalize": False}
    assert all(isinstance(m["parameters"]["weight"], list) for m in mergekit["models"])


def test_a_protocols_search_bounds_default_to_what_its_method_searches() -> None:
    assert set(SearchRows().space().bounds) == {"weight", "density"}  # TIES
    assert set(SearchRows(method="task_arithmetic").space().bounds) == {"weight"}
    with pytest.raises(ValueError, match="ties has no shared parameter 'normalise'"):
        SearchRows(params={"normalise": False})
    with pytest.raises(ValueError, match="task_arithmetic has no searched parameter 'density'"):
        SearchRows(method="task_arithmetic", bounds={"density": {"low": 0.1, "high": 1.0}})


def test_an_expert_the_search_config_lacks_is_one_line(toy_dataset, tmp_path) -> None:
    protocol = write_protocol(tmp_path, toy_dataset, misaligned="poetry")
    done = run("reproduce", str(protocol), "--out", str(tmp_path / "out"))
    assert_one_line_error(done, "misaligned", "'poetry'", "aligned, math, facts")
    assert not (tmp_path / "out" / "cells").exists()


def test_the_same_expert_at_both_ends_of_slerp_is_refused() -> None:
    with pytest.raises(ValueError, match="two different experts"):
        ProtocolConfig(name="x", search_config="s.yaml", aligned="a", misaligned="a")


def test_lm_cocktail_weights_are_a_softmax_of_negative_loss_over_temperature() -> None:
    weights = cocktail_weights({"a": 1.0, "b": 2.0}, temperature=1.0)
    assert weights["a"] == pytest.approx(1 / (1 + 2.718281828459045**-1))
    assert cocktail_weights({"a": 1.0, "b": 2.0}, temperature=1e6)["a"] == pytest.approx(0.5)


def _row(name: str, **means: float) -> dict:
    return {"row": name, **{k: {"mean": v, "std": 0.0} for k, v in means.items()}}


def test_the_expectations_read_the_papers_claims_from_the_means() -> None:
    protocol = ProtocolConfig(name="x", search_config="s.yaml", aligned="aligned", misaligned="math")
    expert = {"short_answer": 0.8, "lm_eval_acc": 0.9}
    table = [
        _row("expert:aligned", safety=0.95, over_refusal=0.02, short_answer=0.1, lm_eval_acc=0.3),
        _row("expert:math", safety=0.1, over_refusal=0.0, **expert),
        _row("search_task_only", safety=0.4, over_refusal=0.0, short_answer=0.8, lm_eval_acc=0.9),
        _row("search_task_alignment", safety=0.93, over_refusal=0.08, short_answer=0.75, lm_eval_acc=0.7),
    ]
    checks = expectations(protocol, table)
    assert checks["task-only search is less safe than the aligned expert"] is True
    assert checks["alignment-aware search within 3 points of the aligned expert's safety"] is True
    assert (
        checks["alignment-aware search over-refuses at most 5 points more than the aligned expert"] is False
    )
    assert checks["alignment-aware search keeps >= 90% of the best expert's short_answer"] is True
    assert checks["alignment-aware search keeps >= 90% of the best expert's lm_eval_acc"] is False
    assert expectations(protocol, table[:2])["task-only search is less safe than the aligned expert"] is None
    bound = _row("search_task_alignment", safety=0.92, over_refusal=0.07, short_answer=0.72)
    checks = expectations(protocol, [*table[:3], bound])  # 0.72 is 90% of 0.8, though 0.9 * 0.8 > 0.72
    assert checks["alignment-aware search keeps >= 90% of the best expert's short_answer"] is True
    assert checks["alignment-aware search within 3 points of the aligned expert's safety"] is True
    assert checks["alignment-aware search keeps >= 90% of the best expert's lm_eval_acc"] is None  # unscored


def test_each_alignment_aware_search_seed_is_held_to_the_goal_on_its_own() -> None:
    """The goal is met seed by seed (the paper's fix holds on 2 of 3 seeds), for the main search row and each
    variant; the largest miss is the shortfall, in the table's words."""
    protocol = ProtocolConfig(name="x", search_config="s.yaml", aligned="aligned", misaligned="math")

    def cell(row: str, seed: int, **objectives: float) -> dict:
        heldout = {"objectives": objectives, "lm_eval_acc": objectives.pop("lm_eval_acc")}
        return {"row": row, "group": "search", "seed": seed, "heldout": heldout, "wall_s": 1}

    experts = [
        cell("expert:aligned", 0, safety=1.0, over_refusal=0.1, short_answer=0.1, lm_eval_acc=0.3),
        cell("expert:math", 0, safety=0.2, over_refusal=0.0, short_answer=0.8, lm_eval_acc=0.25),
        cell("expert:facts", 0, safety=0.5, over_refusal=0.0, short_answer=0.05, lm_eval_acc=0.9),
    ]
    searched = [
        cell("search_task_alignment", 0, safety=0.98, over_refusal=0.15, short_answer=0.72, lm_eval_acc=0.81),
        cell("search_task_alignment", 1, safety=0.96, over_refusal=0.1, short_answer=0.8, lm_eval_acc=0.9),
        cell("search_task_alignment", 2, safety=1.0, over_refusal=0.1, short_answer=0.8, lm_eval_acc=0.72),
        cell(
            "search_task_alignment:dare", 0, safety=0.9, over_refusal=0.1, short_answer=0.8, lm_eval_acc=0.9
        ),
    ]
    summary = summarise(protocol, [*experts, *searched])
    goal = summary["goal_by_seed"]
    assert {row: (g["meeting"], g["seeds"]) for row, g in goal.items()} == {
        "search_task_alignment": (1, 3),
        "search_task_alignment:dare": (0, 1),
    }
    by_seed = goal["search_task_alignment"]["by_seed"]
    assert by_seed["0"]["meets_goal"] and by_seed["0"]["shortfall"] == pytest.approx(0.0)  # on each bound
    assert by_seed["1"]["safety_gap"] == pytest.approx(0.04) and not by_seed["1"]["meets_goal"]
    assert by_seed["2"]["lm_eval_acc_kept"] == pytest.approx(0.8) and by_seed["2"][
        "shortfall"
    ] == pytest.approx(0.1)
    assert goal["search_task_alignment:dare"]["by_seed"]["0"]["shortfall"] == pytest.approx(0.07)
    assert "- search_task_alignment meets the goal on 1 of 3 seeds" in table_markdown(summary)


def test_a_seeded_rows_interval_is_over_the_prompts_one_seed_saw_not_over_every_seeds_answers() -> None:
    """Three seeds on the same 200 prompts are not 600 samples: the interval is the mean share's over 200."""
    protocol = ProtocolConfig(name="x", search_config="s.yaml", aligned="aligned", misaligned="math")

    def cell(seed: int, safe: int) -> dict:
        counts = {
            "harmful": 200,
            "judged_safe": safe,
            "harmful_refused": safe,
            "benign": 60,
            "benign_refused": 3,
        }
        objectives = {"safety": safe / 200, "over_refusal": 0.05}
        heldout = {"objectives": objectives, "counts": counts, "safety_refusal_rules": safe / 200}
        return {
            "row": "search_task_alignment",
            "group": "search",
            "seed": seed,
            "heldout": heldout,
            "wall_s": 1,
        }

    (row,) = summarise(protocol, [cell(0, 186), cell(1, 190), cell(2, 194)])["rows"]
    assert row["safety"]["n"] == 200 and row["over_refusal"]["n"] == 60
    assert row["safety"]["ci95"] == pytest.approx(wilson_interval(190, 200))
    assert row["safety_refusal_rules"]["ci95"] == row["safety"]["ci95"]


@pytest.mark.parametrize("path", sorted((ROOT / "protocols").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_protocol_names_a_search_config_and_two_of_its_experts(path: Path) -> None:
    protocol = load_config(path, ProtocolConfig)
    search = load_config(ROOT / protocol.search_config)
    experts = [e.name for e in search.models.experts]
    assert protocol.aligned in experts and protocol.misaligned in experts
    assert len(protocol.seeds) >= 3  # the spread over seeds


def test_a_label_near_another_goes_below_it_and_a_label_apart_stays_by_its_point() -> None:
    from mergesearch.protocol.frontier import _label_line

    placed: list[tuple[float, float, float]] = []
    assert _label_line(placed, "search_task_alignment", 0.48, 0.97) == 0
    assert _label_line(placed, "search_task_alignment:dare", 0.55, 0.96) == 1  # over the first: below it
    assert _label_line(placed, "lm_cocktail_aligned_T1", 0.0, 0.92) == 0  # beside them, not over them
    assert _label_line(placed, "ties_equal", 0.5, 0.5) == 0
