"""Reassembling a command's output from chunks: in order, no gap, no duplicate.

Chunks are addressed by (cmd_id, stream, byte offset). PUB/SUB may drop or the subscriber
may join late, so a cursor per stream tells what is next; anything missing is fetched from
the agent's spool, which always has the full output. With several brokers a missing chunk is
first waited for a moment (``HoldBack``): the other broker's copy usually brings it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from common import protocol as P

E = TypeVar("E")


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


Gap = tuple[str, int, int]  # (cmd_id, stream, the first byte missing)


class HoldBack(Generic[E]):
    """Events that arrive past an open hole in a command's output, held for up to ``grace_s``
    before the hole is filled from the agent's spool: with several brokers, one broker's stream
    can skip a chunk (a subscriber queue full, the broker dying) that the other's copy brings a
    moment later, and that costs nothing if it is waited for.

    ``offer`` takes events in arrival order and hands them to ``handle`` in that order, except
    that an event filling the hole at the head goes first (it is the next byte of that stream).
    The head waits until its hole is filled or it has waited ``grace_s`` (``expire``, called by
    the reader at least every ``waiting_s()``); then ``repair(gap)`` may bring the missing
    events from elsewhere (the brokers' journals: a broker drops a slow subscriber's events
    past its queue, and its journal still has them), and whatever is still missing the spool
    fills when the head is handled. ``gap(event)``: the hole handling it now would fill from the
    spool (None: none); ``fills(event, gap)``: whether it brings that hole's first missing
    byte. With ``grace_s`` 0 (one broker) every event is handled at once.
    """

    def __init__(
        self,
        grace_s: float,
        gap: Callable[[E], Gap | None],
        fills: Callable[[E, Gap], bool],
        handle: Callable[[E], None],
        repair: Callable[[Gap], list[E]] = lambda _gap: [],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace_s = grace_s
        self.gap = gap
        self.fills = fills
        self.handle = handle
        self.repair = repair
        self.clock = clock
        self.held: deque[tuple[float, E]] = deque()
        self.waiting: Gap | None = None  # the head's hole, once looked for among the held

    def offer(self, event: E) -> None:
        if not self.held and (self.grace_s <= 0 or self.gap(event) is None):
            self.handle(event)
            return
        self.held.append((self.clock(), event))
        if len(self.held) == 1 or (self.waiting is not None and self.fills(event, self.waiting)):
            self._release(force=False)

    def expire(self) -> None:
        """Handle what has waited ``grace_s``, and whatever then is not past a hole."""
        if self.held and self.clock() - self.held[0][0] >= self.grace_s:
            self._release(force=False)

    def flush(self) -> None:
        """Handle everything held now (the job has ended: the spools fill what is missing)."""
        self._release(force=True)

    def waiting_s(self) -> float | None:
        """How long until the head has waited ``grace_s`` (None: nothing held)."""
        if not self.held:
            return None
        return max(0.0, self.held[0][0] + self.grace_s - self.clock())

    def _release(self, force: bool) -> None:
        repaired: list[E] = []  # what the repairs of this release brought
        asked: set[tuple[str, int]] = set()  # of which (cmd_id, stream)
        while self.held:
            arrived, event = self.held[0]
            gap = self.gap(event)
            if gap is not None and (force or self.clock() - arrived >= self.grace_s):
                if gap[:2] not in asked and not any(self.fills(e, gap) for e in repaired):
                    asked.add(gap[:2])
                    repaired += self.repair(gap)
                brought = next((e for e in repaired if self.fills(e, gap)), None)
                if brought is not None:
                    repaired.remove(brought)
                    self.handle(brought)
                    continue
                gap = None  # nowhere else to get it: the spool fills it
            if gap is None:
                self.held.popleft()
                self.handle(event)
                continue
            filler = next((i for i, (_t, e) in enumerate(self.held) if i and self.fills(e, gap)), None)
            if filler is None:
                self.waiting = gap
                return
            _t, e = self.held[filler]
            del self.held[filler]
            self.handle(e)
        self.waiting = None
