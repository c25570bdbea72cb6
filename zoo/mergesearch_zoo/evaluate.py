"""Evaluate a built zoo: every chat model's skills, the guard's agreement, and task-vector sizes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mergesearch.backends.hf import HFBackend
from mergesearch.errors import UserError
from mergesearch_zoo.layout import EXPERTS, MEMBERS, read_manifest
from mergesearch_zoo.recipe import ZooRecipe
from mergesearch_zoo.skills import SkillSets, chat_skills, guard_skills, task_vector_ratio

SKILL_COLUMNS = ("sums", "facts", "facts_unseen_wording", "refusal", "benign_answered")


def load_zoo_recipe(zoo_dir: Path) -> ZooRecipe:
    manifest = read_manifest(zoo_dir)
    if manifest is None:
        raise UserError(
            f"{zoo_dir}: not a built zoo (no readable zoo.json); run `mergesearch zoo build` first"
        )
    return ZooRecipe.model_validate(manifest["recipe"])


def evaluate_zoo(zoo_dir: Path, max_items: int | None = None, log: Callable[[str], None] = print) -> dict:
    """Held-out scores of every zoo model, as a JSON-ready dict."""
    zoo_dir = Path(zoo_dir)
    recipe = load_zoo_recipe(zoo_dir)
    sets = SkillSets.build(recipe, max_items)
    models: dict[str, dict[str, float]] = {}
    for member in MEMBERS:
        if member.name == "guard":
            continue
        log(f"eval: {member.name}")
        models[member.name] = chat_skills(
            HFBackend.from_pretrained(zoo_dir / member.name, device="cpu"), sets
        )
    log("eval: guard")
    guard = guard_skills(HFBackend.from_pretrained(zoo_dir / "guard", device="cpu"), sets.guard_pairs)
    return {
        "zoo": str(zoo_dir),
        "digest": recipe.digest(),
        "models": models,
        "guard": guard,
        "task_vector_ratio": {name: task_vector_ratio(zoo_dir / "base", zoo_dir / name) for name in EXPERTS},
        "heldout_sizes": {
            "sums": len(sets.sums),
            "facts": len(sets.facts),
            "facts_unseen_wording": len(sets.facts_unseen_wording),
            "harmful": len(sets.harmful),
            "benign": len(sets.benign),
            "guard_pairs": len(sets.guard_pairs),
        },
    }


def format_zoo_scores(scores: dict) -> str:
    """A plain-text table of :func:`evaluate_zoo`'s result, one row per model."""
    columns = (*SKILL_COLUMNS, "task_vector_ratio")
    widths = [max(len(c), 6) + 2 for c in columns]
    lines = [f"{'model':<9}" + "".join(f"{c:>{w}}" for c, w in zip(columns, widths))]
    for name, skills in scores["models"].items():
        values = [skills[c] for c in SKILL_COLUMNS] + [scores["task_vector_ratio"].get(name)]
        lines.append(
            f"{name:<9}"
            + "".join(f"{v:>{w}.3f}" if v is not None else f"{'-':>{w}}" for v, w in zip(values, widths))
        )
    g = scores["guard"]
    lines += [
        f"guard: verdict agreement {g['guard_agreement']:.3f}, "
        f"category accuracy {g['guard_category_accuracy']:.3f}, "
        f"unparsed {g['guard_unparsed']:.3f}",
        "held-out items: " + ", ".join(f"{k} {v}" for k, v in scores["heldout_sizes"].items()),
        "(shares of held-out items: sums = exact answers to unseen number pairs; "
        "facts = multiple choice with fresh options; refusal = harmful prompts refused; "
        "benign_answered = benign prompts not refused; "
        "task_vector_ratio = |expert - base| / |base|)",
    ]
    return "\n".join(lines)
