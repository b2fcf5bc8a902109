"""Retention: the journal keeps events for journal_max_age_s and within journal_max_bytes.

Rows go oldest first, one chunk per step, and disk space comes back a whole segment at a time,
once no row points into it. The writer thread runs the steps (it owns the write connection and
knows the segments), between its inserts, so a large prune (say the first after a long downtime)
never holds up the proxy.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from broker import segments
from common import logs
from common.config import BrokerConf

log = logs.get("broker.journal")

# Pruning deletes in chunks so a big prune does not hold up inserts for long.
PRUNE_CHUNK_ROWS = 2000


class Retention:
    """Pruning by age and size, and removal of dead segments (writer thread only)."""

    def __init__(self, conf: BrokerConf, segments_dir: Path) -> None:
        self.conf = conf
        self.segments_dir = segments_dir

    def prune_chunk(self, db: sqlite3.Connection, journal_bytes: int) -> tuple[int, int]:
        """Delete one chunk of rows older than journal_max_age_s or, failing that, of the oldest
        rows beyond journal_max_bytes (``journal_bytes``: the sum of body sizes now). Returns the
        rows and body bytes deleted; no rows means nothing is left to prune."""
        cutoff = time.time() - self.conf.journal_max_age_s
        victims = db.execute(
            "SELECT id, len FROM events WHERE ts < ? ORDER BY ts LIMIT ?", (cutoff, PRUNE_CHUNK_ROWS)
        ).fetchall()
        if victims:
            _delete(db, "DELETE FROM events WHERE id = ?", [(v[0],) for v in victims])
        else:
            excess = journal_bytes - self.conf.journal_max_bytes
            if excess > 0:
                victims = _oldest_covering(db, excess)
                if victims:
                    _delete(db, "DELETE FROM events WHERE id <= ?", [(victims[-1][0],)])
        return len(victims), sum(v[1] for v in victims)

    def remove_dead_segments(self, db: sqlite3.Connection, live: Sequence[int]) -> int:
        """Unlink the segments of ``live`` (oldest first) that no row points into any more.
        Returns how many: they are always the oldest ones."""
        row = db.execute("SELECT id FROM events ORDER BY id LIMIT 1").fetchone()
        dead = dead_segments(live, row[0] if row else None)
        for seg in dead:
            try:
                (self.segments_dir / segments.name(seg)).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("journal.segment_unlink_failed", segment=seg, error=str(exc))
        if dead:
            log.debug("journal.segments_pruned", segments=len(dead))
        return len(dead)


def dead_segments(live: Sequence[int], oldest: int | None) -> Sequence[int]:
    """The segments of ``live`` every row of which is gone, given the oldest row left. A
    segment's rows have ids below the next segment's name, so one is dead once the oldest row
    left is at or past that name; the newest one only once the journal is empty."""
    if oldest is None:
        return live
    n = 0
    while n + 1 < len(live) and oldest >= live[n + 1]:
        n += 1
    return live[:n]


def _delete(db: sqlite3.Connection, delete: str, args: list[tuple[int]]) -> None:
    db.execute("BEGIN")
    db.executemany(delete, args)
    db.execute("COMMIT")


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
