"""Stand-ins cached by what they are made from, so that a rehearsal run again (after fixing what the last
one found, or to run the job after a ``--no-run``) reuses them instead of writing them again.

Writing a paper job's five stand-ins takes about 10 s of 2 CPU cores, most of it the forward passes that
script their heads. What they are depends only on each source folder's ``config.json`` and tokenizer
files, the role and name each plays, its refusal share, the code that writes them and the torch that ran
it: the key hashes all of these, so a changed folder, stand-in or code writes a new set. The set is cached
whole (stand-ins of one architecture share their scripted vocabulary). Each rehearsal gets its own copy
(hard links where the cache is on the same file system): a rehearsal's ``models/`` stays its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from mergesearch.io import atomic_dir
from mergesearch.rehearsal import scripts, standins
from mergesearch.rehearsal.standins import TOKENIZER_FILES, StandIn, standin_line, write_standins
from mergesearch.runtime import cache_root

RECORD = "stand_ins.json"  # what write_standins returned: each stand-in's role and calibration
# The modules whose code decides what a stand-in is: a change to either is a new set.
CODE = (standins.__file__, scripts.__file__)


def standins_key(wanted: Sequence[StandIn]) -> str:
    """The hash of everything ``write_standins(wanted)`` reads."""
    import torch

    digest = hashlib.sha256(torch.__version__.encode())
    for path in CODE:
        digest.update(Path(path).read_bytes())
    for s in wanted:
        digest.update(json.dumps([s.name, s.role, s.refusal_share]).encode())
        for name in ("config.json", *TOKENIZER_FILES):
            file = s.source / name
            digest.update(name.encode() + (file.read_bytes() if file.is_file() else b"\0absent"))
    return digest.hexdigest()[:16]


def cached_standins(wanted: Sequence[StandIn], out: Path, log: Callable[[str], None] = print) -> dict:
    """``write_standins(wanted, out)``, from the model cache when these stand-ins were written before."""
    folder = cache_root() / "standins" / standins_key(wanted)
    cached = (folder / RECORD).is_file()
    if not cached:
        with atomic_dir(folder) as tmp:
            (tmp / RECORD).write_text(json.dumps(write_standins(wanted, tmp, log), indent=1))
    written = json.loads((folder / RECORD).read_text())
    for s in wanted:
        target = out / s.name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(folder / s.name, target, copy_function=_link_or_copy)
        if cached:
            log(f"{standin_line(s.name, written[s.name])} (cached)")
    return written


def _link_or_copy(source: str, target: str) -> None:
    """A hard link (the stand-in's weights are read, never written), a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
