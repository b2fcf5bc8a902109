"""Reading the journal for replay: one page of events per request.

A reader has its own SQLite connection: WAL lets it read a consistent snapshot beside the
writer thread, and it preads bodies from the segments. Bodies the snapshot points at may be gone
by the time they are read (pruned meanwhile, or lost in a crash); such events are skipped, as if
pruned before the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker import segments
from broker.journal_schema import connect, head_id
from broker.segments import SegmentReader

# Upper bound of every topic that starts with a prefix: the largest code point, so
# ``prefix <= topic < prefix + TOPIC_MAX`` is the prefix set for any UTF-8 topic.
TOPIC_MAX = "\U0010ffff"


@dataclass
class Page:
    events: list[tuple[int, str, bytes]]
    publishers: list[str]  # of each event, in the same order (protocol.ReplayPage)
    last_id: int
    head_id: int
    more: bool


class JournalReader:
    """Replay queries on a connection of its own, bodies read from the segments (one thread)."""

    def __init__(self, path: Path) -> None:
        self._db = connect(path)
        self._segments = SegmentReader(segments.segments_dir(path))

    def close(self) -> None:
        self._db.close()
        self._segments.close()

    def page(self, prefix: str, after: int, since_ts: float, limit: int, max_bytes: int) -> Page:
        """Events with topic starting with ``prefix``, id > after, ts >= since_ts, by id.

        A page ends after ``limit`` events or before the event that would take its bodies past
        ``max_bytes`` (a first event bigger than that makes a page alone), so a reply is never
        larger than the larger of ``max_bytes`` and one event, whatever a client asks for.
        """
        db = self._db
        self._segments.sweep()
        db.execute("BEGIN")  # one snapshot: the page and head_id agree
        try:
            if since_ts > 0:
                # ts grows with id (broker receive time), so the first id at or after since_ts
                # is an index lookup; start the scan there instead of filtering every row.
                first = db.execute("SELECT id FROM events WHERE ts >= ? ORDER BY ts LIMIT 1", (since_ts,)).fetchone()
                after = max(after, first[0] - 1) if first else max(after, head_id(db))
            if prefix:
                # Only the ids come from the topic index, sorted as integers; the rows are then
                # read for the page alone (a sort over the rows of a whole job log would be wasteful).
                cur = db.execute(
                    "SELECT e.id, e.topic, e.publisher, e.body, e.seg, e.off, e.len FROM events e WHERE e.id IN ("
                    " SELECT id FROM events WHERE topic >= ? AND topic < ? AND id > ? ORDER BY id LIMIT ?"
                    ") ORDER BY e.id",
                    (prefix, prefix + TOPIC_MAX, after, limit + 1),
                )
            else:
                cur = db.execute(
                    "SELECT id, topic, publisher, body, seg, off, len FROM events WHERE id > ? ORDER BY id LIMIT ?",
                    (after, limit + 1),
                )
            events: list[tuple[int, str, bytes]] = []
            publishers: list[str] = []
            size = 0
            scanned = 0
            last = after
            more = False
            for rid, topic, publisher, body, seg, off, length in cur:
                if len(events) >= limit or (events and size + length > max_bytes):
                    more = True
                    break
                scanned += 1
                last = rid
                if seg is not None:
                    body = self._segments.read(seg, off, length)
                    if body is None:
                        # Pruned since this snapshot began, or lost in a crash: not in the
                        # journal any more, as if pruned before the request.
                        continue
                events.append((rid, topic, body))
                publishers.append(publisher)
                size += length
            cur.close()
            # Every fetched row was consumed but some were gone: there may be rows past them.
            more = more or scanned > limit
            head = head_id(db)
        finally:
            db.execute("COMMIT")
        return Page(events, publishers, last, head, more)
