"""The orchestrator's lease: which one of several orchestrator processes on one store acts.

Exactly one holds it (the active one); the others are standbys (orchestrator/standby.py) that
try to take it every second or so. The store's own engine enforces it, never a clock:

- **PostgreSQL**: a session-level advisory lock (``pg_try_advisory_lock``) taken on the very
  connection the store writes through. The server releases it the moment that session ends
  (the process died, or its connection was cut and the server noticed), and a process whose
  session has ended can no longer write through it: the lock is its own fence. ``check()``
  also asks the server, once a second, that this session still holds it.
- **SQLite**: the file lives on one host, so an ``flock`` on ``<store>.lease`` beside it: a
  second orchestrator on the same file is a standby until the first exits (the kernel drops the
  lock with the process, however it ends).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from orchestrator.db import Db, PgDb

if TYPE_CHECKING:
    from orchestrator.store import Store

# The advisory lock's key: the ASCII of "p4bus_or". Advisory locks are per database, so
# two p4bus installations in two databases of one server never contend.
LEASE_KEY = int.from_bytes(b"p4bus_or", "big")


class LeaseLost(RuntimeError):
    """The lease this process held is gone: it must stop acting at once (and exit)."""


class Lease(Protocol):
    """Held until the process ends (a clean stop closes the store, which lets it go)."""

    what: str  # for logs: what the lease is, e.g. "flock on /var/lib/p4bus/jobs.db.lease"

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; True if this process holds it now."""
        ...

    def check(self) -> None:
        """Raise LeaseLost unless this process still holds the lease."""
        ...


class FileLease:
    """An exclusive flock on ``path`` (created 0600), held while this process keeps it open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.what = f"flock on {path}"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def check(self) -> None:
        # A held flock cannot be taken away from a living process.
        if self._fd is None:
            raise LeaseLost(f"{self.what} is not held")


class AdvisoryLease:
    """``pg_try_advisory_lock(LEASE_KEY)`` through ``db``, which must be the store's own
    connection (so that a session that lost the lock cannot write either). A connection that
    breaks on the way ends the process (db.StoreLost), as it does for any of the store's steps."""

    def __init__(self, db: Db, key: int = LEASE_KEY) -> None:
        self.db = db
        self.key = key
        self.what = f"advisory lock {key} on {db.location}"
        self._held = False

    def try_acquire(self) -> bool:
        if not self._held:
            # A session-level lock: it outlives the statement's transaction and ends with the session.
            self._held = bool(self.db.execute("SELECT pg_try_advisory_lock(?)", (self.key,)).fetchone()[0])
        return self._held

    def check(self) -> None:
        # pg_locks shows a bigint key as two unsigned 32-bit halves, classid and objid.
        if (
            self._held
            and self.db.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = pg_backend_pid() AND classid::bigint = ? AND objid::bigint = ? AND objsubid = 1)",
                (self.key >> 32, self.key & 0xFFFFFFFF),
            ).fetchone()[0]
        ):
            return
        self._held = False
        raise LeaseLost(f"{self.what} is no longer held by this session")


def for_store(store: Store) -> Lease:
    """The lease that guards ``store``: see the module's docstring."""
    if isinstance(store.db, PgDb):
        return AdvisoryLease(store.db)
    return FileLease(Path(f"{store.path}.lease"))
