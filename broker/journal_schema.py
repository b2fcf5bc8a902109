"""The event journal's storage: every event that passed through the broker.

An index row per event in SQLite (WAL): id, ts, topic, source, epoch, seq, the authenticated
publisher and where the body is. Bodies larger than INLINE_MAX bytes (log chunks) are appended to segment files beside the
database (``broker.segments``: one writev per batch, no fsync, removed a whole file at a time);
small bodies (job, cmd, agent events) stay inline in the row, where a replay page reads them
with the rows. So a log byte is written once, to the page cache, instead of twice (WAL, then
checkpoint) into SQLite.

This module holds what the writer (``broker.journal_writer``), the reader
(``broker.journal_reader``) and retention (``broker.journal_retention``) share: the schema and
its migration, the row the proxy hands over, and how a connection is opened.

Durability: segments are never fsynced, SQLite only when it checkpoints (``synchronous=NORMAL``
in WAL mode, set in ``connect``). A process crash loses nothing committed; a power loss may lose
the last seconds of events. The journal is history for late subscribers; the agents' spools are
the truth for output. Start-up repairs what a crash can leave (``journal_writer.recover``). (Not
``synchronous=OFF``: with only index rows and small bodies in SQLite its checkpoints are cheap,
measured ~0.003 CPU-s per 100 MB of logs, and OFF could leave the database itself corrupt after
a power loss, not just short.)

``ts`` is the broker's receive time (not the publisher's): ids and ts then grow together, which
makes age pruning and ``since_ts`` lookups index range scans and immune to publisher clock skew.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import NamedTuple

from common import logs
from common.config import BrokerConf

log = logs.get("broker.journal")

SCHEMA_VERSION = 3
# Bodies up to this size stay inline in their row; larger ones go to a segment. Measured on
# 100,000 events of 150 bytes, inline or in segments cost the same to write and to replay
# (within this machine's noise); inline keeps small-event replay free of preads and lets a
# version-1 journal's rows stay as they are.
INLINE_MAX = 1024

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

# Version 3: the key name the broker authenticated each event's publisher by (the ZAP User-Id;
# "" on an insecure bus, and for rows journalled before version 3, whose publisher nobody knows).
PUBLISHER_COLUMN = "ALTER TABLE events ADD COLUMN publisher TEXT NOT NULL DEFAULT ''"


class Row(NamedTuple):
    ts: float
    topic: str
    source: str
    epoch: str
    seq: int
    body: bytes | memoryview  # the published body frame, exactly
    publisher: str  # the authenticated publisher's key name ("" on an insecure bus)


def journal_path(cfg_broker: BrokerConf, state_dir: Path) -> Path:
    return Path(cfg_broker.journal).expanduser() if cfg_broker.journal else state_dir / "journal.db"


def connect(path: Path, *, create: bool = False) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (BEGIN/COMMIT) and visible in the code.
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=True)
    db.execute("PRAGMA busy_timeout=5000")
    if create:
        db.execute("PRAGMA journal_mode=WAL")
        _migrate(db)
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def head_id(db: sqlite3.Connection) -> int:
    """The newest id ever given: the AUTOINCREMENT high-water mark, right even when pruning has
    emptied the table."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return row[0] if row else 0


def _migrate(db: sqlite3.Connection) -> None:
    """Create the schema, or bring an older journal up to SCHEMA_VERSION one step at a time: a
    version-1 journal (every body inline, no seg/off/len columns) to version 2, where its rows
    simply become inline rows; a version-2 journal to version 3 (the publisher column)."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version >= SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(events)")}
        if version < 2:
            if columns and "seg" not in columns:
                for column in ("seg", "off", "len"):
                    db.execute(f"ALTER TABLE events ADD COLUMN {column} INTEGER")
                db.execute("UPDATE events SET len = length(body)")
            for statement in SCHEMA:
                db.execute(statement)
        if version < 3:
            db.execute(PUBLISHER_COLUMN)
        if columns:
            log.info("journal.migrated", from_version=version, to_version=SCHEMA_VERSION)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
