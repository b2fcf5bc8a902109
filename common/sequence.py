"""Event stamping (publisher side) and gap detection (subscriber side)."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from common import topics


class Stamper:
    """Hands out (source, epoch, seq) with one hole-free counter per topic kind."""

    def __init__(self, source: str, epoch: str) -> None:
        self.source = source
        self.epoch = epoch
        self._seq: dict[str, int] = defaultdict(int)

    def stamp(self, topic: str) -> dict:
        k = topics.kind(topic)
        self._seq[k] += 1
        return {"topic": topic, "source": self.source, "epoch": self.epoch, "seq": self._seq[k], "ts": time.time()}


@dataclass
class Gap:
    publisher: str
    source: str
    kind: str
    epoch: str
    first_missing: int
    last_missing: int


@dataclass
class GapDetector:
    """Tracks the last seq seen per (publisher, source, kind); reports holes and duplicates.

    ``publisher`` is the broker's authenticated name of whoever published the event ("" on an
    insecure bus). Keying on it means an event forged under someone else's ``source`` counts
    against the forger: a seq of 10**15 cannot make the real publisher's events look old.

    A new epoch for a source resets its counter: the publisher restarted, which the
    subscriber should treat like a hole of unknown size (reconcile with the owner).
    """

    last: dict[tuple[str, str, str], tuple[str, int]] = field(default_factory=dict)

    def observe(
        self, source: str, topic: str, epoch: str, seq: int, publisher: str = ""
    ) -> tuple[bool, Gap | None, bool]:
        """Returns (is_new, gap, epoch_changed). is_new is False for a duplicate/old event."""
        key = (publisher, source, topics.kind(topic))
        prev = self.last.get(key)
        if prev is None or prev[0] != epoch:
            self.last[key] = (epoch, seq)
            return True, None, prev is not None
        last_seq = prev[1]
        if seq <= last_seq:
            return False, None, False
        self.last[key] = (epoch, seq)
        gap = Gap(publisher, source, key[2], epoch, last_seq + 1, seq - 1) if seq > last_seq + 1 else None
        return True, gap, False
