"""The store on a real PostgreSQL server: what only PostgreSQL has (a password, a server that can
go away, several orchestrators starting at once). The SQL both engines share is tested on both
in tests/unit/test_orchestrator_store.py."""

from __future__ import annotations

import threading

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from common.config import ConfigError
from orchestrator.db import StoreError, StoreLost, redact
from orchestrator.store import MIGRATIONS, Store
from p4bus.harness.postgres import PgServer
from tests.unit.test_orchestrator_store import _add

pytestmark = pytest.mark.timeout(60)


def _dbname(dsn: str) -> str:
    return str(conninfo_to_dict(dsn)["dbname"])


def _password_file(tmp_path, text: str, mode: int = 0o600):
    path = tmp_path / "pg-password"
    path.write_text(text + "\n")
    path.chmod(mode)
    return str(path)


def test_the_password_comes_from_a_private_file_never_from_the_dsn(pg_server: PgServer, pg_database, tmp_path):
    tcp = pg_server.tcp_dsn(_dbname(pg_database()))
    with pytest.raises(StoreError, match="cannot connect to the store") as err:
        Store(tcp)  # the server asks for a password over TCP
    assert "store_password_file" in str(err.value)
    with pytest.raises(ConfigError, match="chmod 600"):
        Store(tcp, password_file=_password_file(tmp_path, pg_server.password, 0o644))
    with pytest.raises(StoreError, match="password authentication failed"):
        Store(tcp, password_file=_password_file(tmp_path, "not-it"))
    store = Store(tcp, password_file=_password_file(tmp_path, pg_server.password))
    assert store.schema_version() == len(MIGRATIONS)
    assert str(store.path) == tcp and pg_server.password not in repr(store.pg)
    # Another session with the same parameters (what a standby's lease would use).
    assert store.pg is not None
    with store.pg.connect() as conn:
        assert conn.execute("SELECT version FROM p4bus_schema").fetchone() == (len(MIGRATIONS),)
    store.close()
    with_password = tcp.replace("p4bus@", f"p4bus:{pg_server.password}@")
    with pytest.raises(ConfigError, match="holds a password") as refused:
        Store(with_password)
    assert pg_server.password not in str(refused.value)


def test_a_password_file_is_refused_for_a_sqlite_store(tmp_path):
    with pytest.raises(ConfigError, match="only for a postgresql:// store"):
        Store(tmp_path / "jobs.db", password_file=_password_file(tmp_path, "x"))


def test_redact_hides_a_password_in_either_form():
    assert redact("postgresql://u:s3cret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql://u@h/db?password=s3cret&sslmode=require") == (
        "postgresql://u@h/db?password=***&sslmode=require"
    )
    assert redact("postgresql:///db?host=/run/pg") == "postgresql:///db?host=/run/pg"


def test_a_server_that_is_not_there_is_one_clear_error(pg_server: PgServer):
    down = f"postgresql://p4bus@127.0.0.1:{pg_server.port + 1}/nowhere?connect_timeout=5"
    with pytest.raises(StoreError, match=r"^p4bus orchestrator: cannot connect to the store postgresql://") as err:
        Store(down)
    assert err.value.code != 0 and "\n" not in str(err.value)


def test_orchestrators_starting_at_once_migrate_once(pg_database):
    dsn = pg_database()
    start = threading.Barrier(4)
    stores: list[Store] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        start.wait()
        try:
            stores.append(Store(dsn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and len(stores) == 4
    assert {s.schema_version() for s in stores} == {len(MIGRATIONS)}
    for s in stores:
        s.close()


def test_a_lost_connection_ends_the_step_uncommitted_and_cannot_be_caught_as_an_error(pg_server, pg_database):
    dsn = pg_database()
    store = Store(dsn)
    pid = store.db.execute("SELECT pg_backend_pid()").fetchone()[0]
    with pytest.raises(StoreLost, match="lost the connection to the store") as lost:
        try:
            with store.tx():
                _add(store, 1)
                with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                _add(store, 2)
        except Exception:  # what the orchestrator's request handler does with a bug
            pytest.fail("a lost store must not be taken for an ordinary error")
    assert lost.value.code != 0
    again = Store(dsn)
    assert again.job("J1") is None and again.job("J2") is None
    again.close()


def test_a_bookkeeping_step_does_not_wait_for_the_disk(pg_database):
    store = Store(pg_database())
    with store.tx(durable=False):
        assert store.db.execute("SHOW synchronous_commit").fetchone() == ("off",)
    assert store.db.execute("SHOW synchronous_commit").fetchone() == ("on",)
    with store.tx():
        assert store.db.execute("SHOW synchronous_commit").fetchone() == ("on",)
    store.close()
