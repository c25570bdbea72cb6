"""Which weight files a block of code reads, native opens and memory maps included (Linux only).

``reading_weights(*roots)`` records, for this process, every weight file (*.safetensors, *.bin, *.pt, *.pth,
*.gguf) that the block opens, maps or pages in. A Python audit hook on ``open`` alone misses most of that:
safetensors (Rust) opens and mmaps its files natively, and transformers loads through it. Four signals:

- ``events``: a kernel watch on every weight file under ``roots`` (directories are walked, symlinks such as
  the Hugging Face cache's are followed). fanotify reports each open or read() of a watched file with the
  id of the process that made it, so only this process's count; where fanotify is refused (a kernel
  before 5.13 or a seccomp policy) inotify watches the same files, but it cannot tell processes apart,
  so another process's reads count too (an over-count, never an under-count). An open that is closed
  again inside the block, which no snapshot can see, is caught here.
- ``mapped``: weight files mapped in ``/proc/self/maps`` at the end of the block but not at its start.
- ``paged``: weight files already mapped before the block whose resident pages grew during it (reads by
  page fault through an old mapping open nothing; ``/proc/self/smaps`` Rss shows them).
- ``python_open``: weight files opened through Python (the ``open`` audit event), anywhere.

The last three see files outside ``roots`` too; a file mapped and unmapped inside the block outside
``roots`` is seen only if Python opened it. ``count`` is the number of weight files read. Where that
cannot be measured (not Linux, no file under ``roots`` watched, or a watch that lost events) it is None,
never 0; if files were seen all the same, it is their number, a lower bound. Bytes: ``paged_bytes``
(pages faulted in through mappings alive at both ends), ``file_bytes`` (total size of the files read: an
upper bound for what they gave) and ``read_bytes`` (``/proc/self/io`` rchar: every read() this process
and the children it reaped made, on any file, pipe or socket; page faults on a mapping are not in it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
SIGNALS = ("events", "mapped", "paged", "python_open")

# fanotify / inotify constants (linux/fanotify.h, linux/inotify.h).
_FAN_CLOEXEC, _FAN_NONBLOCK, _FAN_REPORT_FID = 0x1, 0x2, 0x200
_FAN_ACCESS, _FAN_OPEN, _FAN_Q_OVERFLOW = 0x1, 0x20, 0x4000
_FAN_MARK_ADD = 0x1
_FAN_EVENT_INFO_TYPE_FID = 1
_IN_ACCESS, _IN_OPEN, _IN_Q_OVERFLOW, _IN_NONBLOCK, _IN_CLOEXEC = 0x1, 0x20, 0x4000, 0o4000, 0o2000000
_AT_FDCWD, _AT_SYMLINK_FOLLOW, _AT_HANDLE_FID = -100, 0x400, 0x200
_MAX_HANDLE_SZ = 128
_EVENT = struct.Struct("=IBBHQii")  # struct fanotify_event_metadata
_INFO = struct.Struct("=BBH8sIi")  # info header, fsid, file_handle's handle_bytes and handle_type
_INOTIFY = struct.Struct("=iIII")  # struct inotify_event, before its name


def is_weight_file(path: str) -> bool:
    return path.endswith(WEIGHT_SUFFIXES)


@dataclass
class WeightReads:
    """What one block read; filled in when the block ends."""

    mechanism: str = "unavailable"  # "fanotify", "inotify" (any process), "none" (no watch) or "unavailable"
    watched: int = 0  # weight files under watch
    lost_events: bool = False
    by_signal: dict[str, set[str]] = field(default_factory=lambda: {s: set() for s in SIGNALS})
    paged_bytes: int | None = None
    file_bytes: int | None = None
    read_bytes: int | None = None

    @property
    def files(self) -> set[str]:
        return set().union(*self.by_signal.values())

    @property
    def count(self) -> int | None:
        """Weight files read in the block; None where that cannot be known (see the module docstring)."""
        complete = self.mechanism in ("fanotify", "inotify") and self.watched and not self.lost_events
        return len(self.files) if complete or self.files else None

    def summary(self) -> dict:
        return {
            "weight_files_read": self.count,
            "weight_files": sorted(self.files),
            "mechanism": self.mechanism,
            "paged_bytes": self.paged_bytes,
            "file_bytes": self.file_bytes,
            "read_bytes": self.read_bytes,
        }


@contextlib.contextmanager
def reading_weights(*roots: str | os.PathLike) -> Iterator[WeightReads]:
    """Record the weight files this process reads inside the block (see the module docstring)."""
    reads = WeightReads()
    if not (sys.platform.startswith("linux") and os.path.exists("/proc/self/maps")):
        yield reads
        return
    names = _weight_files(roots)  # real path -> the path it was found under
    watch = _Watch.start(names)
    reads.mechanism, reads.watched = (watch.mechanism, len(names)) if watch else ("none", 0)
    rss_before = _mapped_rss(names)
    seen = _PythonOpens.start(names)
    io_before = _io()
    try:
        yield reads
    finally:
        io_after = _io()
        _PythonOpens.stop(seen)
        rss_after = _mapped_rss(names)
        if watch:
            reads.lost_events = watch.drain(reads.by_signal["events"])
            watch.close()
        show = lambda path: names.get(path, path)
        reads.by_signal["python_open"] = {show(p) for p in seen}
        reads.by_signal["mapped"] = {show(p) for p in rss_after.keys() - rss_before.keys()}
        grown = {p: rss_after[p] - rss_before[p] for p in rss_after.keys() & rss_before.keys()}
        reads.by_signal["paged"] = {show(p) for p, g in grown.items() if g > 0}
        reads.paged_bytes = sum(g for g in grown.values() if g > 0)
        reads.file_bytes = sum(_size(p) for p in reads.files)
        if io_before is not None and io_after is not None:
            reads.read_bytes = io_after[0] - io_before[0] - io_before[1]


def _weight_files(roots: Iterable[str | os.PathLike]) -> dict[str, str]:
    found: dict[str, str] = {}
    for root in roots:
        root = os.fspath(root)
        if os.path.isfile(root):
            candidates: Iterable[str] = [root]
        else:
            candidates = (
                os.path.join(d, f) for d, _, files in os.walk(root, followlinks=True) for f in files
            )
        for path in candidates:
            real = os.path.realpath(path)
            if is_weight_file(path) and os.path.isfile(real):
                found.setdefault(real, os.path.abspath(path))
    return found


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _io() -> tuple[int, int] | None:
    """This process's rchar, and the bytes this read of /proc/self/io added to it."""
    try:
        fd = os.open("/proc/self/io", os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(fd, 4096)
        finally:
            os.close(fd)
        rchar = next(line for line in text.split(b"\n") if line.startswith(b"rchar:"))
        return int(rchar.split()[1]), len(text)
    except (OSError, StopIteration, ValueError):
        return None  # /proc/self/io needs CONFIG_TASK_IO_ACCOUNTING


def _mapped_rss(names: dict[str, str]) -> dict[str, int]:
    """Resident bytes of each mapped weight file (summed over its mappings), from /proc/self/smaps."""
    rss: dict[str, int] = {}
    current = None
    with contextlib.suppress(OSError), open("/proc/self/smaps") as fh:
        for line in fh:
            first = line.split(None, 1)[0]
            if first.endswith(":"):
                if current is not None and first == "Rss:":
                    rss[current] += int(line.split()[1]) * 1024
            else:  # a mapping's header: address perms offset dev inode [path]
                parts = line.split(None, 5)
                path = parts[5].rstrip("\n") if len(parts) == 6 else ""
                path = path.removesuffix(" (deleted)")
                current = path if is_weight_file(path) or path in names else None
                if current is not None:
                    rss.setdefault(current, 0)
    return rss


class _PythonOpens:
    """The `open` audit event (installed once per process; audit hooks cannot be removed)."""

    installed = False
    active: list[tuple[dict[str, str], set[str]]] = []
    lock = threading.Lock()

    @classmethod
    def start(cls, names: dict[str, str]) -> set[str]:
        seen: set[str] = set()
        with cls.lock:
            if not cls.installed:
                sys.addaudithook(cls._hook)
                cls.installed = True
            cls.active.append((names, seen))
        return seen

    @classmethod
    def stop(cls, seen: set[str]) -> None:
        with cls.lock:
            cls.active[:] = [(n, s) for n, s in cls.active if s is not seen]

    @staticmethod
    def _hook(event: str, args: tuple) -> None:
        if event != "open" or not _PythonOpens.active or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.fsdecode(args[0])
        real = os.path.realpath(path)
        for names, seen in list(_PythonOpens.active):
            if real in names:  # under the roots (a cache blob, reached through its link, included)
                seen.add(real)
            elif is_weight_file(path):
                seen.add(os.path.abspath(path))


class _Watch:
    """A kernel watch on a set of files: fanotify where allowed, else inotify."""

    mechanism = ""

    @staticmethod
    def start(names: dict[str, str]) -> _Watch | None:
        if not names:
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            return None
        for kind in (_Fanotify, _Inotify):
            try:
                return kind(libc, names)
            except (OSError, AttributeError):
                continue
        return None

    def drain(self, into: set[str]) -> bool:
        """Add the files read to `into`; True when the kernel dropped events (its queue overflowed)."""
        raise NotImplementedError

    def close(self) -> None:
        os.close(self.fd)

    def _read_all(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def _fail(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


class _Fanotify(_Watch):
    """Inode marks reporting file ids (what an unprivileged process may use since Linux 5.13)."""

    mechanism = "fanotify"

    def __init__(self, libc: ctypes.CDLL, names: dict[str, str]) -> None:
        libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        libc.fanotify_mark.argtypes = [
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint64,
            ctypes.c_int,
            ctypes.c_char_p,
        ]
        self.fd = libc.fanotify_init(_FAN_CLOEXEC | _FAN_NONBLOCK | _FAN_REPORT_FID, os.O_RDONLY)
        if self.fd < 0:
            raise _fail("fanotify_init")
        self.handles: dict[tuple[int, bytes], str] = {}
        try:
            for real, shown in names.items():
                if libc.fanotify_mark(
                    self.fd, _FAN_MARK_ADD, _FAN_OPEN | _FAN_ACCESS, _AT_FDCWD, os.fsencode(real)
                ):
                    raise _fail(f"fanotify_mark {real}")
                handle = _file_handle(libc, real)
                if handle is not None:
                    self.handles[handle] = shown
        except OSError:
            self.close()
            raise

    def drain(self, into: set[str]) -> bool:
        data, lost, pid, offset = self._read_all(), False, os.getpid(), 0
        while offset + _EVENT.size <= len(data):
            length, _, _, meta_len, mask, fd, event_pid = _EVENT.unpack_from(data, offset)
            if fd >= 0:
                os.close(fd)
            if mask & _FAN_Q_OVERFLOW:
                lost = True
            elif event_pid == pid:  # another process's events carry its pid (or 0, to an unprivileged reader)
                into.add(self._name(data[offset + meta_len : offset + length]))
            offset += max(length, _EVENT.size)
        return lost

    def _name(self, info: bytes) -> str:
        if len(info) >= _INFO.size:
            kind, _, _, _, size, handle_type = _INFO.unpack_from(info)
            if kind == _FAN_EVENT_INFO_TYPE_FID:
                shown = self.handles.get((handle_type, info[_INFO.size : _INFO.size + size]))
                if shown is not None:
                    return shown
        return "<a watched weight file>"  # every mark is on a weight file, so it still counts


def _file_handle(libc: ctypes.CDLL, path: str) -> tuple[int, bytes] | None:
    """The (type, bytes) file handle fanotify reports for `path`."""
    buffer = ctypes.create_string_buffer(8 + _MAX_HANDLE_SZ)
    mount_id = ctypes.c_int()
    for flags in (_AT_SYMLINK_FOLLOW, _AT_SYMLINK_FOLLOW | _AT_HANDLE_FID):
        struct.pack_into("=Ii", buffer, 0, _MAX_HANDLE_SZ, 0)
        if libc.name_to_handle_at(_AT_FDCWD, os.fsencode(path), buffer, ctypes.byref(mount_id), flags) == 0:
            size, handle_type = struct.unpack_from("=Ii", buffer)
            return handle_type, buffer.raw[8 : 8 + size]
        if ctypes.get_errno() not in (errno.EOPNOTSUPP, errno.EINVAL):
            break
    return None


class _Inotify(_Watch):
    """File watches; inotify does not say which process read, so every process's reads count."""

    mechanism = "inotify"

    def __init__(self, libc: ctypes.CDLL, names: dict[str, str]) -> None:
        self.fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self.fd < 0:
            raise _fail("inotify_init1")
        self.watches: dict[int, str] = {}
        try:
            for real, shown in names.items():
                wd = libc.inotify_add_watch(self.fd, os.fsencode(real), _IN_OPEN | _IN_ACCESS)
                if wd < 0:
                    raise _fail(f"inotify_add_watch {real}")
                self.watches.setdefault(wd, shown)
        except OSError:
            self.close()
            raise

    def drain(self, into: set[str]) -> bool:
        data, lost, offset = self._read_all(), False, 0
        while offset + _INOTIFY.size <= len(data):
            wd, mask, _, name_len = _INOTIFY.unpack_from(data, offset)
            if mask & _IN_Q_OVERFLOW:
                lost = True
            elif wd in self.watches:
                into.add(self.watches[wd])
            offset += _INOTIFY.size + name_len
        return lost


__all__ = ["WeightReads", "is_weight_file", "reading_weights"]
