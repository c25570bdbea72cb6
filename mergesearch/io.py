"""Atomic file and directory writes: a crash or a bad input never leaves partial output behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``final`` only if the block succeeds. A write the
    disk refuses inside the block is reported as ``final``'s (the user named it, not our temp folder)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(_beside(final, tempfile.mkdtemp))
    tmp.chmod(0o755)  # mkdtemp makes 0700; the final folder should read like any other
    try:
        yield tmp
        _make_readable(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as err:
        named = str(err.filename).replace(str(tmp), str(final)) if err.filename else str(final)
        raise refused_write(err, named) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _beside(final: Path, make: Callable[..., T]) -> T:
    """A temp file or folder next to ``final``; a folder that refuses it is reported as ``final``'s error
    (the user named ``final``, not our temp name)."""
    try:
        return make(prefix=f".{final.name}.tmp-", dir=final.parent)
    except OSError as err:
        raise OSError(err.errno, f"cannot write here ({err.strerror})", str(final)) from None


def refused_write(err: OSError, path: str) -> OSError:
    """The system's refusal, naming ``path`` and saying why in the system's words ("No space left on
    device"), also when it came from a library (pyarrow) that names no file."""
    reason = os.strerror(err.errno) if err.errno else (err.strerror or str(err))
    return OSError(err.errno, reason, path)


def _make_readable(folder: Path) -> None:
    """Files written through private temp files (safetensors, mkstemp) come out 0600; publish them 0644."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o644)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory and a rename. A write the disk
    refuses part-way (full, quota, read-only) leaves the previous file as it was and no temp file, and is
    reported as ``path``'s error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _beside(path, tempfile.mkstemp)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # the bytes are on disk before the rename publishes them
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except OSError as err:
        raise refused_write(err, str(path)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temp file in the same directory and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))
