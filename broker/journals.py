"""Every broker's journal, read after a cursor per (broker, prefix): for readers that need to say
where they stopped in a form that outlives the live stream (the web's SSE ids, the notifier's
durable cursor), so they read the journals and use the live streams only as wake-ups.

A journal id means something in one broker's journal only, so each broker has its own cursors.
``read()`` returns the new events of every broker that answers as *copies* (broker index,
journal id, event): each broker's in its journal order (its prefixes merged by id, all read up
to one horizon, the head when its read began, as broker/client.py's splice does), the brokers'
lists interleaved by the events' publish time. So when one broker lacks an event, the other's
copy comes where it belongs, before the publisher's later events. Copies of one event come once
per broker that has it: the caller drops all but the first by the event's stamp (publisher,
source, kind, epoch, seq), with whatever memory of handled events it keeps (in memory for the
web, in its state file for the notifier), and tells ``commit`` how many copies it handled.

A journal can be lost (its broker restarted with a new file). Each broker's reading remembers
the last event it handled there (``Mark``: id, topic, a digest of the body); when the broker
comes back from being down, and at the first read, that event must still be at that id, else
the journal is a new one and is read from its start (also when its head is below the cursor).
The caller's stamps drop what it already handled through another broker.

A broker that does not answer costs its timeout once: it is marked down and skipped by every
read until its live stream delivers again (it is back) and RETRY_DOWN_S have passed; the brokers
are pinged at once and read in the order they answer, and a connection that drops or is refused
fails at once. Only no broker answering is an error (ReplayTimeout). With one broker nothing of
that applies: it is read as before, and its errors are the caller's.
"""

from __future__ import annotations

import hashlib
import heapq
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import zmq

from broker.client import PROBE_S, RETRY_DOWN_S, ReplayClient, ReplayError, ReplayTimeout, in_answer_order
from common import logs, protocol, zmqutil
from common.auth import Security

log = logs.get("broker.journals")

# A replay "after" no id can exceed (SQLite's largest integer): an empty page carrying head_id.
BEYOND_HEAD = (1 << 63) - 1

Journalled = tuple[int, str, bytes, str]  # (journal id, topic, body, publisher)


class Copy(NamedTuple):
    broker: int  # index in the brokers given
    journal_id: int
    topic: str
    body: bytes
    got: protocol.Delivered | None  # None: not a well-formed event (skip it, but move past)


class Mark(NamedTuple):
    """Where the reading of one broker's journal stands: every event of the reader's prefixes up
    to ``cursor`` handled, and the last one read (id, topic, digest of its body), by which the
    same journal is told from a new one."""

    cursor: int
    anchor_id: int = 0
    anchor_topic: str = ""
    anchor_digest: str = ""


class Endpoints(NamedTuple):
    xpub: str
    replay: str


OnDown = Callable[[str, str], None]  # (replay endpoint, why)


def digest(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=16).hexdigest()


class BrokerJournal:
    """One broker: its replay client and live SUB, a cursor per prefix, how far the last read
    went per prefix, the last event handled (the anchor), and whether it is down (why, since
    when)."""

    def __init__(self, client: ReplayClient, sub: zmq.Socket | None, prefixes: list[str]) -> None:
        self.client = client
        self.sub = sub
        self.cursor = dict.fromkeys(prefixes, 0)
        self.anchor: tuple[int, str, str] | None = None  # (id, topic, digest)
        self.verify = False  # check the anchor before the next read
        self.since_ts = 0.0  # only events the broker received at or after this (its clock)
        self.read_once = False  # its position means something only once it has been read
        self.read_to = dict(self.cursor)
        self.down = ""
        self.down_at = 0.0

    def read(self) -> list[Journalled]:
        horizon = self.client.page(next(iter(self.cursor)), after=BEYOND_HEAD).head_id
        if max(self.cursor.values()) > horizon or (self.verify and not self._anchored()):
            # A new journal (its head below our cursor, or our last event not where it was):
            # every event in it is new to this cursor.
            log.warning("journal.reset", broker=self.client.endpoint, cursor=self.cursor, head=horizon)
            self.cursor = dict.fromkeys(self.cursor, 0)
            self.anchor = None
        self.verify = False
        self.read_to = dict(self.cursor)
        rows = list(heapq.merge(*(self._stream(p, horizon) for p in self.cursor)))
        self.read_once = True
        return rows

    def _anchored(self) -> bool:
        """The last event handled is still at its id, the same event."""
        if self.anchor is None:
            return True
        jid, topic, dig = self.anchor
        page = self.client.page(topic, after=jid - 1, limit=1)
        return bool(page.events) and page.events[0][0] == jid and digest(page.events[0][2]) == dig

    def _stream(self, prefix: str, horizon: int) -> Iterator[Journalled]:
        after = self.cursor[prefix]
        while after < horizon:
            page = self.client.page(prefix, after, self.since_ts)
            # A broker that predates publishers sends none: "", as on an insecure bus.
            publishers = page.publishers or [""] * len(page.events)
            if len(publishers) != len(page.events):
                raise ReplayError(
                    "bad_reply", f"replay page has {len(page.events)} events but {len(publishers)} publishers"
                )
            yield from ((i, t, b, p) for (i, t, b), p in zip(page.events, publishers, strict=True) if i <= horizon)
            # At the end, nothing of this prefix lies between last_id and head_id (one snapshot).
            after = min(horizon, page.last_id if page.more else max(page.last_id, page.head_id))
            self.read_to[prefix] = after
            if not page.more:
                return

    def commit(self, upto: int, last: Copy | None) -> None:
        # Prefixes come merged by id, so every event of a prefix up to ``upto`` has been handled.
        for p, read_to in self.read_to.items():
            self.cursor[p] = max(self.cursor[p], min(read_to, upto))
        if last is not None:
            self.anchor = (last.journal_id, last.topic, digest(last.body))

    def mark(self) -> Mark | None:
        if not self.read_once:
            return None
        return Mark(min(self.cursor.values()), *(self.anchor or (0, "", "")))


class Journals:
    def __init__(self, journals: list[BrokerJournal], on_down: OnDown | None = None) -> None:
        self.journals = journals
        self.on_down = on_down or _log_down
        self.poller = zmq.Poller()
        for j in journals:
            if j.sub is not None:
                self.poller.register(j.sub, zmq.POLLIN)
        self.answered_once = False
        self._read: list[Copy] = []

    @classmethod
    def connect(
        cls,
        ctx: zmq.Context,
        brokers: Sequence[Endpoints],
        security: Security | None,
        prefixes: list[str],
        timeout_s: float = 10.0,
        on_down: OnDown | None = None,
    ) -> Journals:
        """A replay client and a live SUB for each broker."""
        several = len(brokers) > 1
        journals = [
            BrokerJournal(
                ReplayClient(ctx, b.replay, security, timeout_s, fail_on_disconnect=several),
                zmqutil.sub(ctx, b.xpub, security, prefixes),
                prefixes,
            )
            for b in brokers
        ]
        return cls(journals, on_down)

    @property
    def several(self) -> bool:
        return len(self.journals) > 1

    def close(self) -> None:
        for j in self.journals:
            if j.sub is not None:
                j.sub.close()
            j.client.close()

    def names(self) -> list[str]:
        return [j.client.endpoint for j in self.journals]

    def start_at(self, broker: int, mark: Mark, since_ts: float = 0.0) -> None:
        """Read ``broker``'s journal from ``mark``, only events the broker received at or after
        ``since_ts``."""
        j = self.journals[broker]
        j.cursor = dict.fromkeys(j.cursor, mark.cursor)
        j.read_to = dict(j.cursor)
        j.anchor = (mark.anchor_id, mark.anchor_topic, mark.anchor_digest) if mark.anchor_id else None
        j.verify = j.anchor is not None
        j.since_ts = since_ts

    def history_before(self, ts: float) -> None:
        """Events every broker received before ``ts`` are not read any more (a reader that
        forgets what it handled that long ago must not take them for new)."""
        for j in self.journals:
            j.since_ts = max(j.since_ts, ts)

    def mark(self, broker: int) -> Mark | None:
        """Where ``broker``'s reading stands (None until it has been read once)."""
        return self.journals[broker].mark()

    def read(self) -> list[Copy]:
        """Every new copy of every broker that answers (module docstring)."""
        lists: list[list[Copy]] = []
        if not self.several:
            try:
                lists.append(self._copies(0, self.journals[0].read()))
            except (ReplayError, ReplayTimeout):
                self.journals[0].verify = True  # it may come back with another journal
                raise
        else:
            lists = self._read_several()
        self._read = list(heapq.merge(*lists, key=_publish_time))
        return self._read

    def _read_several(self) -> list[list[Copy]]:
        # Every broker down (the caller backs off after each such read): all are asked again.
        up = [j for j in self.journals if not j.down] or self.journals
        # Until one has answered, wait for the brokers as for one (they may still be starting).
        first_wait = up[0].client.timeout_s if not self.answered_once else PROBE_S
        index = {j.client: i for i, j in enumerate(self.journals)}
        lists: list[list[Copy]] = []
        for client, why in in_answer_order([j.client for j in up], first_wait, fail_fast=self.answered_once):
            i = index[client]
            if not why:
                try:
                    lists.append(self._copies(i, self.journals[i].read()))
                    self.answered_once = True
                    continue
                except (ReplayError, ReplayTimeout) as exc:
                    why = str(exc)
            self._down(i, why)
        if not lists:
            raise ReplayTimeout("no broker answered: " + "; ".join(j.down for j in self.journals))
        return lists

    def _copies(self, broker: int, rows: list[Journalled]) -> list[Copy]:
        out = []
        for jid, topic, body, publisher in rows:
            try:
                got: protocol.Delivered | None = protocol.decode_delivered([topic.encode(), body, publisher.encode()])
            except protocol.ProtocolError:
                got = None  # only well-formed events are journalled; be lenient anyway
            out.append(Copy(broker, jid, topic, body, got))
        return out

    def commit(self, handled: int | None = None) -> None:
        """Move each broker's cursors past the copies of the last read it handled: all of them,
        or the first ``handled`` (where handling failed: the rest comes again with the next
        read, and the copies after it that were handled are dropped then by their stamps)."""
        done = self._read if handled is None else self._read[:handled]
        rest = [] if handled is None else self._read[handled:]
        for i, j in enumerate(self.journals):
            pending = [c.journal_id for c in rest if c.broker == i]
            last = next((c for c in reversed(done) if c.broker == i), None)
            j.commit(min(pending) - 1 if pending else BEYOND_HEAD, last)

    def _down(self, broker: int, why: str) -> None:
        j = self.journals[broker]
        if not j.down:
            self.on_down(j.client.endpoint, why)
        j.down = why
        j.down_at = time.monotonic()
        j.verify = True  # it may come back with another journal
        j.read_to = dict(j.cursor)  # nothing of it was read

    def wait(self, timeout_s: float) -> bool:
        """Until a live event arrives (True) or ``timeout_s`` passes; drains what came. A broker
        that was down and delivers again is read again, RETRY_DOWN_S after it was found down
        (so one that is reachable but does not answer costs its timeout that often at most)."""
        ready = self.poller.poll(int(timeout_s * 1000))
        for sock, _ in ready:
            j = next(j for j in self.journals if j.sub is sock)
            zmqutil.drain(sock, lambda _frames: None)  # what they say is read from the journal
            if j.down and time.monotonic() - j.down_at >= RETRY_DOWN_S:
                log.info("broker.back", broker=j.client.endpoint)
                j.down = ""
        return bool(ready)


def _publish_time(c: Copy) -> float:
    return c.got.event.ts if c.got is not None else 0.0


def _log_down(broker: str, why: str) -> None:
    log.warning("broker.unavailable", broker=broker, error=why)
