"""mkdocs hook: fills in the generated parts of the docs when the site is built.

``{{ config_reference }}``: every config field, from the schema (``mergesearch.config_reference``);
``{{ method_reference }}``: every merge method, from the registry (``mergesearch.method_reference``);
``{{ fresh_clone_timings }}`` and ``{{ benchmark_results }}``: figures from ``benchmarks/results/*.json``,
each with its commit (``benchmarks/render.py``); ``{{ protocol_table:NAME }}``: a protocol run's table, with
its commit; ``{{ rehearsal_cluster }}``, ``{{ rehearse_shipped }}``: the rehearsals' records;
``{{ merge_speed }}``: every method's merge time against mergekit's, and its parity;
``{{ paper_levers }}``: the lever screen of the paper's fix on real language; ``{{ paper_front }}``: its
search's best trials on the whole search split; ``{{ paper_choice }}``: its merges chosen by search fitness
and on the whole split; ``{{ paper_validation }}``: its searched merges on the rows
their fitness read, the rest of the search split and the held-out split;
``{{ demo_table }}``: the table ``make demo`` prints, as the README shows it (kept there, once). Nothing
here is written twice, so none of it drifts.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import render  # noqa: E402  (benchmarks/render.py: a script folder, not a package)

from mergesearch import config_reference, method_reference  # noqa: E402


def demo_table() -> str:
    """The README's demo table: its first fenced block that starts with a table row."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("```\n| row |")
    return readme[start : readme.index("```\n", start + 4) + 4]


GENERATED = {
    "{{ demo_table }}": demo_table,
    "{{ config_reference }}": config_reference.render,
    "{{ method_reference }}": method_reference.render,
    "{{ fresh_clone_timings }}": render.fresh_clone_timings,
    "{{ benchmark_results }}": render.results_table,
    "{{ rehearsal_cluster }}": render.rehearsal_cluster,
    "{{ rehearse_shipped }}": render.rehearse_shipped,
    "{{ merge_speed }}": render.merge_speed,
    "{{ paper_levers }}": render.paper_levers,
    "{{ paper_validation }}": render.paper_validation,
    "{{ paper_front }}": render.paper_front,
    "{{ paper_choice }}": render.paper_choice,
}


# ``{{ protocol_table:NAME }}``: benchmarks/results/protocol_NAME.json's table, with its commit.
PROTOCOL_TABLE = re.compile(r"\{\{ protocol_table:([a-z0-9_]+) \}\}")


def on_page_markdown(markdown: str, page, config, files) -> str:
    for placeholder, make in GENERATED.items():
        if placeholder in markdown:
            markdown = markdown.replace(placeholder, make())
    return PROTOCOL_TABLE.sub(lambda match: render.protocol_table(match[1]), markdown)
