"""The notifier's durable state, one SQLite file (0600): the journal id it has read up to,
each job's last state, and the outbox of notices per receiver.

An event's notices and the cursor past that event are written in one transaction, so after a
crash an event is either fully recorded (its notices pending or sent) or read again. A notice
is marked sent after its receiver took it; one pending at a crash is sent again on restart.
Keyed by (notice key, receiver): recording an event twice adds nothing.
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

from orchestrator.pipeline.transition import TERMINAL
from p4bus.notify.message import Notice

PENDING, SENT, REJECTED = "pending", "sent", "rejected"
# Job states after which nothing more is announced.
ENDED = tuple(sorted(TERMINAL))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursor (one INTEGER PRIMARY KEY CHECK (one = 1), journal_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT NOT NULL,
    receiver TEXT NOT NULL,
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

    def close(self) -> None:
        self.db.close()

    # ---------------------------------------------------------------- reading side
    def cursor(self) -> int | None:
        row = self.db.execute("SELECT journal_id FROM cursor").fetchone()
        return None if row is None else int(row[0])

    def set_cursor(self, journal_id: int) -> None:
        self.db.execute(
            "INSERT INTO cursor (one, journal_id) VALUES (1, ?) ON CONFLICT (one) DO UPDATE SET journal_id = excluded.journal_id",
            (journal_id,),
        )

    def job_state(self, job_id: str) -> str | None:
        row = self.db.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else str(row[0])

    def record(self, journal_id: int, job_id: str, state: str, notices: list[tuple[str, Notice]]) -> int:
        """In one transaction: the job's state, its notices (receiver, notice) pending, and the
        cursor at ``journal_id``. How many notices are new."""
        now = time.time()
        with self._transaction():
            self.db.execute(
                "INSERT INTO jobs (job_id, state, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (job_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                (job_id, state, now),
            )
            added = 0
            for receiver, n in notices:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO outbox (key, receiver, journal_id, notice, state, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (n.key, receiver, journal_id, _encoder.encode(n), PENDING, now),
                )
                added += cur.rowcount
            self.set_cursor(journal_id)
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
        """Forget delivered (or rejected) notices, and ended jobs, not touched since ``older_than``."""
        with self._transaction():
            n = self.db.execute("DELETE FROM outbox WHERE state != ? AND done_at < ?", (PENDING, older_than)).rowcount
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
