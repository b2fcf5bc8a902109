"""The orchestrator's durable truth: jobs, their commands, and the events already handled.

SQLite in WAL mode with synchronous=FULL: a committed transition survives a crash of the
process or the machine. Every change the engine makes goes through ``tx()``, one transaction
per step (event + job transition + next command row), committed before anything is sent.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import msgspec

# Each entry migrates the schema from version i to i+1. Append; never edit a released one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        n INTEGER NOT NULL,
        pipeline TEXT NOT NULL,
        workspace TEXT NOT NULL,
        agent TEXT,
        pool TEXT,
        params BLOB NOT NULL,
        state TEXT NOT NULL,
        stage TEXT NOT NULL,
        step INTEGER NOT NULL DEFAULT 0,
        attempt INTEGER NOT NULL DEFAULT 1,
        vars BLOB NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        key_line TEXT NOT NULL DEFAULT '',
        retry_from TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX jobs_state ON jobs(state, workspace, n);
    CREATE TABLE commands (
        cmd_id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        kind TEXT NOT NULL,            -- stage | cleanup
        stage TEXT NOT NULL,
        step INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        spec BLOB NOT NULL,            -- never holds a secret stdin
        secret INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,           -- PENDING DISPATCHED RUNNING DONE LOST CANCELLED
        agent TEXT NOT NULL DEFAULT '',
        not_before REAL NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        dispatched_at REAL NOT NULL DEFAULT 0,
        started_at REAL NOT NULL DEFAULT 0,
        ended_at REAL NOT NULL DEFAULT 0,
        last_contact REAL NOT NULL DEFAULT 0,
        exit_code INTEGER,
        signal INTEGER,
        status BLOB,
        key_line TEXT NOT NULL DEFAULT '',
        outcome TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL DEFAULT '',
        waiting_for TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX commands_job ON commands(job_id, created_at);
    CREATE INDEX commands_state ON commands(state);
    CREATE TABLE handled_events (
        source TEXT NOT NULL, epoch TEXT NOT NULL, kind TEXT NOT NULL, seq INTEGER NOT NULL,
        received_at REAL NOT NULL,
        PRIMARY KEY (source, epoch, kind, seq)
    );
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """,
]

IN_FLIGHT = ("DISPATCHED", "RUNNING")
OPEN = ("PENDING", "DISPATCHED", "RUNNING")
# Job states that hold their workspace (the pending change is open in it).
ACTIVE_STATES = ("RUNNING", "RETRY_WAIT", "WAITING_RESOLVE")


@dataclass
class JobRow:
    id: str
    n: int
    pipeline: str
    workspace: str
    agent: str | None
    pool: str | None
    params: bytes
    state: str
    stage: str
    step: int
    attempt: int
    vars: bytes
    reason: str
    key_line: str
    retry_from: str | None
    created_at: float
    updated_at: float

    def vars_dict(self) -> dict[str, Any]:
        return msgspec.json.decode(self.vars)


@dataclass
class CommandRow:
    cmd_id: str
    job_id: str
    kind: str
    stage: str
    step: int
    attempt: int
    spec: bytes
    secret: int
    state: str
    agent: str
    not_before: float
    created_at: float
    dispatched_at: float
    started_at: float
    ended_at: float
    last_contact: float
    exit_code: int | None
    signal: int | None
    status: bytes | None
    key_line: str
    outcome: str
    reason: str
    waiting_for: str


_JOB_COLS = [f.name for f in fields(JobRow)]
_CMD_COLS = [f.name for f in fields(CommandRow)]


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ schema

    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        version = self.schema_version()
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"store {self.path} has schema version {version}, newer than this p4bus "
                f"({len(MIGRATIONS)}): upgrade p4bus"
            )
        for i in range(version, len(MIGRATIONS)):
            with self.tx():
                for statement in _split_sql(MIGRATIONS[i]):
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version={i + 1}")

    @contextmanager
    def tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One atomic step; nested use joins the outer transaction.

        ``durable=False`` is for bookkeeping that reconciliation can rebuild from the agents
        (a command was accepted, has started, was heard from): it survives a process crash,
        just not a power cut, and spares the dispatch path a second fsync.
        """
        if self.db.in_transaction:
            yield self.db
            return
        if not durable:
            self.db.execute("PRAGMA synchronous=NORMAL")
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        finally:
            if not durable:
                self.db.execute("PRAGMA synchronous=FULL")

    # ------------------------------------------------------------------ ids and events

    def next_counter(self, name: str) -> int:
        with self.tx():
            self.db.execute(
                "INSERT INTO counters(name, value) VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1",
                (name,),
            )
            return self.db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()[0]

    def record_event(self, source: str, epoch: str, kind: str, seq: int) -> bool:
        """False when this event was handled before (events are handled exactly once)."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO handled_events VALUES (?,?,?,?,?)", (source, epoch, kind, seq, time.time())
        )
        return cur.rowcount == 1

    def prune_events(self, older_than: float) -> None:
        with self.tx():
            self.db.execute("DELETE FROM handled_events WHERE received_at < ?", (older_than,))

    # ------------------------------------------------------------------ jobs

    def insert_job(self, row: JobRow) -> None:
        self.db.execute(
            f"INSERT INTO jobs({','.join(_JOB_COLS)}) VALUES ({','.join('?' * len(_JOB_COLS))})",
            [getattr(row, c) for c in _JOB_COLS],
        )

    def update_job(self, job_id: str, **changes: Any) -> None:
        changes["updated_at"] = time.time()
        sets = ", ".join(f"{k}=?" for k in changes)
        self.db.execute(f"UPDATE jobs SET {sets} WHERE id=?", [*changes.values(), job_id])

    def job(self, job_id: str) -> JobRow | None:
        r = self.db.execute(f"SELECT {','.join(_JOB_COLS)} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return JobRow(*r) if r else None

    def jobs(self, where: str = "1", args: tuple = (), limit: int = 10_000, newest: bool = False) -> list[JobRow]:
        """Matching jobs, oldest first: the first ``limit``, or with ``newest`` the last ``limit``."""
        order = "DESC" if newest else "ASC"
        rows = self.db.execute(
            f"SELECT {','.join(_JOB_COLS)} FROM jobs WHERE {where} ORDER BY n {order} LIMIT ?", (*args, limit)
        ).fetchall()
        jobs = [JobRow(*r) for r in rows]
        return jobs[::-1] if newest else jobs

    def next_job_number(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM jobs").fetchone()[0]

    def active_job(self, workspace: str) -> JobRow | None:
        rows = self.jobs(f"workspace=? AND state IN ({_q(ACTIVE_STATES)})", (workspace, *ACTIVE_STATES), 1)
        return rows[0] if rows else None

    def queued(self, workspace: str | None = None) -> list[JobRow]:
        if workspace is None:
            return self.jobs("state='QUEUED'")
        return self.jobs("state='QUEUED' AND workspace=?", (workspace,))

    # ------------------------------------------------------------------ commands

    def insert_command(self, row: CommandRow) -> None:
        self.db.execute(
            f"INSERT INTO commands({','.join(_CMD_COLS)}) VALUES ({','.join('?' * len(_CMD_COLS))})",
            [getattr(row, c) for c in _CMD_COLS],
        )

    def update_command(self, cmd_id: str, **changes: Any) -> None:
        sets = ", ".join(f"{k}=?" for k in changes)
        self.db.execute(f"UPDATE commands SET {sets} WHERE cmd_id=?", [*changes.values(), cmd_id])

    def command(self, cmd_id: str) -> CommandRow | None:
        r = self.db.execute(f"SELECT {','.join(_CMD_COLS)} FROM commands WHERE cmd_id=?", (cmd_id,)).fetchone()
        return CommandRow(*r) if r else None

    def commands(self, where: str = "1", args: tuple = ()) -> list[CommandRow]:
        rows = self.db.execute(
            f"SELECT {','.join(_CMD_COLS)} FROM commands WHERE {where} ORDER BY created_at, rowid", args
        ).fetchall()
        return [CommandRow(*r) for r in rows]

    def job_commands(self, job_id: str) -> list[CommandRow]:
        return self.commands("job_id=?", (job_id,))

    def open_commands(self, job_id: str | None = None) -> list[CommandRow]:
        if job_id is None:
            return self.commands(f"state IN ({_q(OPEN)})", OPEN)
        return self.commands(f"job_id=? AND state IN ({_q(OPEN)})", (job_id, *OPEN))

    def in_flight_on(self, agent: str) -> list[CommandRow]:
        return self.commands(f"agent=? AND state IN ({_q(IN_FLIGHT)})", (agent, *IN_FLIGHT))

    def workspace_busy(self, workspace: str) -> bool:
        """A job holds it, or some job's command (e.g. a cancel's cleanup) is still open there."""
        if self.active_job(workspace):
            return True
        return (
            self.db.execute(
                f"SELECT 1 FROM commands c JOIN jobs j ON j.id=c.job_id WHERE j.workspace=? "
                f"AND c.state IN ({_q(OPEN)}) LIMIT 1",
                (workspace, *OPEN),
            ).fetchone()
            is not None
        )


def _q(values: tuple) -> str:
    return ",".join("?" * len(values))


def _split_sql(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
