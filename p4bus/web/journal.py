"""A job's events read from the broker's journal: every event with its journal id.

The live stream (SUB) carries no journal ids, and the web's event streams need them (SSE ``id:``,
so a browser that reconnects says exactly where it stopped). So the live stream only wakes the
reader; the events themselves are always read from the journal, after per-prefix cursors, all
prefixes up to one horizon (the journal head when the read began) and merged by id, as
broker/client.py's splice does. The broker answers a replay only once the journal holds every
event it had accepted, so an event that woke us is in the next read.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from broker.client import ReplayClient

# A replay "after" no id can exceed: an empty page that carries the journal's head id.
BEYOND_HEAD = (1 << 63) - 1

Journalled = tuple[int, str, bytes, str]  # (journal id, topic, body, publisher)


class JournalCursor:
    """Where reading stopped, per prefix. ``read()`` returns everything newer, in journal order;
    ``commit(upto)`` then moves past what was handled (all of it, or up to the id where handling
    failed: the rest comes again with the next read)."""

    def __init__(self, client: ReplayClient, prefixes: list[str]) -> None:
        self.client = client
        self.cursor = dict.fromkeys(prefixes, 0)
        self._read_to = dict(self.cursor)

    def read(self) -> list[Journalled]:
        horizon = self.client.page(next(iter(self.cursor)), after=BEYOND_HEAD).head_id
        self._read_to = dict(self.cursor)
        return list(heapq.merge(*(self._stream(p, horizon) for p in self.cursor)))

    def commit(self, upto: int = BEYOND_HEAD) -> None:
        # Events come merged by id, so every event of a prefix up to ``upto`` has been handled.
        for p, read_to in self._read_to.items():
            self.cursor[p] = max(self.cursor[p], min(read_to, upto))

    def _stream(self, prefix: str, horizon: int) -> Iterator[Journalled]:
        after = self.cursor[prefix]
        while after < horizon:
            page = self.client.page(prefix, after)
            publishers = page.publishers or [""] * len(page.events)
            yield from ((i, t, b, p) for (i, t, b), p in zip(page.events, publishers, strict=True) if i <= horizon)
            after = min(horizon, page.last_id if page.more else max(page.last_id, page.head_id))
            self._read_to[prefix] = after
            if not page.more:
                return
