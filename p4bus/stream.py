"""Reassembling a command's output from chunks: in order, no gap, no duplicate.

Chunks are addressed by (cmd_id, stream, byte offset). PUB/SUB may drop or the subscriber
may join late, so a cursor per stream tells what is next; anything missing is fetched from
the agent's spool, which always has the full output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from common import protocol as P


@dataclass
class Cursor:
    """Next expected byte offset of one stream."""

    next: int = 0

    def accept(self, offset: int, data: bytes) -> tuple[bytes, tuple[int, int] | None]:
        """Returns (bytes to emit now, missing range (start, end) before this chunk or None).

        A chunk that starts beyond ``next`` is held back: the caller fetches the missing range,
        emits it, and offers the chunk again.
        """
        end = offset + len(data)
        if end <= self.next:
            return b"", None  # already seen
        if offset > self.next:
            return b"", (self.next, offset)
        out = data[self.next - offset :]
        self.next = end
        return out, None


class MissingOutput(RuntimeError):
    """The spool has no bytes where the command's output should continue."""


Fetcher = Callable[[int, int, int], tuple[bytes, int]]  # (stream, offset, size) -> (data, total)
Sink = Callable[[int, bytes], None]  # (stream, data)


class OutputAssembler:
    """Feeds chunks for one command to a sink in order, fetching gaps through ``fetch``."""

    def __init__(self, fetch: Fetcher, sink: Sink) -> None:
        self.fetch = fetch
        self.sink = sink
        self.cursors = {P.STDOUT: Cursor(), P.STDERR: Cursor()}
        self.fetched_bytes = 0

    def chunk(self, stream: int, offset: int, data: bytes) -> None:
        cur = self.cursors[stream]
        out, missing = cur.accept(offset, data)
        if missing:
            self.fill(stream, missing[1])
            out, _ = cur.accept(offset, data)
        if out:
            self.sink(stream, out)

    def fill(self, stream: int, upto: int) -> None:
        """Fetch and emit everything of ``stream`` from the cursor up to byte ``upto``."""
        cur = self.cursors[stream]
        while cur.next < upto:
            data, _total = self.fetch(stream, cur.next, min(upto - cur.next, 4 << 20))
            if not data:
                raise MissingOutput(
                    f"the agent's spool has no {P.STREAM_NAMES[stream]} bytes at offset {cur.next} "
                    f"(expected up to {upto})"
                )
            self.fetched_bytes += len(data)
            out, _ = cur.accept(cur.next, data)
            self.sink(stream, out)

    def finish(self, status: P.CmdStatus) -> None:
        """The command is done: emit whatever the live stream did not deliver."""
        self.fill(P.STDOUT, status.stdout_bytes)
        self.fill(P.STDERR, status.stderr_bytes)
