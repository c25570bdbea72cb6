"""Faults a test can inject: a disk that fills up part-way through a write."""

from __future__ import annotations

import errno
import os


class FillsUp:
    """A file object on a disk that fills up part-way: half of the first write lands, then ENOSPC."""

    def __init__(self, fh) -> None:
        self.fh = fh

    def write(self, data: bytes) -> int:
        self.fh.write(data[: len(data) // 2])
        self.fh.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()


def full_disk(monkeypatch) -> None:
    """Every atomic write (``mergesearch.io``) in this process meets a full disk part-way through."""
    import mergesearch.io as io

    real = os.fdopen
    monkeypatch.setattr(io.os, "fdopen", lambda fd, mode: FillsUp(real(fd, mode)))
