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

    def last(self) -> dict[str, int]:
        """The last seq stamped per kind (what a beacon carries); beacons do not count themselves."""
        return {k: seq for k, seq in self._seq.items() if k != topics.BEACON}


@dataclass
class Gap:
    publisher: str
    source: str
    kind: str
    epoch: str
    first_missing: int
    last_missing: int

    @property
    def count(self) -> int:
        return self.last_missing - self.first_missing + 1


# Epochs remembered per (publisher, source, kind): the current one and the one before, so events
# of a publisher's previous run that a replay delivers after its new run's first events are
# still deduplicated; older epochs are forgotten (a publisher restarting twice while a reader
# catches up is the only case that could then repeat an event).
EPOCHS_KEPT = 2


@dataclass
class GapDetector:
    """Tracks the highest seq seen per (publisher, source, kind, epoch); reports holes,
    duplicates and tails a beacon shows were lost.

    ``publisher`` is the broker's authenticated name of whoever published the event ("" on an
    insecure bus). Keying on it means an event forged under someone else's ``source`` counts
    against the forger: a seq of 10**15 cannot make the real publisher's events look old.

    A new epoch for a source means the publisher restarted, which the subscriber should treat
    like a hole of unknown size (reconcile with the owner). The first event seen of a key sets
    its baseline: nothing before it counts as missing (the reader may have started late).
    """

    seen: dict[tuple[str, str, str], dict[str, int]] = field(default_factory=dict)

    def highest(self, publisher: str, source: str, kind: str, epoch: str) -> int | None:
        """The highest seq seen of that key, None if none was."""
        return self.seen.get((publisher, source, kind), {}).get(epoch)

    def peek(self, source: str, topic: str, epoch: str, seq: int, publisher: str = "") -> Gap | None:
        """The hole this event would reveal, without recording anything."""
        kind = topics.kind(topic)
        last = self.highest(publisher, source, kind, epoch)
        if last is None or seq <= last + 1:
            return None
        return Gap(publisher, source, kind, epoch, last + 1, seq - 1)

    def observe(
        self, source: str, topic: str, epoch: str, seq: int, publisher: str = ""
    ) -> tuple[bool, Gap | None, bool]:
        """Returns (is_new, gap, epoch_changed). is_new is False for a duplicate/old event;
        epoch_changed is True for the first event of an epoch when another one was seen before."""
        kind = topics.kind(topic)
        epochs = self.seen.setdefault((publisher, source, kind), {})
        last = epochs.get(epoch)
        if last is not None and seq <= last:
            return False, None, False
        gap = Gap(publisher, source, kind, epoch, last + 1, seq - 1) if last is not None and seq > last + 1 else None
        restarted = last is None and bool(epochs)
        self._record(epochs, epoch, seq)
        return True, gap, restarted

    def behind(self, publisher: str, source: str, epoch: str, last: dict[str, int]) -> tuple[list[Gap], list[str]]:
        """What a beacon's ``last`` (kind -> last seq stamped) says was lost: (the tail missing
        of each kind seen in this epoch, the kinds never seen in it)."""
        gaps: list[Gap] = []
        unseen: list[str] = []
        for kind, top in last.items():
            have = self.highest(publisher, source, kind, epoch)
            if have is None:
                unseen.append(kind)
            elif top > have:
                gaps.append(Gap(publisher, source, kind, epoch, have + 1, top))
        return gaps, unseen

    def skip_to(self, publisher: str, source: str, kind: str, epoch: str, seq: int) -> None:
        """Count everything up to ``seq`` as seen: a baseline, or a hole given up on."""
        epochs = self.seen.setdefault((publisher, source, kind), {})
        if seq > epochs.get(epoch, 0):
            self._record(epochs, epoch, seq)

    @staticmethod
    def _record(epochs: dict[str, int], epoch: str, seq: int) -> None:
        if epoch not in epochs and len(epochs) >= EPOCHS_KEPT:
            del epochs[next(iter(epochs))]  # the oldest (dicts keep insertion order)
        epochs[epoch] = seq
