"""Evaluate a built zoo: every chat model's skills, the guard's agreement, and task-vector sizes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mergesearch.backends.hf import HFBackend
from mergesearch.errors import UserError
from mergesearch.zoo.build import EXPERTS, MEMBERS, read_manifest
from mergesearch.zoo.recipe import ZooRecipe
from mergesearch.zoo.skills import SkillSets, chat_skills, guard_skills, task_vector_ratio

SKILL_COLUMNS = ("sums", "facts", "facts_unseen_wording", "refusal", "benign_answered")


def load_zoo_recipe(zoo_dir: Path) -> ZooRecipe:
    manifest = read_manifest(zoo_dir)
    if manifest is None:
        raise UserError(f"{zoo_dir}: not a built zoo (no readable zoo.json); run `mergesearch zoo build` first")
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
        models[member.name] = chat_skills(HFBackend.from_pretrained(zoo_dir / member.name, device="cpu"), sets)
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
    """A plain-text table of :func:`evaluate_zoo`'s result."""
    header = f"{'model':<10}" + "".join(f"{c:>22}" for c in (*SKILL_COLUMNS, "task_vector_ratio"))
    lines = [header, "-" * len(header)]
    for name, skills in scores["models"].items():
        ratio = scores["task_vector_ratio"].get(name)
        cells = [f"{skills[c]:>22.3f}" for c in SKILL_COLUMNS] + [f"{ratio:>22.3f}" if ratio is not None else f"{'-':>22}"]
        lines.append(f"{name:<10}" + "".join(cells))
    g = scores["guard"]
    lines.append(
        f"guard: agreement {g['guard_agreement']:.3f}, category accuracy {g['guard_category_accuracy']:.3f}, "
        f"unparsed {g['guard_unparsed']:.3f}"
    )
    sizes = ", ".join(f"{k} {v}" for k, v in scores["heldout_sizes"].items())
    lines.append(f"held-out items: {sizes}")
    return "\n".join(lines)
