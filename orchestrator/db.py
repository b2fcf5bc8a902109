"""The store's connection: SQLite or PostgreSQL behind one small interface.

The store (orchestrator/store.py) writes its SQL once, in a subset both engines run: ``?``
placeholders, ``ON CONFLICT ... DO NOTHING/UPDATE``, ``TRUE``, and SQLite's type names in its
migrations. What differs is here, in one place: placeholders (``?`` -> ``%s``), the column types
of migrations (BLOB, REAL, INTEGER -> BYTEA, DOUBLE PRECISION, BIGINT), reading a JSON number,
the schema version (SQLite's ``PRAGMA user_version``, so existing files keep migrating;
PostgreSQL's one-row ``p4bus_schema`` table), and transactions:

- SQLite: ``BEGIN IMMEDIATE`` with ``synchronous=FULL``; a non-durable step drops to NORMAL.
- PostgreSQL: the default isolation (one writer); a non-durable step is
  ``SET LOCAL synchronous_commit = off`` (it survives the orchestrator's crash, not the server's).

Transactions nest and group (written once, in ``Db``, for both): a ``tx()`` inside another is a
SAVEPOINT, rolled back alone when its block raises; inside ``batch()`` the first ``tx()`` begins
one transaction that the batch's end commits (group commit: one flush for every step of a loop
wake-up), durable if any step in it asked to be. ``after_commit(fn)`` holds ``fn`` until the
transaction that is open commits (at once when none is), and drops it if the step that held it
is rolled back: whatever leaves the process for a step goes after the step is on disk.

A location is a PostgreSQL DSN when it starts with ``postgresql://`` or ``postgres://``,
otherwise a SQLite file. The DSN never holds the password (refused): it comes from a 0600
file (``[orchestrator] store_password_file``) or libpq's own PGPASSFILE / ~/.pgpass.

When the PostgreSQL connection is lost the orchestrator cannot know what its last step left
behind, so it must not act further: ``StoreLost`` ends the process (a SystemExit, so that no
``except Exception`` on the way carries on) after one log line; whatever restarts it recovers
from the store as after any crash.
"""

from __future__ import annotations

import re
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from common import logs
from common.config import ConfigError, read_password_file

if TYPE_CHECKING:
    import psycopg

log = logs.get("orchestrator")

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# Any value works: only p4bus's migrations take this transaction-scoped lock.
_MIGRATION_LOCK = 0x70346275_73000001
# Unless the DSN says otherwise: fail fast at start, and notice a server that went silent
# (no FIN, e.g. a host or network gone) within about 15 s instead of waiting on TCP for hours.
_PG_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",
    "application_name": "p4bus-orchestrator",
}


def is_postgres(location: str | Path) -> bool:
    return str(location).startswith(POSTGRES_SCHEMES)


def redact(dsn: str) -> str:
    """The DSN as it may be shown: any password (user:PASSWORD@ or password=...) replaced by ***."""
    dsn = re.sub(r"(://[^:/@?]*):[^@/?]*@", r"\1:***@", dsn)
    return re.sub(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*)", r"\1***", dsn)


class StoreError(SystemExit):
    """The store cannot be used: the orchestrator exits non-zero with this one line."""


class StoreLost(StoreError):
    """The PostgreSQL connection broke mid-run: the last step's outcome is unknown."""


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


# Statements that only read: they need no savepoint (a scope that only reads costs none).
_READS = ("SELECT", "SHOW")


@dataclass(slots=True)
class _Scope:
    """A step open in a transaction or batch (Db._scope)."""

    held: int  # effects held before it: dropped back to this if it is rolled back
    durable: bool
    savepoint: str = ""  # made at the first write inside it, maybe shared with scopes around it
    owner: bool = False  # it made the savepoint and releases it


class Db(ABC):
    """One connection, used by one thread at a time (the orchestrator's loop)."""

    location: str  # for logs and messages: a path, or the DSN without any password
    # Called with the seconds each commit took (orchestrator/metrics.py observes them, through
    # the Store), right after the commit and before the effects it held (after_commit) run.
    on_commit: Callable[[float], None] = staticmethod(lambda _s: None)

    def __init__(self) -> None:
        self._held: list[Callable[[], None]] = []  # after_commit's, in order
        self._batching = False
        self._durable = False  # the open transaction must be flushed to disk at its commit
        self._began_durable = False  # ... and was begun so (else its commit must say so)
        self._scopes: list[_Scope] = []  # the steps open in the transaction (or batch), outermost first
        self._savepoints = 0  # to name each one

    @abstractmethod
    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor: ...

    @abstractmethod
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    @property
    @abstractmethod
    def in_transaction(self) -> bool: ...

    @abstractmethod
    def _begin(self, durable: bool) -> None:
        """Open a transaction (not durable: its commit need not wait for the disk)."""

    @abstractmethod
    def _commit(self, durable: bool, began_durable: bool) -> None:
        """Commit the open transaction, durably if ``durable`` (it may have begun as not)."""

    @abstractmethod
    def _usable(self) -> bool:
        """The connection can still be spoken to (a rollback is worth trying)."""

    @abstractmethod
    def _run(self, sql: str) -> None:
        """A transaction-control statement (BEGIN, SAVEPOINT, ...): not one of the store's."""

    @contextmanager
    def tx(self, durable: bool = True) -> Iterator[Db]:
        """One atomic step. Inside an open transaction, or a batch, it is a scope of it (a
        savepoint, rolled back alone if the block raises); otherwise a transaction of its own,
        committed at the block's end. ``durable=False``: the step may commit without waiting for
        the disk (a batch waits if any of its steps asked to)."""
        if self._batching or self.in_transaction:
            with self._scope(durable):
                yield self
            return
        self._begin(durable)
        self._durable = self._began_durable = durable
        try:
            yield self
        except BaseException:
            self._abort()
            raise
        self._finish()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every ``tx()`` until the block ends is one transaction (begun by the first write, so
        a batch that writes nothing commits nothing), committed when the block ends; the effects
        they held run after that commit. The block raising rolls all of it back."""
        assert not self._batching and not self.in_transaction, "a batch does not nest"
        self._batching = True
        try:
            yield
        except BaseException:
            self._batching = False
            self._scopes.clear()
            if self.in_transaction:
                self._abort()
            raise
        self._batching = False
        if self.in_transaction:
            self._finish()

    @contextmanager
    def step(self) -> Iterator[None]:
        """One step of the open batch (an event, a request, a reply): a scope rolled back alone
        if the block raises, so one bad step does not undo the others. Outside a batch (a
        standby answering reads) nothing: it must not take the write lock."""
        if not self._batching:
            yield
            return
        with self._scope(durable=False):
            yield

    def after_commit(self, effect: Callable[[], None]) -> None:
        """Run ``effect`` once the open transaction has committed (now, when none is open); never
        if the step that held it is rolled back."""
        if self.in_transaction:
            self._held.append(effect)
        else:
            effect()

    @property
    def held(self) -> int:
        """How many effects wait for the open transaction's commit."""
        return len(self._held)

    # Savepoints are made lazily, at a scope's first write, and shared: the scopes open with no
    # write between their starts take one savepoint, made by the outermost of them (which
    # releases it). Rolling back to it undoes exactly an inner one's writes too, since nothing
    # was written between. A step that only reads costs no statement; a step around an engine
    # step, one savepoint instead of two.

    @contextmanager
    def _scope(self, durable: bool) -> Iterator[None]:
        if self.in_transaction:
            self._durable |= durable
        scope = _Scope(len(self._held), durable)
        self._scopes.append(scope)
        try:
            yield
        except BaseException:
            self._scopes.pop()
            del self._held[scope.held :]  # the effects of what is undone never happen
            if scope.savepoint and self._usable():
                self._run(f"ROLLBACK TO SAVEPOINT {scope.savepoint}")
                if scope.owner:
                    self._run(f"RELEASE SAVEPOINT {scope.savepoint}")
            raise
        self._scopes.pop()
        if scope.owner:
            self._run(f"RELEASE SAVEPOINT {scope.savepoint}")

    def _will_write(self) -> None:
        """Before a statement that may write: the open scopes without a savepoint get one (and
        a batch's transaction begins, at its first write, durable if a scope open asks it)."""
        if not self._scopes or self._scopes[-1].savepoint:
            return
        if not self.in_transaction:
            durable = any(scope.durable for scope in self._scopes)
            self._begin(durable)
            self._durable = self._began_durable = durable
        self._savepoints += 1
        name = f"s{self._savepoints}"
        self._run(f"SAVEPOINT {name}")
        outermost = self._scopes[-1]
        for scope in reversed(self._scopes):
            if scope.savepoint:
                break
            scope.savepoint, outermost = name, scope
        outermost.owner = True

    def _finish(self) -> None:
        try:
            started = time.perf_counter()
            self._commit(self._durable, self._began_durable)
            seconds = time.perf_counter() - started
        except BaseException:
            self._held.clear()  # not known to be committed: act on none of it
            raise
        self.on_commit(seconds)  # with ``held`` still counting what is about to go out
        held, self._held = self._held, []
        for effect in held:
            try:
                effect()
            except Exception:  # committed: one effect failing must not keep the others back
                log.exception("store.after_commit_failed", effect=getattr(effect, "__name__", repr(effect)))

    def _abort(self) -> None:
        self._held.clear()
        if self._usable():
            self._run("ROLLBACK")

    @abstractmethod
    def lock_schema(self) -> None:
        """Inside a transaction: keep other processes' migrations out until it ends."""

    @abstractmethod
    def schema_version(self) -> int: ...

    @abstractmethod
    def set_schema_version(self, version: int) -> None: ...

    @abstractmethod
    def ddl(self, statement: str) -> None:
        """Run one migration statement, its column types in this engine's names."""

    @abstractmethod
    def json_int(self, column: str, key: str) -> str:
        """An SQL expression: the top-level ``key`` of the JSON document in ``column`` when it
        is a number (NULL otherwise: a string "42" is not the number 42)."""

    @abstractmethod
    def close(self) -> None: ...


def open_db(location: str | Path, password_file: str = "") -> Db:
    """The store's connection: PostgreSQL for a postgresql:// DSN, else a SQLite file."""
    if is_postgres(location):
        return PgDb(PgTarget.from_config(str(location), password_file))
    if password_file:
        raise ConfigError(
            f"orchestrator.store_password_file is set but the store {location} is a SQLite file: "
            "a password is only for a postgresql:// store; remove it"
        )
    return SqliteDb(Path(location))


# ---------------------------------------------------------------------------------- SQLite


class SqliteDb(Db):
    """WAL mode, synchronous=FULL: a committed step survives a crash of the process or the machine."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.location = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        if self._scopes and not sql.startswith(_READS):
            self._will_write()
        return self.conn.execute(sql, args)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        if self._scopes:
            self._will_write()
        self.conn.executemany(sql, rows)

    def _run(self, sql: str) -> None:
        self.conn.execute(sql)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def _begin(self, durable: bool) -> None:
        if durable:
            self.conn.execute("BEGIN IMMEDIATE")
            return
        # Survives a process crash, not a power cut; spares the dispatch path a second fsync.
        self.conn.execute("PRAGMA synchronous=NORMAL")
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.conn.execute("PRAGMA synchronous=FULL")
            raise

    def _commit(self, durable: bool, began_durable: bool) -> None:
        if began_durable:
            self.conn.execute("COMMIT")
            return
        try:
            self.conn.execute("COMMIT")
        finally:
            self.conn.execute("PRAGMA synchronous=FULL")
        if durable:
            self._flush_wal()

    def _flush_wal(self) -> None:
        """Make what was just committed without a sync durable. SQLite fixes a transaction's
        synchronous setting when it begins, so a batch begun with bookkeeping that came to hold
        a transition cannot be committed durably itself; one more commit at synchronous=FULL
        syncs the WAL file, and with it every frame before its own. Its one change rewrites
        the schema version with its own value (a header field: no table of the store touched)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(f"PRAGMA user_version={self.schema_version()}")
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def _abort(self) -> None:
        super()._abort()
        if not self._began_durable:
            self.conn.execute("PRAGMA synchronous=FULL")

    def _usable(self) -> bool:
        return True

    def lock_schema(self) -> None:
        pass  # BEGIN IMMEDIATE already holds the file's write lock

    def schema_version(self) -> int:
        version: int = self.conn.execute("PRAGMA user_version").fetchone()[0]
        return version

    def set_schema_version(self, version: int) -> None:
        self.conn.execute(f"PRAGMA user_version={int(version)}")

    def ddl(self, statement: str) -> None:
        self.conn.execute(statement)

    def json_int(self, column: str, key: str) -> str:
        doc = f"CAST({column} AS TEXT)"
        return f"CASE WHEN json_type({doc}, '$.{key}') = 'integer' THEN json_extract({doc}, '$.{key}') END"

    def close(self) -> None:
        self.conn.close()


# ---------------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class PgTarget:
    """How to reach the PostgreSQL store: the DSN (never with a password) and the password read
    from ``store_password_file`` (None: libpq's PGPASSFILE/~/.pgpass, or no password at all).

    Other parts that need their own session on the same database (a standby's lease) use
    ``Store.pg.connect()``: the same server, user, password and timeouts as the store's.
    """

    dsn: str
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, dsn: str, password_file: str = "") -> PgTarget:
        import psycopg
        from psycopg import conninfo

        try:
            params = conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:  # libpq's own words on what is wrong
            raise ConfigError(f"orchestrator.store {redact(dsn)} is not a valid PostgreSQL DSN: {exc}") from None
        if params.get("password"):
            raise ConfigError(
                f"orchestrator.store {redact(dsn)} holds a password: remove it from the DSN and put it in "
                "orchestrator.store_password_file (mode 0600) or libpq's PGPASSFILE"
            )
        password = read_password_file(password_file) if password_file else None
        return cls(dsn, password)

    @property
    def location(self) -> str:
        return redact(self.dsn)

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        """A new autocommit session; psycopg.OperationalError if the server cannot be reached."""
        import psycopg
        from psycopg import conninfo

        given = conninfo.conninfo_to_dict(self.dsn)
        extra: dict[str, Any] = {k: v for k, v in _PG_DEFAULTS.items() if k not in given}
        if self.password is not None:
            extra["password"] = self.password
        return psycopg.connect(self.dsn, autocommit=True, **extra)


@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """The store's SQL with psycopg's placeholders (the store's SQL has no ? or % in literals)."""
    return sql.replace("%", "%%").replace("?", "%s")


_PG_TYPES = (("BLOB", "BYTEA"), ("REAL", "DOUBLE PRECISION"), ("INTEGER", "BIGINT"))


def pg_ddl(statement: str) -> str:
    """A migration statement with PostgreSQL's column types (timestamps as doubles, counters 64-bit)."""
    for sqlite_type, pg_type in _PG_TYPES:
        statement = re.sub(rf"\b{sqlite_type}\b", pg_type, statement)
    return statement


class PgDb(Db):
    """One autocommit session; a step is an explicit BEGIN ... COMMIT."""

    def __init__(self, target: PgTarget) -> None:
        import psycopg
        from psycopg.pq import TransactionStatus

        super().__init__()
        self.target = target
        self.location = target.location
        self._idle = TransactionStatus.IDLE
        self._errors: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg.InterfaceError)
        try:
            self.conn = target.connect()
        except psycopg.OperationalError as exc:
            raise StoreError(
                f"p4bus orchestrator: cannot connect to the store {self.location}: {_one_line(exc)} "
                "(is the server up, the DSN right, the password in store_password_file or PGPASSFILE?)"
            ) from None

    def _lost(self, exc: BaseException) -> NoReturn:
        """The session is gone: what the last statement did is unknown. Say so once and end."""
        log.error("store.connection_lost", store=self.location, error=_one_line(exc))
        raise StoreLost(
            f"p4bus orchestrator: lost the connection to the store {self.location} ({_one_line(exc)}); "
            "exiting so that nothing acts on a half-known state (a restart recovers from the store)"
        ) from None

    def _guard(self, exc: BaseException) -> None:
        if self.conn.closed or self.conn.broken:
            self._lost(exc)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        if self._scopes and not sql.startswith(_READS):
            self._will_write()
        try:
            return self.conn.execute(_pg_sql(sql), args)
        except self._errors as exc:
            self._guard(exc)
            raise

    def _run(self, sql: str) -> None:
        try:
            self.conn.execute(sql)
        except self._errors as exc:
            self._guard(exc)
            raise

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        if self._scopes:
            self._will_write()
        try:
            with self.conn.cursor() as cur:
                cur.executemany(_pg_sql(sql), rows)
        except self._errors as exc:
            self._guard(exc)
            raise

    @property
    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status != self._idle

    def _begin(self, durable: bool) -> None:
        self._run("BEGIN")
        if not durable:
            self._run("SET LOCAL synchronous_commit = off")

    def _commit(self, durable: bool, began_durable: bool) -> None:
        if durable and not began_durable:
            self._run("SET LOCAL synchronous_commit = on")  # a batch begun with bookkeeping
        self._run("COMMIT")

    def _usable(self) -> bool:
        return not (self.conn.closed or self.conn.broken)

    def lock_schema(self) -> None:
        self.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
        # Created under the lock: two orchestrators starting at once do not race to create it.
        self.execute(
            "CREATE TABLE IF NOT EXISTS p4bus_schema (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), "
            "version BIGINT NOT NULL)"
        )
        self.execute("INSERT INTO p4bus_schema (version) VALUES (0) ON CONFLICT DO NOTHING")

    def schema_version(self) -> int:
        version: int = self.execute("SELECT version FROM p4bus_schema").fetchone()[0]
        return version

    def set_schema_version(self, version: int) -> None:
        self.execute("UPDATE p4bus_schema SET version=?", (version,))

    def ddl(self, statement: str) -> None:
        self.execute(pg_ddl(statement))

    def json_int(self, column: str, key: str) -> str:
        doc = f"convert_from({column}, 'UTF8')::jsonb"
        return f"CASE WHEN jsonb_typeof({doc} -> '{key}') = 'number' THEN ({doc} ->> '{key}')::numeric END"

    def close(self) -> None:
        self.conn.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
