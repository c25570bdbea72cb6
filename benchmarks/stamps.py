"""Which commit each benchmark result ran at, and whether the code it measures has changed since.

A result file (``benchmarks/results/*.json``) is stamped when it records ``commit``. The code it measures
is its benchmark script and every module of ``mergesearch`` and of the zoo (``mergesearch_zoo``) the
script imports, transitively (read from the sources, not by importing them). A stamped result is
*current* when none of those files changed between its commit and the working tree, *stale* otherwise.

``python benchmarks/stamps.py`` (``make bench-status``) prints one line per result; the docs render the
same table (docs/hooks/render.py).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Each package whose modules count as measured code, and the folder its top-level package sits in.
PACKAGES = {"mergesearch": ROOT, "mergesearch_zoo": ROOT / "zoo"}

# Results not written by a script of their own name: the module that writes them.
WRITERS = {"protocol": "mergesearch/protocol/runner.py"}
# Results that time the README's commands: they measure everything those commands run.
WHOLE_TREE = {
    "fresh_clone": ("mergesearch", "zoo", "tests", "Makefile", "pyproject.toml", "constraints"),
    # these run `mergesearch` and `ray job submit` as commands, so their imports do not show what they measure
    "rehearsal_cluster": (
        "mergesearch",
        "entrypoints",
        "benchmarks/rehearsal_cluster.py",
        "benchmarks/paper_folders.py",
        "docs/cluster.md",
    ),
    "rehearse_shipped": (
        "mergesearch",
        "benchmarks/rehearse_shipped.py",
        "benchmarks/paper_folders.py",
        "search_spaces",
        "data_specs",
    ),
}


@dataclass(frozen=True)
class Stamp:
    """One result file: what ran, at which commit, and what has changed in its code since."""

    result: str
    benchmark: str
    commit: str | None
    date: str | None
    code: tuple[str, ...]  # the files it measures, relative to the repository
    changed: tuple[str, ...]  # those changed since ``commit`` (empty when current or unstamped)
    # for a result stamped after its run (it recorded no commit): how its commit was found
    stamped_from: str | None = None

    @property
    def status(self) -> str:
        if self.commit is None:
            return "not stamped"
        if not self.code:
            return "no script known"
        status = f"stale: {len(self.changed)} of its files changed" if self.changed else "current"
        return f"{status} (stamped afterwards)" if self.stamped_from else status


def provenance(argv: list[str]) -> dict[str, str]:
    """What a result file records of its run: the commit, the date, the machine and the exact command."""
    import os
    import platform
    import time

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    return {
        "commit": commit.strip(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, python {platform.python_version()}, {os.cpu_count()} cores",
        "command": " ".join(["python", *argv]),
    }


def module_file(module: str) -> Path | None:
    """The source file of a module or package of ours (``PACKAGES``), if it is one."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = PACKAGES[parts[0]] / Path(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(source: Path) -> set[str]:
    """The modules of ours (``PACKAGES``) ``source`` imports (at any depth in the file: lazy imports
    count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in PACKAGES)
    return found


def measured_code(script: Path) -> set[Path]:
    """``script`` and the files of ours it imports, transitively (each package's ``__init__``
    too, since importing a module runs its package's)."""
    seen: set[Path] = {script}
    todo = [script]
    while todo:
        for module in imported_modules(todo.pop()):
            parts = module.split(".")
            for depth in range(1, len(parts) + 1):
                path = module_file(".".join(parts[:depth]))
                if path is not None and path not in seen:
                    seen.add(path)
                    todo.append(path)
    return seen


def changed_since(commit: str, files: list[str], root: Path = ROOT) -> list[str]:
    """Those of ``files`` that differ between ``commit`` and the working tree (all of them when git does
    not know the commit: a shallow clone, or a commit from another history)."""
    known = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=root, capture_output=True)
    if known.returncode != 0:
        return list(files)
    done = subprocess.run(
        ["git", "diff", "--name-only", commit, "--", *files], cwd=root, capture_output=True, text=True
    )
    return sorted(done.stdout.split())


def tracked(paths: tuple[str, ...]) -> list[str]:
    done = subprocess.run(["git", "ls-files", "--", *paths], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.split()


def stamp(result: Path) -> Stamp:
    data = json.loads(result.read_text())
    data = data if isinstance(data, dict) else {}
    benchmark = data.get("benchmark") or ("protocol" if "protocol" in data else result.stem)
    script = ROOT / WRITERS.get(benchmark, f"benchmarks/{benchmark}.py")
    if benchmark in WHOLE_TREE:
        code = tuple(tracked(WHOLE_TREE[benchmark]))
    elif script.is_file():
        code = tuple(sorted(str(p.relative_to(ROOT)) for p in measured_code(script)))
    else:
        code = ()
    commit = data.get("commit")
    changed = tuple(changed_since(commit, list(code))) if commit and code else ()
    return Stamp(result.name, benchmark, commit, data.get("date"), code, changed, data.get("stamped_from"))


def stamps(results: Path = RESULTS) -> list[Stamp]:
    return [stamp(path) for path in sorted(results.glob("*.json"))]


def main() -> int:
    for item in stamps():
        print(f"{item.result:52} {(item.commit or '-')[:9]:9} {item.date or '-':10} {item.status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
