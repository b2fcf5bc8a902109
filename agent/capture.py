"""Bounded capture of a command's output: the first and last bytes of a stream.

Interpreters read the beginning (p4 prints its errors early) and the end (summaries) of an
output; the full output stays in the spool. Memory per stream is bounded by ``limit``.
"""

from __future__ import annotations

import os
from pathlib import Path


def _marker(omitted: int) -> bytes:
    # A visible seam, so a person or an interpreter never mistakes head+tail for contiguous text.
    return b"\n[... %d bytes omitted ...]\n" % omitted


class Capture:
    """Keeps ``limit // 2`` head bytes and the last ``limit - limit // 2`` bytes seen."""

    def __init__(self, limit: int) -> None:
        self.head_limit = max(limit, 0) // 2
        self.tail_limit = max(limit, 0) - self.head_limit
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self.total += len(data)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if not data or not self.tail_limit:
            return
        if len(data) >= self.tail_limit:
            self.tail = bytearray(data[-self.tail_limit :])
            return
        self.tail += data
        # Trim lazily (at twice the limit) so a stream of small reads costs amortised O(1).
        if len(self.tail) > 2 * self.tail_limit:
            del self.tail[: len(self.tail) - self.tail_limit]

    @property
    def truncated(self) -> bool:
        return self.total > self.head_limit + self.tail_limit

    def value(self) -> bytes:
        tail = bytes(self.tail[-self.tail_limit :]) if self.tail_limit else b""
        if not self.truncated:
            return bytes(self.head) + tail
        return bytes(self.head) + _marker(self.total - len(self.head) - len(tail)) + tail


def capture_file(path: Path, limit: int) -> Capture:
    """The capture a live reader would have built, rebuilt from a spool file (restart recovery)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return Capture(limit)
    try:
        return capture_fd(fd, limit)
    finally:
        os.close(fd)


def capture_fd(fd: int, limit: int) -> Capture:
    """``capture_file`` of a file already open (read with pread: its offset is left alone)."""
    cap = Capture(limit)
    size = os.fstat(fd).st_size
    if size:
        cap.feed(os.pread(fd, min(size, cap.head_limit), 0))
        start = max(size - cap.tail_limit, len(cap.head))
        if start < size:
            cap.tail = bytearray(os.pread(fd, size - start, start))
        cap.total = size
    return cap
