"""Event stamping (publisher side) and gap detection (subscriber side)."""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Callable
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
# Open holes remembered per run when holes are kept (several brokers). Past it the oldest is
# given up: a copy of it arriving later counts as a duplicate. Two brokers' streams drift apart
# by at most their queues (a subscriber's RCVHWM, 10,000 events), so a hole that old is lost.
MAX_HOLES = 10_000


@dataclass
class _Run:
    """One (publisher, source, kind, epoch): the highest seq seen and, when holes are kept, the
    ranges below it not seen yet as (first, last, opened_at), sorted and disjoint."""

    top: int
    holes: list[tuple[int, int, float]] = field(default_factory=list)

    def fill(self, seq: int) -> bool:
        """Take ``seq`` out of the hole that holds it; False if no hole does (seen before)."""
        i = bisect.bisect_right(self.holes, seq, key=lambda h: h[0]) - 1
        if i < 0 or seq > self.holes[i][1]:
            return False
        first, last, opened = self.holes[i]
        pieces = [(a, b, opened) for a, b in ((first, seq - 1), (seq + 1, last)) if a <= b]
        self.holes[i : i + 1] = pieces
        return True


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

    ``keep_holes`` (a subscriber of several brokers): an event at or below the highest seq is
    not necessarily a duplicate. Each broker forwards a publisher's events in order, but one
    broker may have dropped seq 5 and delivered 6 before the other delivers its 5: that 5 fills
    a hole and is new, once; a second copy of it is a duplicate. The holes stay open until a
    copy fills them or the caller gives them up (``give_up``) after its repair path found
    nothing, so a hole is news only when no broker filled it. With one broker a seq below the
    highest can only be a copy, and no holes are kept.
    """

    keep_holes: bool = False
    clock: Callable[[], float] = time.monotonic
    seen: dict[tuple[str, str, str], dict[str, _Run]] = field(default_factory=dict)

    def highest(self, publisher: str, source: str, kind: str, epoch: str) -> int | None:
        """The highest seq seen of that key, None if none was."""
        run = self.seen.get((publisher, source, kind), {}).get(epoch)
        return None if run is None else run.top

    def peek(self, source: str, topic: str, epoch: str, seq: int, publisher: str = "") -> Gap | None:
        """The hole this event would reveal, without recording anything."""
        kind = topics.kind(topic)
        last = self.highest(publisher, source, kind, epoch)
        if last is None or seq <= last + 1:
            return None
        return Gap(publisher, source, kind, epoch, last + 1, seq - 1)

    def is_new(self, source: str, topic: str, epoch: str, seq: int, publisher: str = "") -> bool:
        """Whether ``observe`` would call this event new, without recording anything (a reader
        that records an event only once it has handled it, so one it failed on comes again)."""
        run = self.seen.get((publisher, source, topics.kind(topic)), {}).get(epoch)
        if run is None or seq > run.top:
            return True
        i = bisect.bisect_right(run.holes, seq, key=lambda h: h[0]) - 1
        return self.keep_holes and i >= 0 and seq <= run.holes[i][1]

    def observe(
        self, source: str, topic: str, epoch: str, seq: int, publisher: str = ""
    ) -> tuple[bool, Gap | None, bool]:
        """Returns (is_new, gap, epoch_changed). is_new is False for a duplicate/old event (with
        ``keep_holes``, True for the first copy of a seq that fills a hole); gap is the hole this
        event opens; epoch_changed is True for the first event of an epoch when another one was
        seen before."""
        kind = topics.kind(topic)
        epochs = self.seen.setdefault((publisher, source, kind), {})
        run = epochs.get(epoch)
        if run is None:
            self._record(epochs, epoch, seq)
            return True, None, len(epochs) > 1
        if seq <= run.top:
            return (self.keep_holes and run.fill(seq)), None, False
        gap = Gap(publisher, source, kind, epoch, run.top + 1, seq - 1) if seq > run.top + 1 else None
        if gap is not None and self.keep_holes:
            run.holes.append((gap.first_missing, gap.last_missing, self.clock()))
            if len(run.holes) > MAX_HOLES:
                del run.holes[0]
        run.top = seq
        return True, gap, False

    def holes(
        self, publisher: str, source: str, kind: str, epoch: str, opened_before: float | None = None
    ) -> list[Gap]:
        """The open holes of that key (only those opened before ``opened_before``, if given)."""
        run = self.seen.get((publisher, source, kind), {}).get(epoch)
        if run is None:
            return []
        return [
            Gap(publisher, source, kind, epoch, a, b)
            for a, b, opened in run.holes
            if opened_before is None or opened < opened_before
        ]

    def give_up(self, gap: Gap) -> None:
        """Count ``gap``'s range as seen: it was reported lost, so a late copy is a duplicate."""
        run = self.seen.get((gap.publisher, gap.source, gap.kind), {}).get(gap.epoch)
        if run is None:
            return
        kept: list[tuple[int, int, float]] = []
        for first, last, opened in run.holes:
            if last < gap.first_missing or first > gap.last_missing:
                kept.append((first, last, opened))
                continue
            kept += [
                (x, y, opened) for x, y in ((first, gap.first_missing - 1), (gap.last_missing + 1, last)) if x <= y
            ]
        run.holes = kept

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
        run = epochs.get(epoch)
        if run is None:
            self._record(epochs, epoch, seq)
        elif seq > run.top:
            run.top = seq

    @staticmethod
    def _record(epochs: dict[str, _Run], epoch: str, seq: int) -> None:
        if len(epochs) >= EPOCHS_KEPT:
            del epochs[next(iter(epochs))]  # the oldest (dicts keep insertion order)
        epochs[epoch] = _Run(seq)
