"""The event journal: every event that passed through the broker, in SQLite (WAL).

One writer thread owns the write connection and drains a bounded in-memory queue filled by the
proxy; each drained batch is one transaction. Readers (the replay endpoint) use their own
connections: WAL lets them read a consistent snapshot beside the writer.

Completeness vs forwarding latency: when the writer falls behind, ``submit`` blocks the proxy
(back-pressure: forwarding pauses too, publishers' PUB queues absorb the burst) for up to
``stall_s``. Only if the writer stays stuck that long (disk full, a hung filesystem) are rows
dropped, counted in ``journal_dropped`` and logged, so a broken disk cannot stop the live bus.
The agents' spools remain the source of truth for output either way.

``ts`` is the broker's receive time (not the publisher's): ids and ts then grow together, which
makes age pruning and ``since_ts`` lookups index range scans and immune to publisher clock skew.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from common import logs
from common.config import BrokerConf

log = logs.get("broker.journal")

# Rows per transaction: large enough to amortise the commit, small enough that a replay barrier
# (see ``wait_done``) never waits long for one batch.
BATCH_ROWS = 5000
# The queue between proxy and writer holds at most this many body bytes (256 KiB chunks: ~256).
QUEUE_BYTES = 64 << 20
STALL_S = 5.0
# Pruning deletes in chunks so a big prune does not hold up inserts for long.
PRUNE_CHUNK_ROWS = 2000
# Checkpointing (copying the WAL into the database file, with fsyncs) runs in a thread of its
# own every CHECKPOINT_S, so the writer's commits never wait for the disk during a burst. The
# writer's own auto-checkpoint only kicks in if the WAL reaches WAL_MAX_BYTES (sustained load
# faster than the disk): that one blocks, finishes the copy and lets the WAL start over, so the
# WAL file stays bounded.
CHECKPOINT_S = 0.1
WAL_MAX_BYTES = 512 << 20
PAGE_SIZE = 65536
# Upper bound of every topic that starts with a prefix: the largest code point, so
# ``prefix <= topic < prefix + TOPIC_MAX`` is the prefix set for any UTF-8 topic.
TOPIC_MAX = "\U0010ffff"

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    -- AUTOINCREMENT: ids are never reused, even after pruning empties the table, so a
    -- client's replay cursor ("after id N") stays meaningful across prunes and restarts.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    topic TEXT NOT NULL,
    source TEXT NOT NULL,
    epoch TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_topic ON events(topic);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
"""


class Row(NamedTuple):
    ts: float
    topic: str
    source: str
    epoch: str
    seq: int
    body: bytes | memoryview  # the published body frame, exactly


def journal_path(cfg_broker: BrokerConf, state_dir: Path) -> Path:
    return Path(cfg_broker.journal).expanduser() if cfg_broker.journal else state_dir / "journal.db"


def connect(path: Path, *, create: bool = False) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (BEGIN/COMMIT) and visible in the code.
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=True)
    if create:
        # 64 KiB pages: a 256 KiB log chunk spans 4 overflow pages instead of 64.
        # Only effective when the file is new (page size is fixed once WAL is on).
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    return db


class _RowQueue:
    """Bounded by body bytes; the proxy puts whole batches, the writer takes up to BATCH_ROWS."""

    def __init__(self, max_bytes: int) -> None:
        self._rows: deque[Row] = deque()
        self._bytes = 0
        self._max = max_bytes
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return len(self._rows)

    def put(self, rows: list[Row], size: int, timeout: float) -> bool:
        """Append, waiting for room up to ``timeout``; False (nothing added) if there is none."""
        with self._cond:
            # An oversized batch is admitted into an empty queue so it can never wait forever.
            ok = self._cond.wait_for(lambda: self._bytes + size <= self._max or not self._rows, timeout)
            if not ok:
                return False
            self._rows.extend(rows)
            self._bytes += size
            self._cond.notify_all()
            return True

    def take(self, timeout: float) -> list[Row]:
        with self._cond:
            self._cond.wait_for(lambda: self._rows, timeout)
            n = min(len(self._rows), BATCH_ROWS)
            rows = [self._rows.popleft() for _ in range(n)]
            self._bytes -= sum(len(r.body) for r in rows)
            self._cond.notify_all()
            return rows

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


@dataclass
class JournalCounters:
    journalled: int = 0
    journal_dropped: int = 0
    pruned: int = 0
    journal_rows: int = 0
    journal_bytes: int = 0  # sum of body sizes: what journal_max_bytes limits


class JournalWriter:
    """The writer thread. ``submit`` is called by the proxy thread only."""

    def __init__(self, path: Path, conf: BrokerConf, queue_bytes: int = QUEUE_BYTES, stall_s: float = STALL_S) -> None:
        self.path = path
        self.conf = conf
        self.stall_s = stall_s
        self.counters = JournalCounters()
        self._queue = _RowQueue(queue_bytes)
        self._stopping = threading.Event()
        self._done_cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="journal-checkpoint", daemon=True)

    @property
    def done(self) -> int:
        """Rows handed to ``submit`` that are committed or were dropped (never pending)."""
        return self.counters.journalled + self.counters.journal_dropped

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        """Open (or create) the journal, then start writing. Readers may open it from now on."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = connect(self.path, create=True)
        self.counters.journal_rows, self.counters.journal_bytes = db.execute(
            "SELECT count(*), coalesce(sum(length(body)), 0) FROM events"
        ).fetchone()
        db.close()
        self._thread.start()
        self._checkpointer.start()

    def submit(self, rows: list[Row]) -> None:
        size = sum(len(r.body) for r in rows)
        if self._queue.put(rows, size, self.stall_s):
            return
        self.counters.journal_dropped += len(rows)
        log.warning("journal.dropped", rows=len(rows), bytes=size, stalled_s=self.stall_s,
                    total_dropped=self.counters.journal_dropped)
        self._notify_done()

    def wait_done(self, target: int, timeout: float) -> bool:
        """Wait until the first ``target`` submitted rows are committed (or dropped).

        The replay endpoint calls this before reading, so a client that saw an event live and
        then asks for history gets that event (and everything before it) from the journal.
        """
        with self._done_cond:
            return self._done_cond.wait_for(lambda: self.done >= target, timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Flush everything queued, then stop."""
        self._stopping.set()
        self._queue.wake()
        self._thread.join(timeout)
        self._checkpointer.join(timeout)

    # ------------------------------------------------------------------ writer thread

    def _notify_done(self) -> None:
        with self._done_cond:
            self._done_cond.notify_all()

    def _checkpoint_loop(self) -> None:
        db = connect(self.path)
        try:
            while self._thread.is_alive():
                self._thread.join(CHECKPOINT_S)  # the tick; ends early once the writer is done
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            # The writer has stopped: copy everything and truncate the WAL for a tidy shutdown.
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()

    def _run(self) -> None:
        db = connect(self.path)
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_MAX_BYTES // PAGE_SIZE}")
        next_prune = time.monotonic()
        try:
            while True:
                rows = self._queue.take(max(0.0, min(next_prune - time.monotonic(), 0.5)))
                if rows:
                    self._insert(db, rows)
                elif self._stopping.is_set():
                    break
                if time.monotonic() >= next_prune:
                    # One chunk at a time, inserts in between: a large prune (say the first
                    # after a long downtime) must not hold up the proxy.
                    more = self._prune_step(db)
                    next_prune = time.monotonic() + (0 if more else self.conf.prune_interval_s)
        finally:
            db.close()

    def _insert(self, db: sqlite3.Connection, rows: list[Row]) -> None:
        try:
            db.execute("BEGIN")
            db.executemany("INSERT INTO events(ts, topic, source, epoch, seq, body) VALUES (?,?,?,?,?,?)", rows)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            # Disk full, I/O error...: lose this batch loudly but keep the writer (and so the
            # proxy, which would otherwise stall on a full queue) going.
            if db.in_transaction:
                db.execute("ROLLBACK")
            self.counters.journal_dropped += len(rows)
            log.error("journal.write_failed", error=str(exc), rows=len(rows),
                      total_dropped=self.counters.journal_dropped)
        else:
            c = self.counters
            c.journalled += len(rows)
            c.journal_rows += len(rows)
            c.journal_bytes += sum(len(r.body) for r in rows)
        self._notify_done()

    def _prune_step(self, db: sqlite3.Connection) -> bool:
        """Delete one chunk of rows older than journal_max_age_s or, failing that, of the oldest
        rows beyond journal_max_bytes. True if a chunk was deleted (there may be more)."""
        try:
            cutoff = time.time() - self.conf.journal_max_age_s
            if self._delete(db, "SELECT id, length(body) FROM events WHERE ts < ? ORDER BY ts LIMIT ?",
                            (cutoff, PRUNE_CHUNK_ROWS)):
                return True
            excess = self.counters.journal_bytes - self.conf.journal_max_bytes
            return excess > 0 and self._delete_oldest_bytes(db, excess) > 0
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            log.error("journal.prune_failed", error=str(exc))
            return False

    def _delete(self, db: sqlite3.Connection, select: str, args: tuple) -> int:
        victims = db.execute(select, args).fetchall()
        if not victims:
            return 0
        db.execute("BEGIN")
        db.executemany("DELETE FROM events WHERE id = ?", [(v[0],) for v in victims])
        db.execute("COMMIT")
        c = self.counters
        c.pruned += len(victims)
        c.journal_rows -= len(victims)
        c.journal_bytes -= sum(v[1] for v in victims)
        return len(victims)

    def _delete_oldest_bytes(self, db: sqlite3.Connection, excess: int) -> int:
        # Walk the oldest rows (one chunk) until their bodies cover the excess.
        ids: list[int] = []
        covered = 0
        for rid, size in db.execute("SELECT id, length(body) FROM events ORDER BY id LIMIT ?", (PRUNE_CHUNK_ROWS,)):
            ids.append(rid)
            covered += size
            if covered >= excess:
                break
        if not ids:
            return 0
        return self._delete(db, "SELECT id, length(body) FROM events WHERE id <= ? ORDER BY id", (ids[-1],))


@dataclass
class Page:
    events: list[tuple[int, str, bytes]]
    last_id: int
    head_id: int
    more: bool


class JournalReader:
    """Replay queries on a connection of its own (one per thread)."""

    def __init__(self, path: Path) -> None:
        self._db = connect(path)

    def close(self) -> None:
        self._db.close()

    def page(self, prefix: str, after: int, since_ts: float, limit: int, max_bytes: int) -> Page:
        """Events with topic starting with ``prefix``, id > after, ts >= since_ts, by id.

        A page ends after ``limit`` events or once ``max_bytes`` of bodies are in it (always at
        least one event), so a page of 256 KiB chunks stays a reasonable message.
        """
        db = self._db
        db.execute("BEGIN")  # one snapshot: the page and head_id agree
        try:
            if since_ts > 0:
                # ts grows with id (broker receive time), so the first id at or after since_ts
                # is an index lookup; start the scan there instead of filtering every row.
                first = db.execute("SELECT id FROM events WHERE ts >= ? ORDER BY ts LIMIT 1", (since_ts,)).fetchone()
                after = max(after, first[0] - 1) if first else max(after, self._head(db))
            if prefix:
                # Only the ids come from the topic index, sorted as integers; bodies are then read
                # for the page alone (a sort over bodies of a whole job log would be wasteful).
                cur = db.execute(
                    "SELECT e.id, e.topic, e.body FROM events e WHERE e.id IN ("
                    " SELECT id FROM events WHERE topic >= ? AND topic < ? AND id > ? ORDER BY id LIMIT ?"
                    ") ORDER BY e.id",
                    (prefix, prefix + TOPIC_MAX, after, limit + 1),
                )
            else:
                cur = db.execute("SELECT id, topic, body FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit + 1))
            events: list[tuple[int, str, bytes]] = []
            size = 0
            more = False
            for row in cur:
                if len(events) >= limit or (events and size >= max_bytes):
                    more = True
                    break
                events.append(row)
                size += len(row[2])
            cur.close()
            head = self._head(db)
        finally:
            db.execute("COMMIT")
        return Page(events, events[-1][0] if events else after, head, more)

    @staticmethod
    def _head(db: sqlite3.Connection) -> int:
        # The AUTOINCREMENT high-water mark: right even when pruning has emptied the table.
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return row[0] if row else 0
