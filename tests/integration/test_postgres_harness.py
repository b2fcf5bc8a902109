"""The throwaway PostgreSQL server the store tests run on (p4bus/harness/postgres.py)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from p4bus.harness.postgres import PgServer, PgUnavailable


def test_a_fresh_database_per_call_and_a_password_over_tcp(pg_server: PgServer, pg_database) -> None:
    one, two = pg_database(), pg_database()
    assert one != two
    with psycopg.connect(one) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    with psycopg.connect(two) as conn:
        assert conn.execute("SELECT to_regclass('t')").fetchone() == (None,)
        # Only loopback: the server's own settings say so.
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
    tcp = pg_server.tcp_dsn(str(conninfo_to_dict(one)["dbname"]))
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(tcp, connect_timeout=5)
    with psycopg.connect(tcp, password=pg_server.password, connect_timeout=5) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_stop_ends_the_server_and_removes_its_directory() -> None:
    try:
        pg = PgServer()
    except PgUnavailable as e:
        pytest.skip(str(e))
    pg.start()
    assert pg.proc is not None
    proc, where = pg.proc, pg.dir
    pg.stop()
    assert proc.returncode is not None
    assert not where.exists()
