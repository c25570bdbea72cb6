"""The merge-method reference, generated from the registry: every method a search can use, with the
models it takes, its genes (bounds), its settings (defaults), its mergekit name and how it runs.

Written from the registered ``MergeMethod`` declarations, so the docs cannot drift from what a config
accepts: the docs site renders it (docs/hooks/render.py) and a test checks that it names every method.
"""

from __future__ import annotations

import re

from mergesearch.merge.spec import MergeMethod, get_method
from mergesearch.registry import MERGE_METHODS


def _models(method: MergeMethod) -> str:
    counts = (
        f"{method.min_experts}"
        if method.min_experts == method.max_experts
        else f"{method.min_experts}+"
        if method.max_experts is None
        else f"{method.min_experts}-{method.max_experts}"
    )
    base = {"base": "base + ", "first_expert": "", "none": ""}[method.mergekit_base]
    return f"{base}{counts} expert{'s' if counts != '1' else ''}"


def _genes(method: MergeMethod) -> str:
    genes = [
        f"`{p.gene}` {p.name} ({'per expert' if p.scope == 'expert' else 'per group'}, "
        f"{p.bounds[0]:g}–{p.bounds[1]:g})"
        for p in method.scoped("expert", "group")
        if p.bounds is not None
    ]
    return "; ".join(genes) or "none"


def _settings(method: MergeMethod) -> str:
    return ", ".join(f"`{p.name}`={p.default!r}" for p in method.scoped("shared")) or "none"


def _runs(method: MergeMethod) -> str:
    how = "in place (a kernel into the live model)" if method.into else "resident (per tensor)"
    if method.factorize:
        how += ", factors cached per tensor"
    if method.stacks_experts:
        how += ", holds every expert's tensor at once"
    if method.randomized:
        how += ", draws random numbers (seeded)"
    return how


def _summary(method: MergeMethod) -> str:
    doc = " ".join((method.fn.__doc__ or "").split()).removeprefix(f"{method.name}: ")
    first = re.split(r"(?<!\bal)\. ", doc)[0].rstrip(".")  # the first sentence ("et al." goes on)
    return first.replace("|", "\\|")


def render() -> str:
    """A markdown table of every registered method, then each method's summary."""
    rows = [
        "| method | models | genes | settings | mergekit | runs |",
        "|---|---|---|---|---|---|",
    ]
    for name in MERGE_METHODS:
        method = get_method(name)
        mergekit = f"`{method.mergekit}`" if method.mergekit else "none: our engine only"
        rows.append(
            f"| `{name}` | {_models(method)} | {_genes(method)} | {_settings(method)} | {mergekit} | "
            f"{_runs(method)} |"
        )
    notes = [f"- **`{name}`**: {_summary(get_method(name))}." for name in MERGE_METHODS]
    return "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n"
