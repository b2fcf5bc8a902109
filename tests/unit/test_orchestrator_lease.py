"""The orchestrator's lease on a real PostgreSQL server and a real flock (orchestrator/lease.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from orchestrator.db import StoreLost
from orchestrator.lease import AdvisoryLease, FileLease, LeaseLost, for_store
from orchestrator.store import Store
from tests.conftest import REPO, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def two_stores(pg_database: Callable[[], str]) -> Iterator[tuple[Store, Store, str]]:
    """Two orchestrators' stores (two sessions) on one database, and its DSN."""
    dsn = pg_database()
    a, b = Store(dsn), Store(dsn)
    yield a, b, dsn
    for s in (a, b):
        try:
            s.close()
        except psycopg.Error:
            pass


def test_one_session_holds_the_lease_the_other_cannot_take_it(two_stores) -> None:
    a, b, _ = two_stores
    first, second = for_store(a), for_store(b)
    assert isinstance(first, AdvisoryLease)
    assert first.try_acquire() and first.try_acquire()  # held; asking again changes nothing
    assert not second.try_acquire()
    first.check()
    with pytest.raises(LeaseLost):
        second.check()


def test_a_killed_session_frees_the_lease_and_its_store_can_no_longer_write(two_stores) -> None:
    a, b, dsn = two_stores
    first, second = for_store(a), for_store(b)
    assert first.try_acquire() and not second.try_acquire()
    a.next_counter("before")
    pid = a.db.conn.info.backend_pid  # type: ignore[attr-defined]
    with psycopg.connect(dsn, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
    wait_for(second.try_acquire, 10, "the other session to take the lease", interval=0.05)
    # The fenced holder: neither its fence check nor a write gets through, and it says why.
    with pytest.raises(StoreLost):
        first.check()
    with pytest.raises(StoreLost):
        a.next_counter("after")
    assert b.db.execute("SELECT name FROM counters ORDER BY name").fetchall() == [("before",)]
    second.check()


def test_a_lock_let_go_of_in_the_session_is_noticed_by_the_check(two_stores) -> None:
    a, _, _ = two_stores
    lease = for_store(a)
    assert lease.try_acquire()
    a.db.execute("SELECT pg_advisory_unlock_all()")
    with pytest.raises(LeaseLost, match="no longer held"):
        lease.check()


def test_a_flock_is_held_by_one_process_and_freed_when_it_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db.lease"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib; from orchestrator.lease import FileLease; "
            f"assert FileLease(pathlib.Path({str(path)!r})).try_acquire(); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        lease = FileLease(path)
        assert not lease.try_acquire()
        with pytest.raises(LeaseLost):
            lease.check()
        holder.kill()
        holder.wait(10)
        assert lease.try_acquire()
        lease.check()
        assert (path.stat().st_mode & 0o777) == 0o600
    finally:
        holder.kill()
        holder.wait(10)
