"""On-disk server state: one SQLite database (WAL) in the server root.

Every p4 invocation runs its whole command inside one `BEGIN IMMEDIATE` transaction, so
concurrent invocations serialise on SQLite's write lock and never see half a command. File
contents are stored once per SHA-1 in the `blobs` table (content addressed, deduplicated).
"""

from __future__ import annotations

import os
import sqlite3
import time

from p4sim import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only
    from collections.abc import Iterable

SCHEMA_VERSION = 1
DB_NAME = "p4sim.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS users(name TEXT PRIMARY KEY, password TEXT);
CREATE TABLE IF NOT EXISTS tickets(ticket TEXT PRIMARY KEY, user TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS blobs(digest TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS revs(
    file TEXT NOT NULL, rev INTEGER NOT NULL, action TEXT NOT NULL, change INTEGER NOT NULL,
    type TEXT NOT NULL, digest TEXT, size INTEGER NOT NULL, time INTEGER NOT NULL,
    PRIMARY KEY(file, rev)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS revs_change ON revs(change);
CREATE INDEX IF NOT EXISTS revs_lower ON revs(lower(file));
CREATE TABLE IF NOT EXISTS changes(
    change INTEGER PRIMARY KEY, client TEXT NOT NULL, user TEXT NOT NULL, status TEXT NOT NULL,
    description TEXT NOT NULL, time INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS specs(
    kind TEXT NOT NULL, name TEXT NOT NULL, owner TEXT NOT NULL, description TEXT NOT NULL,
    root TEXT, options TEXT NOT NULL, view TEXT NOT NULL, updated INTEGER NOT NULL,
    accessed INTEGER NOT NULL, PRIMARY KEY(kind, name));
CREATE TABLE IF NOT EXISTS have(client TEXT NOT NULL, file TEXT NOT NULL, rev INTEGER NOT NULL,
    PRIMARY KEY(client, file)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS opened(
    client TEXT NOT NULL, file TEXT NOT NULL, action TEXT NOT NULL, change INTEGER NOT NULL,
    rev INTEGER NOT NULL, type TEXT NOT NULL, user TEXT NOT NULL,
    PRIMARY KEY(client, file)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS resolves(
    client TEXT NOT NULL, file TEXT NOT NULL, from_file TEXT NOT NULL,
    start_rev INTEGER NOT NULL, end_rev INTEGER NOT NULL, base_file TEXT NOT NULL,
    base_rev INTEGER NOT NULL, how TEXT, PRIMARY KEY(client, file, from_file)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS integs(
    to_file TEXT NOT NULL, to_rev INTEGER NOT NULL, from_file TEXT NOT NULL,
    start_rev INTEGER NOT NULL, end_rev INTEGER NOT NULL, how TEXT NOT NULL, change INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS integs_to ON integs(to_file, from_file);
CREATE INDEX IF NOT EXISTS integs_from ON integs(from_file, to_file);
CREATE TABLE IF NOT EXISTS shelves(
    change INTEGER NOT NULL, file TEXT NOT NULL, action TEXT NOT NULL, rev INTEGER NOT NULL,
    type TEXT NOT NULL, digest TEXT, PRIMARY KEY(change, file)) WITHOUT ROWID;
"""

Row = sqlite3.Row


def _range(prefix: str) -> tuple[str, str]:
    """Bounds selecting every path that starts with `prefix` through an index range scan."""
    return prefix, prefix + "\U0010ffff"


class NoServer(Exception):
    """The server root holds no p4sim server (``Store(root, create=True)`` makes one)."""


class Store:
    def __init__(self, root: str, create: bool = False):
        self.root = str(root)
        if not create and not os.path.isfile(os.path.join(self.root, DB_NAME)):
            # A typo in P4PORT must not quietly start an empty depot.
            raise NoServer(self.root)
        os.makedirs(self.root, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (BEGIN IMMEDIATE below).
        self.db = sqlite3.connect(os.path.join(self.root, DB_NAME), timeout=60, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        if self.db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            self._create_schema()
        self.db.execute("PRAGMA synchronous=NORMAL")

    def _create_schema(self) -> None:
        self.db.execute("PRAGMA journal_mode=WAL")
        self.begin()
        # executescript() would COMMIT first; run the statements inside our transaction.
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self.db.execute(statement)
        self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self.commit()

    def begin(self) -> None:
        """A command is one write transaction: concurrent invocations serialise here."""
        self.db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def rollback(self) -> None:
        self.db.execute("ROLLBACK")

    def close(self) -> None:
        self.db.close()

    # -- counters and changes -------------------------------------------------------------
    def next_change_number(self) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name='change'").fetchone()
        value = (row[0] if row else 0) + 1
        self.db.execute("INSERT OR REPLACE INTO counters VALUES('change', ?)", (value,))
        return value

    def last_change_number(self) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name='change'").fetchone()
        return row[0] if row else 0

    def create_change(
        self, client: str, user: str, description: str, status: str = "pending", when: int | None = None
    ) -> int:
        number = self.next_change_number()
        self.db.execute(
            "INSERT INTO changes VALUES(?,?,?,?,?,?)",
            (number, client, user, status, description, when or int(time.time())),
        )
        return number

    def change(self, number: int) -> Row | None:
        return self.db.execute("SELECT * FROM changes WHERE change=?", (number,)).fetchone()

    def update_change(self, number: int, **fields: object) -> None:
        sets = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE changes SET {sets} WHERE change=?", (*fields.values(), number))

    def renumber_change(self, old: int, new: int) -> None:
        self.db.execute("UPDATE changes SET change=? WHERE change=?", (new, old))
        self.db.execute("UPDATE opened SET change=? WHERE change=?", (new, old))

    def delete_change(self, number: int) -> None:
        self.db.execute("DELETE FROM changes WHERE change=?", (number,))

    def changes(self, status: str | None = None) -> list[Row]:
        if status:
            return self.db.execute("SELECT * FROM changes WHERE status=? ORDER BY change DESC", (status,)).fetchall()
        return self.db.execute("SELECT * FROM changes ORDER BY change DESC").fetchall()

    def change_files(self, prefix: str) -> list[tuple[int, str]]:
        """(change, file) for revisions, opened and shelved files under `prefix`."""
        lo, hi = _range(prefix)
        return self.db.execute(
            "SELECT change, file FROM revs WHERE file>=? AND file<? UNION "
            "SELECT change, file FROM opened WHERE file>=? AND file<? UNION "
            "SELECT change, file FROM shelves WHERE file>=? AND file<?",
            (lo, hi, lo, hi, lo, hi),
        ).fetchall()

    def shelved_changes(self) -> set[int]:
        return {r[0] for r in self.db.execute("SELECT DISTINCT change FROM shelves")}

    # -- users and tickets ---------------------------------------------------------------
    def password(self, user: str) -> str | None:
        row = self.db.execute("SELECT password FROM users WHERE name=?", (user,)).fetchone()
        return row[0] if row else None

    def set_password(self, user: str, password: str | None) -> None:
        self.db.execute("INSERT OR REPLACE INTO users VALUES(?,?)", (user, password))

    def add_ticket(self, ticket: str, user: str, expires: float) -> None:
        self.db.execute("INSERT INTO tickets VALUES(?,?,?)", (ticket, user, expires))

    def ticket_expiry(self, ticket: str, user: str) -> float | None:
        row = self.db.execute("SELECT expires FROM tickets WHERE ticket=? AND user=?", (ticket, user)).fetchone()
        return row[0] if row else None

    # -- specs (clients and branches) -------------------------------------------------------
    def spec(self, kind: str, name: str) -> Row | None:
        return self.db.execute("SELECT * FROM specs WHERE kind=? AND name=?", (kind, name)).fetchone()

    def save_spec(
        self,
        kind: str,
        name: str,
        owner: str,
        description: str,
        root: str | None,
        options: str,
        view: str,
        updated: int,
    ) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO specs VALUES(?,?,?,?,?,?,?,?,?)",
            (kind, name, owner, description, root, options, view, updated, updated),
        )

    def delete_spec(self, kind: str, name: str) -> None:
        self.db.execute("DELETE FROM specs WHERE kind=? AND name=?", (kind, name))

    # -- blobs ------------------------------------------------------------------------------
    def put_blobs(self, contents: Iterable[bytes]) -> list[str]:
        import hashlib  # only writers need it; keeps read-only invocations fast

        digests, rows = [], []
        for data in contents:
            digest = hashlib.sha1(data).hexdigest()
            digests.append(digest)
            rows.append((digest, data))
        self.db.executemany("INSERT OR IGNORE INTO blobs VALUES(?,?)", rows)
        return digests

    def blob(self, digest: str | None) -> bytes:
        if digest is None:
            return b""
        return self.db.execute("SELECT data FROM blobs WHERE digest=?", (digest,)).fetchone()[0]

    def blobs(self, digests: Iterable[str]) -> dict[str, bytes]:
        wanted = list(set(digests))
        found: dict[str, bytes] = {}
        for i in range(0, len(wanted), 500):  # stay under SQLite's bound-parameter limit
            part = wanted[i : i + 500]
            marks = ",".join("?" * len(part))
            found.update(self.db.execute(f"SELECT digest, data FROM blobs WHERE digest IN ({marks})", part).fetchall())
        return found

    # -- revisions ----------------------------------------------------------------------------
    def heads(self, prefixes: Iterable[str], at_change: int | None = None) -> dict[str, Row]:
        """Latest revision (at or before `at_change`) of every depot file under the prefixes."""
        limit = at_change if at_change is not None else 2**62
        heads: dict[str, Row] = {}
        for prefix in prefixes:
            # SQLite returns the bare columns of the row holding MAX(rev).
            heads.update(
                (r["file"], r)
                for r in self.db.execute(
                    "SELECT file, MAX(rev) AS rev, action, change, type, digest, size, time FROM revs "
                    "WHERE file>=? AND file<? AND change<=? GROUP BY file",
                    (*_range(prefix), limit),
                )
            )
        return heads

    def head(self, file: str, at_change: int | None = None) -> Row | None:
        limit = at_change if at_change is not None else 2**62
        return self.db.execute(
            "SELECT * FROM revs WHERE file=? AND change<=? ORDER BY rev DESC LIMIT 1", (file, limit)
        ).fetchone()

    def rev(self, file: str, rev: int) -> Row | None:
        return self.db.execute("SELECT * FROM revs WHERE file=? AND rev=?", (file, rev)).fetchone()

    def add_revs(self, rows: Iterable[tuple]) -> None:
        """Rows of (file, rev, action, change, type, digest, size, time)."""
        self.db.executemany("INSERT INTO revs VALUES(?,?,?,?,?,?,?,?)", rows)

    def revs_in_change(self, change: int) -> list[Row]:
        return self.db.execute("SELECT * FROM revs WHERE change=? ORDER BY file", (change,)).fetchall()

    def files_named_like(self, file: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT file FROM revs WHERE lower(file)=lower(?)", (file,))]

    # -- have list ------------------------------------------------------------------------------
    def have(self, client: str, prefixes: Iterable[str] = ("//",)) -> dict[str, int]:
        have: dict[str, int] = {}
        for prefix in prefixes:
            have.update(
                self.db.execute(
                    "SELECT file, rev FROM have WHERE client=? AND file>=? AND file<?", (client, *_range(prefix))
                ).fetchall()
            )
        return have

    def set_have(self, client: str, items: Iterable[tuple[str, int]]) -> None:
        """Record (file, rev) pairs; rev 0 removes the file from the have list."""
        rows = list(items)
        self.db.executemany("DELETE FROM have WHERE client=? AND file=?", [(client, f) for f, r in rows if not r])
        self.db.executemany("INSERT OR REPLACE INTO have VALUES(?,?,?)", [(client, f, r) for f, r in rows if r])

    # -- opened files --------------------------------------------------------------------------
    def opened(self, client: str | None = None, change: int | None = None) -> list[Row]:
        sql, params = "SELECT * FROM opened WHERE 1", list[object]()
        if client is not None:
            sql += " AND client=?"
            params.append(client)
        if change is not None:
            sql += " AND change=?"
            params.append(change)
        return self.db.execute(sql + " ORDER BY file", params).fetchall()

    def opened_file(self, client: str, file: str) -> Row | None:
        return self.db.execute("SELECT * FROM opened WHERE client=? AND file=?", (client, file)).fetchone()

    def open_files(self, rows: Iterable[tuple]) -> None:
        """Rows of (client, file, action, change, rev, type, user)."""
        self.db.executemany("INSERT OR REPLACE INTO opened VALUES(?,?,?,?,?,?,?)", rows)

    def set_work_rev(self, client: str, file: str, rev: int) -> None:
        self.db.execute("UPDATE opened SET rev=? WHERE client=? AND file=?", (rev, client, file))

    def reopen(self, client: str, file: str, change: int) -> None:
        self.db.execute("UPDATE opened SET change=? WHERE client=? AND file=?", (change, client, file))

    def close_files(self, client: str, files: Iterable[str]) -> None:
        """Forget opened state and any resolve records of the files."""
        pairs = [(client, f) for f in files]
        self.db.executemany("DELETE FROM opened WHERE client=? AND file=?", pairs)
        self.db.executemany("DELETE FROM resolves WHERE client=? AND file=?", pairs)

    # -- resolves ------------------------------------------------------------------------------
    def resolves(self, client: str, file: str | None = None) -> list[Row]:
        if file is None:
            return self.db.execute("SELECT * FROM resolves WHERE client=? ORDER BY file", (client,)).fetchall()
        return self.db.execute("SELECT * FROM resolves WHERE client=? AND file=?", (client, file)).fetchall()

    def schedule_resolves(self, rows: Iterable[tuple]) -> None:
        """Rows of (client, file, from_file, start_rev, end_rev, base_file, base_rev)."""
        self.db.executemany("INSERT OR REPLACE INTO resolves VALUES(?,?,?,?,?,?,?,NULL)", rows)

    def mark_resolved(self, client: str, file: str, from_file: str, how: str) -> None:
        self.db.execute(
            "UPDATE resolves SET how=? WHERE client=? AND file=? AND from_file=?", (how, client, file, from_file)
        )

    # -- integration history --------------------------------------------------------------------
    def add_integs(self, rows: Iterable[tuple]) -> None:
        """Rows of (to_file, to_rev, from_file, start_rev, end_rev, how, change)."""
        self.db.executemany("INSERT INTO integs VALUES(?,?,?,?,?,?,?)", rows)

    def integs_between(self, source_prefix: str, target_prefix: str) -> list[Row]:
        """Integration records in both directions between two subtrees."""
        s_lo, s_hi = _range(source_prefix)
        t_lo, t_hi = _range(target_prefix)
        return self.db.execute(
            "SELECT * FROM integs WHERE (from_file>=? AND from_file<? AND to_file>=? AND to_file<?)"
            " OR (from_file>=? AND from_file<? AND to_file>=? AND to_file<?)",
            (s_lo, s_hi, t_lo, t_hi, t_lo, t_hi, s_lo, s_hi),
        ).fetchall()

    # -- shelves ---------------------------------------------------------------------------------
    def shelved(self, change: int) -> list[Row]:
        return self.db.execute("SELECT * FROM shelves WHERE change=? ORDER BY file", (change,)).fetchall()

    def shelve_files(self, rows: Iterable[tuple]) -> None:
        """Rows of (change, file, action, rev, type, digest)."""
        self.db.executemany("INSERT OR REPLACE INTO shelves VALUES(?,?,?,?,?,?)", rows)

    def discard_shelved(self, change: int, files: Iterable[str] | None = None) -> None:
        if files is None:
            self.db.execute("DELETE FROM shelves WHERE change=?", (change,))
        else:
            self.db.executemany("DELETE FROM shelves WHERE change=? AND file=?", [(change, f) for f in files])
