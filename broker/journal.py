"""The event journal: every event that passed through the broker.

An index row per event in SQLite (WAL): id, ts, topic, source, epoch, seq and where the body
is. Bodies larger than INLINE_MAX bytes (log chunks) are appended to segment files beside the
database (``broker.segments``: one writev per batch, no fsync, removed a whole file at a time);
small bodies (job, cmd, agent events) stay inline in the row, where a replay page reads them
with the rows. So a log byte is written once, to the page cache, instead of twice (WAL, then
checkpoint) into SQLite.

One writer thread owns the write connection and the open segment, and drains a bounded
in-memory queue filled by the proxy; each drained batch is one segment append followed by one
transaction, so a committed row never points past what was written. Readers (the replay
endpoint) use their own connections: WAL lets them read a consistent snapshot beside the
writer, and they pread bodies from the segments.

Durability: segments are never fsynced, SQLite only when it checkpoints (``synchronous=NORMAL``
in WAL mode). A process crash loses nothing committed; a power loss may lose the last seconds
of events. The journal is history for late subscribers; the agents' spools are the truth for
output. Start-up repairs what a crash can leave (``JournalWriter._recover``): bytes past a
segment's last committed body are cut, rows whose bytes did not reach the disk are dropped,
segments no row points at are removed. (Not ``synchronous=OFF``: with only index rows and
small bodies in SQLite its checkpoints are cheap, measured ~0.003 CPU-s per 100 MB of logs,
and OFF could leave the database itself corrupt after a power loss, not just short.)

Completeness vs forwarding latency: when the writer falls behind, ``submit`` blocks the proxy
(back-pressure: forwarding pauses too, publishers' PUB queues absorb the burst) for up to
``stall_s``. Only if the writer stays stuck that long (disk full, a hung filesystem) are rows
dropped, counted in ``journal_dropped`` and logged, so a broken disk cannot stop the live bus.
The agents' spools remain the source of truth for output either way.

``ts`` is the broker's receive time (not the publisher's): ids and ts then grow together, which
makes age pruning and ``since_ts`` lookups index range scans and immune to publisher clock skew.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from broker import segments
from broker.segments import Segment, SegmentReader
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
# own every CHECKPOINT_S, so the writer's commits never wait for the disk during a burst (with
# log bodies in segments there is little to copy, but an fsync can still take milliseconds). The
# writer's own auto-checkpoint only kicks in if the WAL reaches WAL_MAX_BYTES (sustained load
# faster than the disk): that one blocks, finishes the copy and lets the WAL start over, so the
# WAL file stays bounded.
CHECKPOINT_S = 0.1
WAL_MAX_BYTES = 512 << 20
# Bodies up to this size stay inline in their row; larger ones go to a segment. Measured on
# 100,000 events of 150 bytes, inline or in segments cost the same to write and to replay
# (within this machine's noise); inline keeps small-event replay free of preads and lets a
# version-1 journal's rows stay as they are.
INLINE_MAX = 1024
# A segment is closed for appends (a new one started) once it holds this much; pruning frees
# disk a segment at a time, so segments are also kept at or below an eighth of
# journal_max_bytes (dead bytes on disk: less than one segment), but not below the minimum.
SEGMENT_BYTES = 64 << 20
MIN_SEGMENT_BYTES = 64 << 10
SCHEMA_VERSION = 2
# Upper bound of every topic that starts with a prefix: the largest code point, so
# ``prefix <= topic < prefix + TOPIC_MAX`` is the prefix set for any UTF-8 topic.
TOPIC_MAX = "\U0010ffff"

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS events (
    -- AUTOINCREMENT: ids are never reused, even after pruning empties the table, so a
    -- client's replay cursor ("after id N") stays meaningful across prunes and restarts. (The
    -- writer assigns them, from this high-water mark; only a batch that failed to commit, so
    -- was never visible, has its ids given again.)
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    topic TEXT NOT NULL,
    source TEXT NOT NULL,
    epoch TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL,  -- the body when inline, else empty
    seg INTEGER,  -- the segment holding the body (its first id), NULL when inline
    off INTEGER,  -- the body's offset in that segment
    len INTEGER  -- the body's length, inline or not
)
""",
    "CREATE INDEX IF NOT EXISTS events_topic ON events(topic)",
    "CREATE INDEX IF NOT EXISTS events_ts ON events(ts)",
)


class Row(NamedTuple):
    ts: float
    topic: str
    source: str
    epoch: str
    seq: int
    body: bytes | memoryview  # the published body frame, exactly


def journal_path(cfg_broker: BrokerConf, state_dir: Path) -> Path:
    return Path(cfg_broker.journal).expanduser() if cfg_broker.journal else state_dir / "journal.db"


def segment_bytes(conf: BrokerConf) -> int:
    return max(MIN_SEGMENT_BYTES, min(SEGMENT_BYTES, conf.journal_max_bytes // 8))


def connect(path: Path, *, create: bool = False) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (BEGIN/COMMIT) and visible in the code.
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=True)
    db.execute("PRAGMA busy_timeout=5000")
    if create:
        db.execute("PRAGMA journal_mode=WAL")
        _migrate(db)
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def _migrate(db: sqlite3.Connection) -> None:
    """Create the schema, or bring a version-1 journal (every body inline, no seg/off/len
    columns) to version 2: its rows simply become inline rows."""
    if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(events)")}
        if columns and "seg" not in columns:
            for column in ("seg", "off", "len"):
                db.execute(f"ALTER TABLE events ADD COLUMN {column} INTEGER")
            db.execute("UPDATE events SET len = length(body)")
            log.info("journal.migrated", to_version=SCHEMA_VERSION)
        for statement in SCHEMA:
            db.execute(statement)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


class _RowQueue:
    """Bounded by body bytes; the proxy puts whole batches, the writer takes up to BATCH_ROWS."""

    def __init__(self, max_bytes: int) -> None:
        self._rows: deque[Row] = deque()
        self._bytes = 0
        self._max = max_bytes
        self._closed = False
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

    def take(self, timeout: float, max_bytes: int) -> list[Row]:
        """Up to BATCH_ROWS rows, ending at the first that brings the batch to ``max_bytes``."""
        with self._cond:
            self._cond.wait_for(lambda: self._rows or self._closed, timeout)
            rows: list[Row] = []
            size = 0
            while self._rows and len(rows) < BATCH_ROWS and size < max_bytes:
                row = self._rows.popleft()
                rows.append(row)
                size += len(row.body)
            self._bytes -= size
            self._cond.notify_all()
            return rows

    def close(self) -> None:
        """Wake the writer: ``take`` returns at once from now on (what is left, then nothing)."""
        with self._cond:
            self._closed = True
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
        self.segments_dir = segments.segments_dir(path)
        self.conf = conf
        self.stall_s = stall_s
        self.counters = JournalCounters()
        self._queue = _RowQueue(queue_bytes)
        self._stopping = threading.Event()
        self._done_cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="journal-checkpoint", daemon=True)
        # Writer thread only (after start): the segments, oldest first, the last one being the
        # one appended to; the id the next row gets (ids are assigned here, not by SQLite, so a
        # new segment can be named by the first id it holds).
        self._segments: list[int] = []
        self._active: Segment | None = None
        self._segment_bytes = segment_bytes(conf)
        # A batch is appended to one segment (see _segment_for_append), so batches are kept to a
        # quarter of a segment: a segment then ends at most that much (plus a body) past its size.
        self._batch_bytes = max(1, self._segment_bytes // 4)
        self._next_id = 1

    @property
    def done(self) -> int:
        """Rows handed to ``submit`` that are committed or were dropped (never pending)."""
        return self.counters.journalled + self.counters.journal_dropped

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        """Open (or create) the journal, repair what a crash left, then start writing.
        Readers may open it from now on."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.segments_dir.mkdir(exist_ok=True)
        db = connect(self.path, create=True)
        try:
            self._recover(db)
            self.counters.journal_rows, self.counters.journal_bytes = db.execute(
                "SELECT count(*), coalesce(sum(len), 0) FROM events"
            ).fetchone()
            self._next_id = JournalReader._head(db) + 1
        finally:
            db.close()
        if self._segments:
            self._active = Segment(self.segments_dir, self._segments[-1])
        self._thread.start()
        self._checkpointer.start()

    def submit(self, rows: list[Row]) -> None:
        size = sum(len(r.body) for r in rows)
        if self._queue.put(rows, size, self.stall_s):
            return
        self.counters.journal_dropped += len(rows)
        log.warning(
            "journal.dropped",
            rows=len(rows),
            bytes=size,
            stalled_s=self.stall_s,
            total_dropped=self.counters.journal_dropped,
        )
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
        self._queue.close()
        self._thread.join(timeout)
        self._checkpointer.join(timeout)

    # ------------------------------------------------------------------ start-up

    def _recover(self, db: sqlite3.Connection) -> None:
        """Make every segment end exactly where its last committed body ends.

        Bodies are written before their rows are committed, so after a crash the newest segment
        may hold bytes no row points at: cut (a segment with no row at all is removed, as are
        segments that pruning had emptied). After a power loss the opposite can happen too,
        rows committed whose bytes never reached the disk: those rows are deleted (and a body
        that reached the disk only in part is cut). What cannot be seen here is a body the disk
        has as zeros (a power loss can leave a file's blocks unwritten): it would be replayed as
        such. The agents' spools are the truth for output.
        """
        segs = segments.list_segments(self.segments_dir)
        kept = []
        for i, seg in enumerate(segs):
            # A segment's rows have ids from its name up to the next segment's name, and their
            # offsets grow with their ids: its end is the end of the last one.
            upper = segs[i + 1] if i + 1 < len(segs) else (1 << 63) - 1
            path = self.segments_dir / segments.name(seg)
            while True:
                last = db.execute(
                    "SELECT off + len FROM events WHERE id >= ? AND id < ? AND seg = ? ORDER BY id DESC LIMIT 1",
                    (seg, upper, seg),
                ).fetchone()
                if last is None:
                    path.unlink(missing_ok=True)
                    log.info("journal.segment_removed", segment=seg, reason="no rows point at it")
                    break
                size = path.stat().st_size
                if size < last[0]:
                    lost = db.execute(
                        "DELETE FROM events WHERE id >= ? AND id < ? AND seg = ? AND off + len > ?",
                        (seg, upper, seg, size),
                    ).rowcount
                    log.warning(
                        "journal.rows_lost",
                        segment=seg,
                        rows=lost,
                        reason="their bodies are missing from the segment (a crash before the disk had them)",
                    )
                    continue  # again: cut a partly written body, or remove a segment left without rows
                if size > last[0]:
                    os.truncate(path, last[0])
                    log.info("journal.segment_tail_cut", segment=seg, bytes=size - last[0])
                kept.append(seg)
                break
        self._segments = kept

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
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_MAX_BYTES // db.execute('PRAGMA page_size').fetchone()[0]}")
        next_prune = time.monotonic()
        try:
            while True:
                rows = self._queue.take(max(0.0, min(next_prune - time.monotonic(), 0.5)), self._batch_bytes)
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
            if self._active is not None:
                self._active.close()
                self._active = None

    def _segment_for_append(self, first_id: int) -> Segment:
        """The segment to append a batch to, whose first body has id ``first_id``."""
        active = self._active
        if active is None or active.size >= self._segment_bytes:
            # The previous segment's rows are all committed (a batch never spans two segments),
            # which is what start-up recovery relies on.
            if active is not None:
                self._active = None
                active.close()
            active = self._active = Segment(self.segments_dir, first_id)
            if not self._segments or self._segments[-1] != active.first_id:
                self._segments.append(active.first_id)
        return active

    def _insert(self, db: sqlite3.Connection, rows: list[Row]) -> None:
        first = self._next_id
        seg: Segment | None = None
        start = 0
        try:
            params = []
            bodies = []
            off = 0
            for i, r in enumerate(rows):
                size = len(r.body)
                if size <= INLINE_MAX:
                    params.append((first + i, r.ts, r.topic, r.source, r.epoch, r.seq, r.body, None, None, size))
                    continue
                if seg is None:
                    seg = self._segment_for_append(first + i)
                    start = off = seg.size
                params.append((first + i, r.ts, r.topic, r.source, r.epoch, r.seq, b"", seg.first_id, off, size))
                bodies.append(r.body)
                off += size
            if seg is not None:
                seg.append(bodies)  # before the commit: a committed row never points past the end
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO events(id, ts, topic, source, epoch, seq, body, seg, off, len)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                params,
            )
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            # Disk full, I/O error...: lose this batch loudly but keep the writer (and so the
            # proxy, which would otherwise stall on a full queue) going.
            if db.in_transaction:
                db.execute("ROLLBACK")
            if seg is not None:
                self._cut_back(seg, start)
            self.counters.journal_dropped += len(rows)
            log.error(
                "journal.write_failed", error=str(exc), rows=len(rows), total_dropped=self.counters.journal_dropped
            )
        else:
            self._next_id = first + len(rows)
            c = self.counters
            c.journalled += len(rows)
            c.journal_rows += len(rows)
            c.journal_bytes += sum(p[-1] for p in params)
        self._notify_done()

    def _cut_back(self, seg: Segment, start: int) -> None:
        """Undo a failed batch's appends: the next batch reuses these ids and this space. A
        segment this batch started goes entirely, so a segment's name stays the smallest id in
        it (the next batch's first body may have another id)."""
        if start > 0:
            seg.truncate(start)
            return
        seg.close()
        self._active = None
        if self._segments and self._segments[-1] == seg.first_id:
            self._segments.pop()
        try:
            seg.path.unlink()
        except OSError as exc:
            log.error("journal.segment_unlink_failed", segment=seg.first_id, error=str(exc))

    def _prune_step(self, db: sqlite3.Connection) -> bool:
        """Delete one chunk of rows older than journal_max_age_s or, failing that, of the oldest
        rows beyond journal_max_bytes, then the segments no row points at any more. True if a
        chunk was deleted (there may be more)."""
        try:
            cutoff = time.time() - self.conf.journal_max_age_s
            victims = db.execute(
                "SELECT id, len FROM events WHERE ts < ? ORDER BY ts LIMIT ?", (cutoff, PRUNE_CHUNK_ROWS)
            ).fetchall()
            if victims:
                self._delete(db, "DELETE FROM events WHERE id = ?", [(v[0],) for v in victims], victims)
            else:
                excess = self.counters.journal_bytes - self.conf.journal_max_bytes
                if excess > 0:
                    victims = self._oldest_covering(db, excess)
                    if victims:
                        self._delete(db, "DELETE FROM events WHERE id <= ?", [(victims[-1][0],)], victims)
            self._drop_dead_segments(db)
            return bool(victims)
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            log.error("journal.prune_failed", error=str(exc))
            return False

    def _delete(self, db: sqlite3.Connection, delete: str, args: list[tuple], victims: list[tuple[int, int]]) -> None:
        db.execute("BEGIN")
        db.executemany(delete, args)
        db.execute("COMMIT")
        c = self.counters
        c.pruned += len(victims)
        c.journal_rows -= len(victims)
        c.journal_bytes -= sum(v[1] for v in victims)

    @staticmethod
    def _oldest_covering(db: sqlite3.Connection, excess: int) -> list[tuple[int, int]]:
        """The oldest rows (one chunk at most) whose bodies cover ``excess`` bytes."""
        victims: list[tuple[int, int]] = []
        covered = 0
        for rid, size in db.execute("SELECT id, len FROM events ORDER BY id LIMIT ?", (PRUNE_CHUNK_ROWS,)):
            victims.append((rid, size))
            covered += size
            if covered >= excess:
                break
        return victims

    def _drop_dead_segments(self, db: sqlite3.Connection) -> None:
        """Remove the segments every row of which is gone. A segment's rows have ids below the
        next segment's name, so one is dead once the oldest row left is at or past that name;
        the newest one only once the journal is empty."""
        row = db.execute("SELECT id FROM events ORDER BY id LIMIT 1").fetchone()
        oldest = row[0] if row else None
        dead: list[int] = []
        while len(self._segments) > 1 and (oldest is None or oldest >= self._segments[1]):
            dead.append(self._segments.pop(0))
        if oldest is None and self._segments:
            dead.append(self._segments.pop())
            if self._active is not None:
                self._active.close()
                self._active = None  # the next body starts a segment named by its id
        for seg in dead:
            try:
                (self.segments_dir / segments.name(seg)).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("journal.segment_unlink_failed", segment=seg, error=str(exc))
        if dead:
            log.debug("journal.segments_pruned", segments=len(dead))


@dataclass
class Page:
    events: list[tuple[int, str, bytes]]
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

        A page ends after ``limit`` events or once ``max_bytes`` of bodies are in it (always at
        least one event), so a page of 256 KiB chunks stays a reasonable message.
        """
        db = self._db
        self._segments.sweep()
        db.execute("BEGIN")  # one snapshot: the page and head_id agree
        try:
            if since_ts > 0:
                # ts grows with id (broker receive time), so the first id at or after since_ts
                # is an index lookup; start the scan there instead of filtering every row.
                first = db.execute("SELECT id FROM events WHERE ts >= ? ORDER BY ts LIMIT 1", (since_ts,)).fetchone()
                after = max(after, first[0] - 1) if first else max(after, self._head(db))
            if prefix:
                # Only the ids come from the topic index, sorted as integers; the rows are then
                # read for the page alone (a sort over the rows of a whole job log would be wasteful).
                cur = db.execute(
                    "SELECT e.id, e.topic, e.body, e.seg, e.off, e.len FROM events e WHERE e.id IN ("
                    " SELECT id FROM events WHERE topic >= ? AND topic < ? AND id > ? ORDER BY id LIMIT ?"
                    ") ORDER BY e.id",
                    (prefix, prefix + TOPIC_MAX, after, limit + 1),
                )
            else:
                cur = db.execute(
                    "SELECT id, topic, body, seg, off, len FROM events WHERE id > ? ORDER BY id LIMIT ?",
                    (after, limit + 1),
                )
            events: list[tuple[int, str, bytes]] = []
            size = 0
            scanned = 0
            last = after
            more = False
            for rid, topic, body, seg, off, length in cur:
                if len(events) >= limit or (events and size >= max_bytes):
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
                size += length
            cur.close()
            # Every fetched row was consumed but some were gone: there may be rows past them.
            more = more or scanned > limit
            head = self._head(db)
        finally:
            db.execute("COMMIT")
        return Page(events, last, head, more)

    @staticmethod
    def _head(db: sqlite3.Connection) -> int:
        # The AUTOINCREMENT high-water mark: right even when pruning has emptied the table.
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return row[0] if row else 0
