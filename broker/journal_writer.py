"""Writing the journal: the batching writer thread, segment appends and start-up recovery.

One writer thread owns the write connection and the open segment, and drains a bounded
in-memory queue filled by the proxy; each drained batch is one segment append followed by one
transaction, so a committed row never points past what was written. Between batches the same
thread runs retention (``broker.journal_retention``); checkpoints run in a thread of their own
(see CHECKPOINT_S).

Completeness vs forwarding latency: when the writer falls behind, ``submit`` blocks the proxy
(back-pressure: forwarding pauses too, publishers' PUB queues absorb the burst) for up to
``stall_s``. Only if the writer stays stuck that long (disk full, a hung filesystem) are rows
dropped, counted in ``journal_dropped`` and logged, so a broken disk cannot stop the live bus.
The agents' spools remain the source of truth for output either way.

Neither segments nor (until a checkpoint) SQLite are fsynced (``broker.journal_schema``), so
start-up repairs what a crash can leave (``recover``): bytes past a segment's last committed
body are cut, rows whose bytes did not reach the disk are dropped, segments no row points at
are removed.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from broker import segments
from broker.journal_retention import Retention
from broker.journal_schema import INLINE_MAX, Row, connect, head_id
from broker.segments import Segment
from common import logs
from common.config import BrokerConf

log = logs.get("broker.journal")

# Rows per transaction: large enough to amortise the commit, small enough that a replay barrier
# (see ``wait_done``) never waits long for one batch.
BATCH_ROWS = 5000
# The queue between proxy and writer holds at most this many body bytes (256 KiB chunks: ~256).
QUEUE_BYTES = 64 << 20
STALL_S = 5.0
# Checkpointing (copying the WAL into the database file, with fsyncs) runs in a thread of its
# own every CHECKPOINT_S, so the writer's commits never wait for the disk during a burst (with
# log bodies in segments there is little to copy, but an fsync can still take milliseconds). The
# writer's own auto-checkpoint only kicks in if the WAL reaches WAL_MAX_BYTES (sustained load
# faster than the disk): that one blocks, finishes the copy and lets the WAL start over, so the
# WAL file stays bounded.
CHECKPOINT_S = 0.1
WAL_MAX_BYTES = 512 << 20
# A segment is closed for appends (a new one started) once it holds this much; pruning frees
# disk a segment at a time, so segments are also kept at or below an eighth of
# journal_max_bytes (dead bytes on disk: less than one segment), but not below the minimum.
SEGMENT_BYTES = 64 << 20
MIN_SEGMENT_BYTES = 64 << 10


# An events row as inserted: id, ts, topic, source, epoch, seq, publisher, body, seg, off, len.
_Params = tuple[int, float, str, str, str, int, str, bytes | memoryview, int | None, int | None, int]


def segment_bytes(conf: BrokerConf) -> int:
    return max(MIN_SEGMENT_BYTES, min(SEGMENT_BYTES, conf.journal_max_bytes // 8))


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
        self._retention = Retention(conf, self.segments_dir)
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
            self._segments = recover(db, self.segments_dir)
            self.counters.journal_rows, self.counters.journal_bytes = db.execute(
                "SELECT count(*), coalesce(sum(len), 0) FROM events"
            ).fetchone()
            self._next_id = head_id(db) + 1
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
                    # One chunk at a time, inserts in between (see broker.journal_retention).
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
            params: list[_Params] = []
            bodies: list[bytes | memoryview] = []
            off = 0
            for i, r in enumerate(rows):
                size = len(r.body)
                if size <= INLINE_MAX:
                    params.append(
                        (first + i, r.ts, r.topic, r.source, r.epoch, r.seq, r.publisher, r.body, None, None, size)
                    )
                    continue
                if seg is None:
                    seg = self._segment_for_append(first + i)
                    start = off = seg.size
                params.append(
                    (first + i, r.ts, r.topic, r.source, r.epoch, r.seq, r.publisher, b"", seg.first_id, off, size)
                )
                bodies.append(r.body)
                off += size
            if seg is not None:
                seg.append(bodies)  # before the commit: a committed row never points past the end
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO events(id, ts, topic, source, epoch, seq, publisher, body, seg, off, len)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
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
        """One retention step: a chunk of rows, then the segments left without rows. True if
        rows were deleted (there may be more)."""
        try:
            rows, size = self._retention.prune_chunk(db, self.counters.journal_bytes)
            c = self.counters
            c.pruned += rows
            c.journal_rows -= rows
            c.journal_bytes -= size
            dead = self._retention.remove_dead_segments(db, self._segments)
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            log.error("journal.prune_failed", error=str(exc))
            return False
        del self._segments[:dead]
        if not self._segments and self._active is not None:
            # The journal is empty: the next body starts a segment named by its id.
            self._active.close()
            self._active = None
        return rows > 0


def recover(db: sqlite3.Connection, segments_dir: Path) -> list[int]:
    """Make every segment end exactly where its last committed body ends; the segments kept.

    Bodies are written before their rows are committed, so after a crash the newest segment
    may hold bytes no row points at: cut (a segment with no row at all is removed, as are
    segments that pruning had emptied). After a power loss the opposite can happen too, rows
    committed whose bytes never reached the disk: those rows are deleted (and a body that
    reached the disk only in part is cut). What cannot be seen here is a body the disk has as
    zeros (a power loss can leave a file's blocks unwritten): it would be replayed as such. The
    agents' spools are the truth for output.
    """
    segs = segments.list_segments(segments_dir)
    kept = []
    for i, seg in enumerate(segs):
        # A segment's rows have ids from its name up to the next segment's name, and their
        # offsets grow with their ids: its end is the end of the last one.
        upper = segs[i + 1] if i + 1 < len(segs) else (1 << 63) - 1
        path = segments_dir / segments.name(seg)
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
    return kept
