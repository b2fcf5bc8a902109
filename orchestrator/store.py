"""The orchestrator's durable truth: jobs, their commands, and the events already handled.

On SQLite (the embedded default: WAL, synchronous=FULL) or PostgreSQL (a ``postgresql://``
DSN), through orchestrator/db.py: a committed transition survives a crash of the process (and,
durable, of the machine). Every change the engine makes goes through ``tx()``, one atomic
step (event + job transition + next command row); the orchestrator's loop groups the steps of
one wake-up into one transaction (``batch()``, a savepoint per step) and holds what they send
until it has committed (``after_commit``): nothing leaves the process before its step is stored.

All SQL lives here, written once in the subset both engines run (db.py translates what
differs). Rows come out typed (states as enums, stored JSON decoded) and every change is a
named method; times are passed in by the caller, whose clock is the one truth.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import msgspec

from common import ids
from common import protocol as P
from orchestrator.db import Db, PgDb, PgTarget, SqliteDb, open_db
from orchestrator.pipeline.model import CommandSpec, JobParams
from orchestrator.pipeline.transition import TERMINAL, JobState

# Each entry migrates the schema from version i to i+1. Append; never edit a released one.
# Both engines run the same text (db.py maps BLOB, REAL and INTEGER to PostgreSQL's types).
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
    """
    -- Saved job presets (a P.Template as JSON) and the schedules that run them.
    CREATE TABLE templates (
        name TEXT PRIMARY KEY,
        spec BLOB NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        template TEXT NOT NULL REFERENCES templates(name),
        spec BLOB NOT NULL,            -- P.Schedule's definition (cron, timezone, on_change, poll_s)
        next_at REAL NOT NULL,         -- due from then on (a due run waits while its template has a job)
        last_job TEXT NOT NULL DEFAULT '',
        last_change INTEGER,           -- the source change the last job was started for (on_change)
        last_run_at REAL NOT NULL DEFAULT 0,
        note TEXT NOT NULL DEFAULT '', -- why it did not run when due
        updated_at REAL NOT NULL
    );
    -- Which template (and schedule) a job came from: one active job per template.
    CREATE TABLE template_jobs (
        job_id TEXT PRIMARY KEY REFERENCES jobs(id),
        template TEXT NOT NULL,
        schedule TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX template_jobs_template ON template_jobs(template);
    CREATE INDEX jobs_updated ON jobs(state, updated_at);
    """,
    """
    -- 1 when the orchestrator pinned the job to the agent its first command reached (not a
    -- person's or the workspace's choice), so it may go elsewhere once that agent is given up on.
    ALTER TABLE jobs ADD COLUMN agent_pinned INTEGER NOT NULL DEFAULT 0;
    -- When the command's agent became unreachable (UNKNOWN), and when agents began refusing it.
    ALTER TABLE commands ADD COLUMN unknown_since REAL NOT NULL DEFAULT 0;
    ALTER TABLE commands ADD COLUMN refused_since REAL NOT NULL DEFAULT 0;
    """,
    """
    -- The order commands were written in (as SQLite's rowid was, which PostgreSQL lacks). Rows
    -- from before are numbered by creation time, then id.
    ALTER TABLE commands ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    UPDATE commands SET seq = numbered.r FROM
        (SELECT cmd_id, ROW_NUMBER() OVER (ORDER BY created_at, cmd_id) AS r FROM commands) AS numbered
        WHERE numbered.cmd_id = commands.cmd_id;
    CREATE INDEX commands_seq ON commands(seq);
    """,
]


class CmdState(enum.StrEnum):
    PENDING = "PENDING"  # written, not yet accepted by an agent
    DISPATCHED = "DISPATCHED"  # an agent accepted it
    RUNNING = "RUNNING"
    # Its agent cannot be reached: it may still be running, or have ended. Nothing runs it
    # again until the agent answers or its stage's deadline passes (then LOST).
    UNKNOWN = "UNKNOWN"
    DONE = "DONE"
    LOST = "LOST"  # given up on: it may or may not have run
    CANCELLED = "CANCELLED"


class CmdKind(enum.StrEnum):
    STAGE = "stage"  # runs a pipeline stage's step
    CLEANUP = "cleanup"  # undoes a cancelled job's side effects


IN_FLIGHT = frozenset({CmdState.DISPATCHED, CmdState.RUNNING, CmdState.UNKNOWN})
OPEN = frozenset({CmdState.PENDING, *IN_FLIGHT})
# Job states that hold their workspace (the pending change is open in it).
ACTIVE_STATES = frozenset(
    {JobState.RUNNING, JobState.UNKNOWN, JobState.RETRY_WAIT, JobState.WAITING_RESOLVE, JobState.WAITING_APPROVAL}
)


@dataclass(frozen=True)
class JobRow:
    id: str
    n: int
    pipeline: str
    workspace: str
    agent: str | None
    pool: str | None
    params_json: bytes  # the params column; ``params`` decodes it (a job event never does)
    state: JobState
    stage: str
    step: int
    attempt: int
    vars: dict[str, Any]
    reason: str
    key_line: str
    retry_from: str | None
    created_at: float
    updated_at: float
    agent_pinned: bool  # by the orchestrator, to where its first command ran

    @cached_property
    def params(self) -> JobParams:
        return msgspec.json.decode(self.params_json, type=JobParams)


@dataclass(frozen=True)
class CommandRow:
    cmd_id: str
    job_id: str
    kind: CmdKind
    stage: str
    step: int
    attempt: int
    spec_json: bytes  # the spec column; ``spec`` decodes it when asked (most reads never do)
    secret: bool
    state: CmdState
    agent: str
    not_before: float
    created_at: float
    dispatched_at: float
    started_at: float
    ended_at: float
    last_contact: float
    exit_code: int | None
    signal: int | None
    status_packed: bytes | None  # the status column; ``status`` decodes it
    key_line: str
    outcome: str
    reason: str
    waiting_for: str
    unknown_since: float  # 0 unless UNKNOWN
    refused_since: float  # 0 unless agents are refusing it (PENDING)

    @cached_property
    def spec(self) -> CommandSpec:
        """As stored: a secret stdin is not in it."""
        return msgspec.json.decode(self.spec_json, type=CommandSpec)

    @cached_property
    def status(self) -> P.CmdStatus | None:
        """The final status without its output."""
        return None if self.status_packed is None else msgspec.msgpack.decode(self.status_packed, type=P.CmdStatus)


_JOB_FIELDS = tuple("params" if f.name == "params_json" else f.name for f in fields(JobRow))
_CMD_FIELDS = tuple({"spec_json": "spec", "status_packed": "status"}.get(f.name, f.name) for f in fields(CommandRow))
_JOB_COLS = ", ".join(_JOB_FIELDS)
_CMD_COLS = ", ".join(_CMD_FIELDS)
_JOB_STATES = {s.value: s for s in JobState}
_CMD_STATES = {s.value: s for s in CmdState}
_CMD_KINDS = {k.value: k for k in CmdKind}
_KIND, _SECRET, _STATE = (_CMD_FIELDS.index(c) for c in ("kind", "secret", "state"))


def _job_row(r: tuple[Any, ...]) -> JobRow:
    col = dict(zip(_JOB_FIELDS, r, strict=True))
    col["params_json"] = col.pop("params")
    col["state"] = _JOB_STATES[col["state"]]
    col["vars"] = msgspec.json.decode(col["vars"], type=dict[str, Any])
    col["agent_pinned"] = bool(col["agent_pinned"])
    return JobRow(**col)


def _command_row(r: tuple[Any, ...]) -> CommandRow:
    col = list(r)
    col[_KIND] = _CMD_KINDS[col[_KIND]]
    col[_SECRET] = bool(col[_SECRET])
    col[_STATE] = _CMD_STATES[col[_STATE]]
    return CommandRow(*col)


class Store:
    """The store at ``location``: a SQLite file, or a ``postgresql://`` DSN (its password, if
    one is needed, in ``password_file``, 0600, or libpq's PGPASSFILE; never in the DSN).

    ``path`` is where it is, fit for logs (a DSN without any password). ``pg`` is how to reach
    the PostgreSQL server (None on SQLite): ``store.pg.connect()`` opens another session with
    the same parameters, for what needs its own (a standby's lease).
    """

    def __init__(self, location: str | Path, password_file: str = "") -> None:
        self.db: Db = open_db(location, password_file)
        self.path: str | Path = self.db.path if isinstance(self.db, SqliteDb) else self.db.location
        self.pg: PgTarget | None = self.db.target if isinstance(self.db, PgDb) else None
        try:
            self.migrate()
        except BaseException:
            self.db.close()
            raise

    @property
    def on_commit(self) -> Callable[[float], None]:
        """Called with the seconds each commit took (orchestrator/metrics.py observes them)."""
        return self.db.on_commit

    @on_commit.setter
    def on_commit(self, observe: Callable[[float], None]) -> None:
        self.db.on_commit = observe

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ schema

    def schema_version(self) -> int:
        return self.db.schema_version()

    def migrate(self) -> None:
        """Each pending migration in a transaction of its own, under a lock (on PostgreSQL
        several orchestrators may start at once; the first migrates, the others find it done)."""
        while True:
            with self.tx():
                self.db.lock_schema()
                version = self.db.schema_version()
                if version > len(MIGRATIONS):
                    raise RuntimeError(
                        f"store {self.path} has schema version {version}, newer than this p4bus "
                        f"({len(MIGRATIONS)}): upgrade p4bus"
                    )
                if version == len(MIGRATIONS):
                    return
                for statement in _split_sql(MIGRATIONS[version]):
                    self.db.ddl(statement)
                self.db.set_schema_version(version + 1)

    @contextmanager
    def tx(self, durable: bool = True) -> Iterator[Db]:
        """One atomic step: a transaction of its own, or a savepoint of the open one (a batch's,
        or an outer step's), rolled back alone if the block raises.

        ``durable=False`` is for bookkeeping that reconciliation can rebuild from the agents
        (a command was accepted, has started, was heard from): it survives a process crash,
        just not a power cut (SQLite) or a server crash (PostgreSQL), and spares the dispatch
        path a flush to disk (a batch is flushed if any of its steps is durable).
        """
        with self.db.tx(durable) as db:
            yield db

    def batch(self) -> AbstractContextManager[None]:
        """The steps of the block are one transaction, committed (once) when it ends: group
        commit for one wake-up of the orchestrator's loop (db.Db.batch)."""
        return self.db.batch()

    def step(self) -> AbstractContextManager[None]:
        """One event's, request's or reply's step of the open batch, rolled back alone if it
        raises (db.Db.step)."""
        return self.db.step()

    def after_commit(self, effect: Callable[[], None]) -> None:
        """Run ``effect`` (a send, a publish, an answer) once what is being written is
        committed; at once when nothing is; never if its step is rolled back."""
        self.db.after_commit(effect)

    @property
    def held(self) -> int:
        """Effects waiting for the open transaction's commit."""
        return self.db.held

    # ------------------------------------------------------------------ ids and events

    def next_counter(self, name: str) -> int:
        with self.tx():
            self.db.execute(
                "INSERT INTO counters(name, value) VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET value = counters.value + 1",
                (name,),
            )
            value: int = self.db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()[0]
            return value

    def record_event(self, source: str, epoch: str, kind: str, seq: int, now: float) -> bool:
        """False when this event was handled before (events are handled exactly once)."""
        cur = self.db.execute(
            "INSERT INTO handled_events VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING", (source, epoch, kind, seq, now)
        )
        return cur.rowcount == 1

    def prune_events(self, older_than: float) -> None:
        with self.tx():
            self.db.execute("DELETE FROM handled_events WHERE received_at < ?", (older_than,))

    def prune_jobs(self, finished_before: float) -> list[str]:
        """Remove finished jobs unchanged since ``finished_before`` with their commands (none
        may be open: a cancel's cleanup still running keeps its job); their ids."""
        with self.tx():
            ids_ = [
                r[0]
                for r in self.db.execute(
                    f"SELECT id FROM jobs WHERE state IN ({_marks(len(TERMINAL))}) AND updated_at < ? "
                    f"AND NOT EXISTS (SELECT 1 FROM commands c WHERE c.job_id=jobs.id "
                    f"AND c.state IN ({_marks(len(OPEN))}))",
                    (*TERMINAL, finished_before, *OPEN),
                )
            ]
            for table, column in (("commands", "job_id"), ("template_jobs", "job_id"), ("jobs", "id")):
                self.db.executemany(f"DELETE FROM {table} WHERE {column}=?", [(i,) for i in ids_])
            return ids_

    # ------------------------------------------------------------------ jobs: changes

    def add_job(
        self,
        job_id: str,
        pipeline: str,
        params: JobParams,
        agent: str | None,
        pool: str | None,
        first_stage: str,
        now: float,
    ) -> None:
        """A new QUEUED job, last in its workspace's queue."""
        n = self.db.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM jobs").fetchone()[0]
        self.db.execute(
            f"INSERT INTO jobs({_JOB_COLS}) VALUES ({_marks(len(_JOB_FIELDS))})",
            (
                job_id,
                n,
                pipeline,
                params.workspace.name,
                agent,
                pool,
                msgspec.json.encode(params),
                JobState.QUEUED,
                first_stage,
                0,
                1,
                b"{}",
                "",
                "",
                None,
                now,
                now,
                0,
            ),
        )

    def apply_transition(
        self,
        job_id: str,
        state: JobState,
        stage: str,
        step: int,
        attempt: int,
        vars: Mapping[str, Any],
        reason: str,
        key_line: str,
        now: float,
    ) -> None:
        """Where the job is now. An empty ``key_line`` keeps the job's previous one."""
        self.db.execute(
            "UPDATE jobs SET state=?, stage=?, step=?, attempt=?, vars=?, reason=?, "
            "key_line=CASE WHEN ?='' THEN key_line ELSE ? END, retry_from=NULL, updated_at=? WHERE id=?",
            (state, stage, step, attempt, msgspec.json.encode(vars), reason, key_line, key_line, now, job_id),
        )

    def pin_agent(self, job_id: str, agent: str, now: float) -> bool:
        """Pin a job that has no agent yet to ``agent``; False (and no change) if it has one."""
        cur = self.db.execute(
            "UPDATE jobs SET agent=?, agent_pinned=1, updated_at=? WHERE id=? AND (agent IS NULL OR agent='')",
            (agent, now, job_id),
        )
        return cur.rowcount == 1

    def unpin_agent(self, job_id: str, agent: str, now: float) -> None:
        """Free a job the orchestrator pinned to ``agent`` to run anywhere its workspace is
        (a pin a person or the workspace's config asked for stays)."""
        self.db.execute(
            "UPDATE jobs SET agent=NULL, agent_pinned=0, updated_at=? WHERE id=? AND agent=? AND agent_pinned=1",
            (now, job_id, agent),
        )

    def move_state(self, job_id: str, from_state: JobState, to_state: JobState, now: float) -> bool:
        """``from_state`` -> ``to_state``; False (and no change) if the job is in another state."""
        cur = self.db.execute(
            "UPDATE jobs SET state=?, updated_at=? WHERE id=? AND state=?", (to_state, now, job_id, from_state)
        )
        return cur.rowcount == 1

    def requeue(self, job_id: str, from_stage: str, now: float) -> None:
        """Back in its workspace's queue, to run again from ``from_stage`` when its turn comes."""
        self.db.execute(
            "UPDATE jobs SET state=?, retry_from=?, reason='', updated_at=? WHERE id=?",
            (JobState.QUEUED, from_stage, now, job_id),
        )

    def cancel_job(self, job_id: str, reason: str, now: float) -> None:
        self.db.execute(
            "UPDATE jobs SET state=?, reason=?, updated_at=? WHERE id=?", (JobState.CANCELLED, reason, now, job_id)
        )

    def set_vars(self, job_id: str, vars: Mapping[str, Any], now: float) -> None:
        self.db.execute("UPDATE jobs SET vars=?, updated_at=? WHERE id=?", (msgspec.json.encode(vars), now, job_id))

    # ------------------------------------------------------------------ jobs: queries

    def job(self, job_id: str) -> JobRow | None:
        rows = self._jobs("id=?", (job_id,))
        return rows[0] if rows else None

    def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state (for the metrics)."""
        return dict(self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())

    def list_jobs(self, include_finished: bool, limit: int) -> list[JobRow]:
        """The newest ``limit`` jobs (unfinished ones only, unless ``include_finished``), oldest first."""
        if include_finished:
            rows = self._jobs("TRUE", (), limit, newest=True)
        else:
            rows = self._jobs(f"state NOT IN ({_marks(len(TERMINAL))})", tuple(TERMINAL), limit, newest=True)
        return rows[::-1]

    def waiting_resolve_since(self, before: float) -> list[JobRow]:
        """WAITING_RESOLVE jobs that have not changed since ``before``."""
        return self._jobs("state=? AND updated_at < ?", (JobState.WAITING_RESOLVE, before))

    def job_with_change(self, workspace: str, change: int, other_than: str) -> JobRow | None:
        """The newest job of ``workspace`` but ``other_than`` whose pending change is ``change``."""
        rows = self._jobs(
            f"workspace=? AND id!=? AND {self.db.json_int('vars', 'change')}=?",
            (workspace, other_than, change),
            limit=1,
            newest=True,
        )
        return rows[0] if rows else None

    def active_job(self, workspace: str) -> JobRow | None:
        rows = self._jobs(
            f"workspace=? AND state IN ({_marks(len(ACTIVE_STATES))})", (workspace, *ACTIVE_STATES), limit=1
        )
        return rows[0] if rows else None

    def queued(self, workspace: str | None = None, limit: int = 10_000) -> list[JobRow]:
        """QUEUED jobs in the order they run."""
        if workspace is None:
            return self._jobs("state=?", (JobState.QUEUED,), limit)
        return self._jobs("state=? AND workspace=?", (JobState.QUEUED, workspace), limit)

    def queued_workspaces(self) -> list[str]:
        """Workspaces with a QUEUED job, by name (read from the index, no job row decoded)."""
        rows = self.db.execute("SELECT DISTINCT workspace FROM jobs WHERE state=?", (JobState.QUEUED,)).fetchall()
        return sorted(r[0] for r in rows)

    def queue_position(self, job: JobRow) -> int:
        """A QUEUED job's place in its workspace's queue, 1 for the next to run."""
        position: int = self.db.execute(
            "SELECT COUNT(*) FROM jobs WHERE state=? AND workspace=? AND n<=?",
            (JobState.QUEUED, job.workspace, job.n),
        ).fetchone()[0]
        return position

    def workspace_busy(self, workspace: str) -> bool:
        """A job holds it, or some job's command (e.g. a cancel's cleanup) is still open there."""
        if self.active_job(workspace):
            return True
        return (
            self.db.execute(
                f"SELECT 1 FROM commands c JOIN jobs j ON j.id=c.job_id WHERE j.workspace=? "
                f"AND c.state IN ({_marks(len(OPEN))}) LIMIT 1",
                (workspace, *OPEN),
            ).fetchone()
            is not None
        )

    def _jobs(self, where: str, args: tuple[Any, ...], limit: int = 10_000, newest: bool = False) -> list[JobRow]:
        order = "DESC" if newest else "ASC"
        rows = self.db.execute(
            f"SELECT {_JOB_COLS} FROM jobs WHERE {where} ORDER BY n {order} LIMIT ?", (*args, limit)
        ).fetchall()
        return [_job_row(r) for r in rows]

    # ------------------------------------------------------------------ commands: changes

    def add_command(
        self,
        job_id: str,
        kind: CmdKind,
        stage: str,
        step: int,
        attempt: int,
        spec: CommandSpec,
        not_before: float,
        now: float,
    ) -> str:
        """A new PENDING command; its id. A secret stdin is never written (see CommandSpec.for_storage)."""
        cmd_id = ids.new_id("c")
        self.db.execute(
            "INSERT INTO commands(cmd_id, job_id, kind, stage, step, attempt, spec, secret, state, not_before, "
            "created_at, seq) VALUES (?,?,?,?,?,?,?,?,?,?,?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM commands))",
            (
                cmd_id,
                job_id,
                kind,
                stage,
                step,
                attempt,
                msgspec.json.encode(spec.for_storage()),
                int(spec.stdin_secret),
                CmdState.PENDING,
                not_before,
                now,
            ),
        )
        return cmd_id

    def record_dispatch(self, cmd_id: str, agent: str, state: CmdState | None, now: float) -> None:
        """An agent accepted the command; ``state`` (when given) is what it is now."""
        self.db.execute(
            "UPDATE commands SET state=COALESCE(?, state), agent=?, dispatched_at=?, last_contact=?, waiting_for='' "
            "WHERE cmd_id=?",
            (state, agent, now, now, cmd_id),
        )

    def mark_started(self, cmd_id: str, agent: str, started_at: float, now: float) -> None:
        self.db.execute(
            "UPDATE commands SET state=?, agent=?, started_at=?, last_contact=?, waiting_for='' WHERE cmd_id=?",
            (CmdState.RUNNING, agent, started_at, now, cmd_id),
        )

    def touch(self, cmd_id: str, now: float) -> None:
        """Its agent says it is still running."""
        self.db.execute("UPDATE commands SET last_contact=? WHERE cmd_id=?", (now, cmd_id))

    def defer_dispatch(self, cmd_id: str, why: str, not_before: float, refused_since: float | None = None) -> None:
        """No agent took it: it stays PENDING, says why, and is tried again from ``not_before``;
        ``refused_since``: when agents began refusing it (None: no refusal, just no answer)."""
        self.db.execute(
            "UPDATE commands SET waiting_for=?, not_before=?, refused_since=COALESCE(?, refused_since) WHERE cmd_id=?",
            (why, not_before, refused_since, cmd_id),
        )

    def mark_unknown(self, cmd_id: str, since: float) -> None:
        self.db.execute(
            "UPDATE commands SET state=?, unknown_since=? WHERE cmd_id=?", (CmdState.UNKNOWN, since, cmd_id)
        )

    def mark_reached(self, cmd_id: str, now: float) -> None:
        """Its agent answers again and says it runs."""
        self.db.execute(
            "UPDATE commands SET state=?, unknown_since=0, last_contact=? WHERE cmd_id=?",
            (CmdState.RUNNING, now, cmd_id),
        )

    def finish_command(
        self,
        cmd_id: str,
        state: CmdState,
        status: P.CmdStatus,
        started_at: float,
        ended_at: float,
        agent: str,
        outcome: tuple[str, str, str] = ("", "", ""),
    ) -> None:
        """DONE or LOST, with its final status (its output is in the agent's spool, not here)
        and what the stage's interpreter made of it: (outcome, key line, reason)."""
        self.db.execute(
            "UPDATE commands SET state=?, started_at=?, ended_at=?, exit_code=?, signal=?, status=?, agent=?, "
            "outcome=?, key_line=?, reason=? WHERE cmd_id=?",
            (
                state,
                started_at,
                ended_at,
                status.exit_code,
                status.signal,
                msgspec.msgpack.encode(msgspec.structs.replace(status, stdout=b"", stderr=b"")),
                agent,
                *outcome,
                cmd_id,
            ),
        )

    def cancel_command(self, cmd_id: str, reason: str, now: float) -> None:
        self.db.execute(
            "UPDATE commands SET state=?, ended_at=?, reason=? WHERE cmd_id=?",
            (CmdState.CANCELLED, now, reason, cmd_id),
        )

    # ------------------------------------------------------------------ commands: queries

    def command(self, cmd_id: str) -> CommandRow | None:
        rows = self._commands("cmd_id=?", (cmd_id,))
        return rows[0] if rows else None

    def job_commands(self, job_id: str) -> list[CommandRow]:
        """A job's commands in the order they were written."""
        return self._commands("job_id=?", (job_id,))

    def open_commands(self, job_id: str | None = None) -> list[CommandRow]:
        """Commands not yet finished (of one job, or all), oldest first."""
        if job_id is None:
            return self._commands(f"state IN ({_marks(len(OPEN))})", tuple(OPEN))
        return self._commands(f"job_id=? AND state IN ({_marks(len(OPEN))})", (job_id, *OPEN))

    def due(self, now: float) -> list[CommandRow]:
        """PENDING commands that may go now, each the oldest open command of its job (a job
        runs one command at a time), oldest first; read from the state index, not every open row."""
        return self._commands(
            f"state=? AND not_before <= ? AND NOT EXISTS (SELECT 1 FROM commands o WHERE o.job_id=commands.job_id "
            f"AND o.state IN ({_marks(len(OPEN))}) AND (o.created_at < commands.created_at "
            f"OR (o.created_at = commands.created_at AND o.seq < commands.seq)))",
            (CmdState.PENDING, now, *OPEN),
        )

    def dispatchable(self, cmd_id: str) -> tuple[CommandRow, str | None, str | None, str] | None:
        """A PENDING command with where its job may run it (agent, pool, workspace), in one
        read; None when it is not PENDING (any more)."""
        cols = ", ".join(f"c.{c}" for c in _CMD_FIELDS)
        row = self.db.execute(
            f"SELECT {cols}, j.agent, j.pool, j.workspace FROM commands c JOIN jobs j ON j.id=c.job_id "
            "WHERE c.cmd_id=? AND c.state=?",
            (cmd_id, CmdState.PENDING),
        ).fetchone()
        if row is None:
            return None
        *cmd, agent, pool, workspace = row
        return _command_row(tuple(cmd)), agent, pool, workspace

    def in_flight_on(self, agent: str) -> list[CommandRow]:
        return self._commands(f"agent=? AND state IN ({_marks(len(IN_FLIGHT))})", (agent, *IN_FLIGHT))

    def agents_in_flight(self, quiet_since: float | None = None) -> set[str]:
        """Agents with commands in flight (only those not heard from since ``quiet_since``, if given)."""
        where = f"agent != '' AND state IN ({_marks(len(IN_FLIGHT))})"
        args: tuple[Any, ...] = tuple(IN_FLIGHT)
        if quiet_since is not None:
            where += " AND last_contact < ?"
            args += (quiet_since,)
        return {r[0] for r in self.db.execute(f"SELECT DISTINCT agent FROM commands WHERE {where}", args)}

    def _commands(self, where: str, args: tuple[Any, ...]) -> list[CommandRow]:
        rows = self.db.execute(
            f"SELECT {_CMD_COLS} FROM commands WHERE {where} ORDER BY created_at, seq", args
        ).fetchall()
        return [_command_row(r) for r in rows]


# The definition of a schedule as stored; the rest of P.Schedule is its state, in columns.
_SCHEDULE_SPEC = ("cron", "timezone", "on_change", "poll_s")
_SCHEDULE_STATE = "name, template, spec, next_at, last_job, last_change, last_run_at, note"


def _schedule_row(r: tuple[Any, ...]) -> P.Schedule:
    name, template, spec, next_at, last_job, last_change, last_run_at, note = r
    return P.Schedule(
        name=name,
        template=template,
        **msgspec.json.decode(spec, type=dict[str, Any]),
        next_at=next_at,
        last_job=last_job,
        last_change=last_change,
        last_run_at=last_run_at,
        note=note,
    )


class TemplateStore:
    """Templates, schedules and which job came from which, on a Store's connection (the same
    transactions: a schedule's run and its job are committed together)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    # ------------------------------------------------------------------ templates

    def put_template(self, t: P.Template, now: float) -> None:
        self.db.execute(
            "INSERT INTO templates(name, spec, updated_at) VALUES (?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET spec=excluded.spec, updated_at=excluded.updated_at",
            (t.name, msgspec.json.encode(t), now),
        )

    def template(self, name: str) -> P.Template | None:
        row = self.db.execute("SELECT spec FROM templates WHERE name=?", (name,)).fetchone()
        return msgspec.json.decode(row[0], type=P.Template) if row else None

    def templates(self) -> list[P.Template]:
        rows = self.db.execute("SELECT spec FROM templates ORDER BY name").fetchall()
        return [msgspec.json.decode(r[0], type=P.Template) for r in rows]

    def remove_template(self, name: str) -> None:
        self.db.execute("DELETE FROM templates WHERE name=?", (name,))

    # ------------------------------------------------------------------ schedules

    def put_schedule(self, s: P.Schedule, now: float) -> None:
        """A new schedule, or a changed definition (its state starts afresh, but for the last
        change an on-change schedule ran for: the new definition need not run it again)."""
        spec = msgspec.json.encode({k: getattr(s, k) for k in _SCHEDULE_SPEC})
        self.db.execute(
            "INSERT INTO schedules(name, template, spec, next_at, last_change, updated_at) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET template=excluded.template, spec=excluded.spec, "
            "next_at=excluded.next_at, note='', updated_at=excluded.updated_at",
            (s.name, s.template, spec, s.next_at, s.last_change, now),
        )

    def schedule(self, name: str) -> P.Schedule | None:
        row = self.db.execute(f"SELECT {_SCHEDULE_STATE} FROM schedules WHERE name=?", (name,)).fetchone()
        return _schedule_row(row) if row else None

    def schedules(self, template: str | None = None) -> list[P.Schedule]:
        where, args = ("WHERE template=?", (template,)) if template is not None else ("", ())
        rows = self.db.execute(f"SELECT {_SCHEDULE_STATE} FROM schedules {where} ORDER BY name", args).fetchall()
        return [_schedule_row(r) for r in rows]

    def remove_schedule(self, name: str) -> None:
        self.db.execute("DELETE FROM schedules WHERE name=?", (name,))

    def schedule_waits(self, name: str, next_at: float, note: str, now: float) -> None:
        """Not run this time: due again from ``next_at``, and why."""
        self.db.execute("UPDATE schedules SET next_at=?, note=?, updated_at=? WHERE name=?", (next_at, note, now, name))

    def schedule_ran(self, name: str, job_id: str, change: int | None, next_at: float, now: float) -> None:
        self.db.execute(
            "UPDATE schedules SET next_at=?, last_job=?, last_change=COALESCE(?, last_change), last_run_at=?, "
            "note='', updated_at=? WHERE name=?",
            (next_at, job_id, change, now, now, name),
        )

    # ------------------------------------------------------------------ jobs of templates

    def link_job(self, job_id: str, template: str, schedule: str = "") -> None:
        self.db.execute("INSERT INTO template_jobs VALUES (?,?,?)", (job_id, template, schedule))

    def active_job(self, template: str) -> str | None:
        """A job of this template that has not finished (QUEUED included: it will run)."""
        row = self.db.execute(
            f"SELECT j.id FROM template_jobs t JOIN jobs j ON j.id=t.job_id WHERE t.template=? "
            f"AND j.state NOT IN ({_marks(len(TERMINAL))}) ORDER BY j.n LIMIT 1",
            (template, *TERMINAL),
        ).fetchone()
        return row[0] if row else None


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _split_sql(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
