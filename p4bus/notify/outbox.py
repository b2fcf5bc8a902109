"""The notifier's durable state, one SQLite file (0600): the journal id it has read up to in
each broker's journal, the events it has handled (by stamp), each job's last state, and the
outbox of notices per receiver.

An event's notices and its stamp (publisher, source, epoch, seq: the same in every broker's
copy) are written in one transaction, so after a crash an event is either fully recorded (its
notices pending or sent) or read again; a copy of it from another broker, or read again after a
crash (the cursors are written after each read of the journals), is known by its stamp and adds
nothing. A notice is marked sent after its receiver took it; one pending at a crash is sent again
on restart. Keyed by (notice key, receiver): recording an event twice adds nothing either.

A state file of a notifier that read one broker (table ``cursor``, one journal id) is migrated
on its first read: that id becomes the first broker's cursor (``take_legacy_cursor``).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import msgspec

from broker.journals import Mark
from orchestrator.pipeline.transition import TERMINAL
from p4bus.notify.message import Notice

PENDING, SENT, REJECTED = "pending", "sent", "rejected"
# Job states after which nothing more is announced.
ENDED = tuple(sorted(TERMINAL))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursor (one INTEGER PRIMARY KEY CHECK (one = 1), journal_id INTEGER NOT NULL);
-- per broker (its replay endpoint): broker/journals.py's Mark
CREATE TABLE IF NOT EXISTS cursors (
    broker TEXT PRIMARY KEY,
    journal_id INTEGER NOT NULL,
    anchor_id INTEGER NOT NULL DEFAULT 0,
    anchor_topic TEXT NOT NULL DEFAULT '',
    anchor_digest TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS seen (
    publisher TEXT NOT NULL,
    source TEXT NOT NULL,
    epoch TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (publisher, source, epoch, seq)
);
CREATE INDEX IF NOT EXISTS seen_at ON seen (at);
CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT NOT NULL,
    receiver TEXT NOT NULL,
    -- the order notices were recorded in (a journal id of the one broker before several were read)
    journal_id INTEGER NOT NULL,
    notice BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    done_at REAL,
    PRIMARY KEY (key, receiver)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (receiver, state, journal_id);
"""

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Notice)


class Pending(NamedTuple):
    key: str
    notice: Notice
    attempts: int


class Stamp(NamedTuple):
    """A job event's identity in every broker's journal (the kind is always ``job``)."""

    publisher: str
    source: str
    epoch: str
    seq: int


class Outbox:
    """One connection to the state file; every thread opens its own."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Created 0600 before SQLite opens it; an existing file is tightened (it holds job
        # facts and receiver names that are nobody else's business).
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a notice recorded is on disk before the cursor moves on
        self.db.executescript(_SCHEMA)
        if "event_ts" not in {row[1] for row in self.db.execute("PRAGMA table_info(jobs)")}:
            # The publish time of the event that set the job's state (0: from before it was kept).
            self.db.execute("ALTER TABLE jobs ADD COLUMN event_ts REAL NOT NULL DEFAULT 0")

    def close(self) -> None:
        self.db.close()

    # ---------------------------------------------------------------- reading side
    def cursors(self) -> dict[str, Mark]:
        """Broker (its replay endpoint) -> where reading its journal stands."""
        rows = self.db.execute("SELECT broker, journal_id, anchor_id, anchor_topic, anchor_digest FROM cursors")
        return {broker: Mark(*rest) for broker, *rest in rows}

    def take_legacy_cursor(self, broker: str) -> None:
        """A state file of a notifier that read one broker: its journal id becomes ``broker``'s
        cursor (the broker it read, the first one configured), in one transaction."""
        with self._transaction():
            row = self.db.execute("SELECT journal_id FROM cursor").fetchone()
            if row is None:
                return
            self.db.execute("INSERT OR IGNORE INTO cursors (broker, journal_id) VALUES (?, ?)", (broker, row[0]))
            self.db.execute("DELETE FROM cursor")

    def set_cursors(self, cursors: dict[str, Mark]) -> None:
        with self._transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO cursors (broker, journal_id, anchor_id, anchor_topic, anchor_digest) "
                "VALUES (?, ?, ?, ?, ?)",
                [(broker, *mark) for broker, mark in cursors.items()],
            )

    def last_update(self) -> float | None:
        """When the newest job state was recorded (this host's clock), None if none was."""
        row = self.db.execute("SELECT MAX(updated_at) FROM jobs").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def seen(self, stamp: Stamp) -> bool:
        return (
            self.db.execute(
                "SELECT 1 FROM seen WHERE publisher = ? AND source = ? AND epoch = ? AND seq = ?", stamp
            ).fetchone()
            is not None
        )

    def job(self, job_id: str) -> tuple[str, float] | None:
        """The job's last state, and the publish time of the event that set it."""
        row = self.db.execute("SELECT state, event_ts FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else (str(row[0]), float(row[1]))

    def record(
        self, stamp: Stamp, event_ts: float | None, job_id: str, state: str, notices: list[tuple[str, Notice]]
    ) -> int:
        """In one transaction: the event's stamp, the job's state (unless ``event_ts`` is None:
        an event older than the one that set it), and its notices (receiver, notice) pending.
        How many notices are new."""
        now = time.time()
        with self._transaction():
            self.db.execute(
                "INSERT OR IGNORE INTO seen (publisher, source, epoch, seq, at) VALUES (?, ?, ?, ?, ?)", (*stamp, now)
            )
            if event_ts is not None:
                self.db.execute(
                    "INSERT INTO jobs (job_id, state, updated_at, event_ts) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (job_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at, "
                    "event_ts = excluded.event_ts",
                    (job_id, state, now, event_ts),
                )
            order = self.db.execute("SELECT COALESCE(MAX(journal_id), 0) + 1 FROM outbox").fetchone()[0]
            added = 0
            for receiver, n in notices:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO outbox (key, receiver, journal_id, notice, state, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (n.key, receiver, order, _encoder.encode(n), PENDING, now),
                )
                added += cur.rowcount
        return added

    # ---------------------------------------------------------------- delivering side
    def next_pending(self, receiver: str) -> Pending | None:
        """The oldest notice still to be delivered to ``receiver``."""
        row = self.db.execute(
            "SELECT key, notice, attempts FROM outbox WHERE receiver = ? AND state = ? ORDER BY journal_id LIMIT 1",
            (receiver, PENDING),
        ).fetchone()
        return None if row is None else Pending(row[0], _decoder.decode(row[1]), row[2])

    def done(self, receiver: str, key: str, state: str = SENT, error: str = "") -> None:
        """``key`` was delivered to ``receiver`` (SENT), or refused by it for good (REJECTED)."""
        self.db.execute(
            "UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = ?, done_at = ? WHERE key = ? AND receiver = ?",
            (state, error, time.time(), key, receiver),
        )

    def failed(self, receiver: str, key: str, error: str) -> None:
        self.db.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE key = ? AND receiver = ?",
            (error, key, receiver),
        )

    # ---------------------------------------------------------------- upkeep
    def counts(self) -> dict[tuple[str, str], int]:
        """(receiver, state) -> how many notices."""
        rows = self.db.execute("SELECT receiver, state, COUNT(*) FROM outbox GROUP BY receiver, state")
        return {(r, s): n for r, s, n in rows}

    def prune(self, older_than: float) -> int:
        """Forget delivered (or rejected) notices, ended jobs and handled events not touched
        since ``older_than`` (the reader then skips what the brokers received before it)."""
        with self._transaction():
            n = self.db.execute("DELETE FROM outbox WHERE state != ? AND done_at < ?", (PENDING, older_than)).rowcount
            self.db.execute("DELETE FROM seen WHERE at < ?", (older_than,))
            # Only ended jobs: a job waiting for weeks must still not be announced twice.
            ended = ", ".join("?" * len(ENDED))
            self.db.execute(f"DELETE FROM jobs WHERE updated_at < ? AND state IN ({ended})", (older_than, *ENDED))
        return n

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
