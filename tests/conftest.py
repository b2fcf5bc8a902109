"""Shared fixtures: a fresh config on free loopback ports, and real service processes."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from common import zmqutil
from common.zmqutil import free_port_base
from p4bus.harness import stack as harness
from p4bus.harness.stack import wait_for

if TYPE_CHECKING:
    from bench.sshd import SshTarget
    from p4bus.harness.postgres import PgServer

REPO = Path(__file__).resolve().parent.parent

# Each xdist worker starts its stacks on ports of its own band: two workers choosing ports at
# the same moment met on one (a service's "Address already in use", twice in one day's CI).
if "PYTEST_XDIST_WORKER" in os.environ:
    zmqutil.port_band(
        int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw")), int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    )

__all__ = ["REPO", "Stack", "wait_for"]


class Stack(harness.Stack):
    """The harness's stack with test settings; everything lives under tmp_path.

    Services run from the repository root, so `python -m p4bus` is this checkout's.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.port_base = free_port_base(7)  # the bus's six and the dashboard's
        tree = {
            "state_dir": str(tmp_path / "state"),
            "port_base": self.port_base,
            "master": {"heartbeat_s": 0.2},
            "agent": {
                "heartbeat_s": 0.2,
                "allowed_executables": ["*"],
                "workspace_roots": [str(tmp_path)],
                "kill_grace_s": 1.0,
            },
        }
        super().__init__(tree, tmp_path, log_dir=tmp_path / "logs", cwd=REPO)

    def stop_all(self) -> None:
        self.stop(grace=0)


@pytest.fixture(scope="session")
def sshd() -> Iterator[SshTarget]:
    """A throwaway sshd on a loopback port (bench/sshd.py), shared by the whole session."""
    from bench.sshd import Sshd, find_sshd

    if find_sshd() is None:
        pytest.skip("sshd is not installed (apt-get install openssh-server; .ci/run does)")
    with Sshd() as target:
        yield target


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    yield s
    s.stop_all()


# One PostgreSQL server per process (each xdist worker), started once collection shows a test
# wants it: outside any test's timeout, since initdb on a loaded machine can take seconds.
_PG_FIXTURES = {"pg_server", "store_at"}


class _Pg:
    server: PgServer | None = None
    skip_reason = "no PostgreSQL server was started for this session"


def pytest_collection_finish(session: pytest.Session) -> None:
    if not any(_PG_FIXTURES & set(getattr(item, "fixturenames", ())) for item in session.items):
        return
    from p4bus.harness.postgres import PgServer, PgUnavailable

    try:
        server = PgServer()
    except PgUnavailable as e:
        _Pg.skip_reason = str(e)
        return
    server.start()
    _Pg.server = server


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _Pg.server is not None:
        _Pg.server.stop()
        _Pg.server = None


@pytest.fixture(scope="session")
def pg_server() -> PgServer:
    """A real PostgreSQL server (p4bus/harness/postgres.py) for the session, one per xdist worker."""
    if _Pg.server is None:
        pytest.skip(_Pg.skip_reason)
    return _Pg.server


_pg_databases = itertools.count(1)


@pytest.fixture
def pg_database(pg_server: PgServer) -> Iterator[Callable[..., str]]:
    """Make a fresh database on the session's server (empty, or a copy of ``template``); returns
    its DSN (unix socket, no password). The test's databases are dropped after it, with any
    session still open on them."""
    made: list[str] = []

    def make(template: str = "template1") -> str:
        made.append(f"t{next(_pg_databases)}")
        return pg_server.create_database(made[-1], template)

    yield make
    for name in made:
        pg_server.drop_database(name)


@pytest.fixture(scope="session")
def pg_store_template(pg_server: PgServer) -> str:
    """A database holding the store's schema, copied for each test that wants a store: a copy is
    cheaper than migrating each time (migrating from nothing is tested on databases of its own)."""
    from orchestrator.store import Store

    Store(pg_server.create_database("store_template")).close()
    return "store_template"


@pytest.fixture(params=["sqlite", "postgres"])
def store_at(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """Where a test's orchestrator store lives, on each engine: ``store_at("jobs")`` is a SQLite
    file under tmp_path, or a fresh PostgreSQL database with the store's schema (the same name
    in one test, the same one)."""
    if request.param == "sqlite":
        return lambda name="jobs": str(tmp_path / f"{name}.db")
    make = request.getfixturevalue("pg_database")
    template = request.getfixturevalue("pg_store_template")
    made: dict[str, str] = {}

    def at(name: str = "jobs") -> str:
        if name not in made:
            made[name] = make(template)
        return made[name]

    return at
