"""Stand-ins cached by what they are made from, so that a rehearsal run again (after fixing what the last
one found, or to run the job after a ``--no-run``) reuses them instead of writing them again.

Writing them is most of what a rehearsal spends before its job runs (the forward passes that script their
heads). What they are depends only on each source folder's ``config.json`` and tokenizer
files (and path: a stand-in names what it stands for), the role and name each plays, its refusal share,
the code that writes them and the libraries that compute them: the key hashes all of these, so a changed
folder, stand-in, code or library writes a new set. The set is cached whole (stand-ins of one
architecture share their scripted vocabulary). Each rehearsal gets folders of its own: copies of the small
files, a hard link to the weights (read-only in the cache; a copy where the cache is on another file
system). Sets are not pruned:
``rm -r $MERGESEARCH_CACHE/standins`` frees them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from mergesearch import model_files
from mergesearch.rehearsal import scripts, standins
from mergesearch.rehearsal.standins import StandIn, standin_line, write_standins
from mergesearch.runtime import cache_root

RECORD = "stand_ins.json"  # what write_standins returned: each stand-in's role and calibration
# The code that decides what a stand-in is: a change to any of it is a new set.
CODE = (standins.__file__, scripts.__file__, model_files.__file__, __file__)
LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors")  # they compute and write it
# A folder's weights are never read (a stand-in is made from its config and tokenizer): not hashed.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")


def standins_key(wanted: Sequence[StandIn]) -> str:
    """The hash of everything ``write_standins(wanted)`` reads or records: each source folder's path
    (a stand-in names what it stands for) and every file in it but weights (config, tokenizer and
    template files, whichever the tokenizer reads), each stand-in's role, name and refusal share, the code
    and the libraries' versions."""
    from importlib.metadata import version

    digest = hashlib.sha256(json.dumps([version(name) for name in LIBRARIES]).encode())
    for path in CODE:
        digest.update(Path(path).read_bytes())
    for s in wanted:
        source = s.source.resolve()
        digest.update(json.dumps([str(source), s.name, s.role, s.refusal_share]).encode())
        for file in sorted(source.iterdir()) if source.is_dir() else ():
            if file.is_file() and not file.name.endswith(WEIGHT_SUFFIXES):
                digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def cached_standins(wanted: Sequence[StandIn], out: Path, log: Callable[[str], None] = print) -> dict:
    """``write_standins(wanted, out)``, from the model cache when these stand-ins were written before."""
    folder = cache_root() / "standins" / standins_key(wanted)
    cached = (folder / RECORD).is_file()
    if not cached:
        _write_once(wanted, folder, log)
    written = json.loads((folder / RECORD).read_text())
    for s in wanted:
        target = out / s.name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(folder / s.name, target, copy_function=_link_or_copy)
        if cached:
            log(f"{standin_line(s.name, written[s.name])} (cached)")
    return written


def _write_once(wanted: Sequence[StandIn], folder: Path, log: Callable[[str], None]) -> None:
    """The set written beside ``folder`` and moved there, read-only (rehearsals hard-link its files, so
    a write through one of them must fail rather than change every later rehearsal's stand-ins). When
    another rehearsal wrote the same set meanwhile, its copy is kept: the first to finish wins, and no
    rehearsal's source is removed under it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        (tmp / RECORD).write_text(json.dumps(write_standins(wanted, tmp, log), indent=1))
        for path in tmp.rglob("*"):
            if path.is_file():
                path.chmod(0o444)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, folder)
        except OSError:  # there already: written by another rehearsal since this one looked
            if not (folder / RECORD).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _link_or_copy(source: str, target: str) -> None:
    """The weights hard-linked (nothing writes a safetensors file in place; a user may well edit a
    config.json), the rest copied; a copy across file systems."""
    if source.endswith(".safetensors"):
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copy2(source, target)
    os.chmod(target, 0o644)  # a rehearsal's own file, as write_standins leaves it
