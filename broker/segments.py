"""Append-only segment files holding the journal's event bodies.

A journal ``<path>`` keeps its bodies in ``<path>-segments/`` (a sibling of SQLite's ``-wal`` and
``-shm`` files, so ``rm journal.db*`` removes the whole journal). Each segment is named by the
first event id it holds, zero-padded so a listing sorts by id: ``00000000000000000042.seg``.
Bodies are appended back to back; the SQLite row of an event says (segment, offset, length).

Durability: bodies are written with plain ``write`` (the page cache), never fsynced. The
journal is history for late subscribers; the agents' spools are the source of truth for every
byte of output. A process crash loses nothing that was written (the kernel has it); a power
loss or kernel crash can lose the last seconds of bodies, which start-up detects as rows that
point past a segment's end and drops (see ``journal_writer.recover``).

Ordering rule that makes crash recovery simple: a batch's bodies are written *before* the
transaction that commits its rows, so a committed row never points past what was written. After
a crash the newest segment may hold bytes no row points at (written, not committed): start-up
truncates them.
"""

from __future__ import annotations

import errno
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

SUFFIX = ".seg"
# Buffers per writev call (Linux IOV_MAX).
IOV_MAX = 1024
# Open segment descriptors a reader keeps (LRU).
READER_FDS = 8


def segments_dir(journal: Path) -> Path:
    return journal.with_name(journal.name + "-segments")


def name(first_id: int) -> str:
    return f"{first_id:020d}{SUFFIX}"


def list_segments(directory: Path) -> list[int]:
    """The segments in ``directory`` (their first ids), oldest first."""
    out = []
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    for entry in entries:
        stem = entry[: -len(SUFFIX)]
        if entry.endswith(SUFFIX) and stem.isdigit():
            out.append(int(stem))
    return sorted(out)


def writev_all(fd: int, bufs: Sequence[bytes | memoryview]) -> int:
    """Write every buffer in order (one syscall per IOV_MAX buffers, short writes resumed)."""
    views = [memoryview(b).cast("B") for b in bufs if len(b)]
    total = 0
    i = 0
    while i < len(views):
        chunk = views[i : i + IOV_MAX]
        n = os.writev(fd, chunk)
        if n == 0:  # a regular file returns 0 only when nothing more can be written
            raise OSError(errno.ENOSPC, "no progress writing a journal segment")
        total += n
        # Skip the buffers written whole; resume a partly written one from where it stopped.
        while n and n >= len(views[i]):
            n -= len(views[i])
            i += 1
        if n:
            views[i] = views[i][n:]
    return total


class Segment:
    """The segment being appended to (writer thread only)."""

    def __init__(self, directory: Path, first_id: int) -> None:
        self.first_id = first_id
        self.path = directory / name(first_id)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size

    def append(self, bufs: Sequence[bytes | memoryview]) -> None:
        """Append the buffers. On an error (disk full...) the segment is cut back to where it
        was, so the next batch starts on a clean end, and the error propagates."""
        start = self.size
        try:
            self.size += writev_all(self.fd, bufs)
        except OSError:
            self.truncate(start)
            raise

    def truncate(self, size: int) -> None:
        """Cut the tail written for rows that were not committed."""
        try:
            os.ftruncate(self.fd, size)
            self.size = size
        except OSError:
            # Leave self.size past the junk: offsets stay right, the junk is just unused bytes.
            self.size = os.fstat(self.fd).st_size

    def close(self) -> None:
        os.close(self.fd)


class SegmentReader:
    """pread of bodies, with a small LRU of open descriptors (one reader thread)."""

    def __init__(self, directory: Path, max_fds: int = READER_FDS) -> None:
        self.directory = directory
        self.max_fds = max_fds
        self._fds: OrderedDict[int, int] = OrderedDict()

    def read(self, seg: int, off: int, length: int) -> bytes | None:
        """The body, or None when it is gone: its segment was pruned after the row was read,
        or lost in a crash (a short read)."""
        if length == 0:
            return b""
        fd = self._fd(seg)
        if fd is None:
            return None
        data = os.pread(fd, length, off)
        if len(data) == length:
            return data
        # The kernel may return fewer bytes than asked only at the end of the file.
        return None

    def sweep(self) -> None:
        """Close descriptors of segments that pruning has unlinked, so their space is freed."""
        for seg, fd in list(self._fds.items()):
            if os.fstat(fd).st_nlink == 0:
                os.close(fd)
                del self._fds[seg]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _fd(self, seg: int) -> int | None:
        fd = self._fds.get(seg)
        if fd is not None:
            self._fds.move_to_end(seg)
            return fd
        try:
            fd = os.open(self.directory / name(seg), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        self._fds[seg] = fd
        if len(self._fds) > self.max_fds:
            _seg, old = self._fds.popitem(last=False)
            os.close(old)
        return fd
