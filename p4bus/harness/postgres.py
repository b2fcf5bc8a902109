"""A throwaway PostgreSQL server from the distribution's packages, for tests and benches.

``PgServer`` runs ``initdb`` and ``postgres`` (``/usr/lib/postgresql/*/bin``, the newest
version, or whatever is on PATH) in a temporary directory that it removes when stopped. The
server refuses to run as root, so under root it runs as the ``postgres`` system user (or
``nobody``) through ``setpriv``, which owns the directory. It listens on a unix socket in that
directory and on a loopback port, never another address. The superuser ``p4bus`` needs no
password on the socket (trust: only root and the server's own user can reach it) and its
password (``PgServer.password``) over TCP (scram), so both ways a store is given its password
can be tested. Durability settings are off: a test kills the orchestrator, never the server.

    with PgServer() as pg:
        dsn = pg.create_database("t1")      # postgresql://p4bus@/t1?host=/tmp/...&port=...
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from common.zmqutil import free_port

SUPERUSER = "p4bus"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
# Settings for a test server: small, quick, and no fsync (nothing here outlives the test run).
_SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "60",
    "logging_collector": "off",
    "log_min_messages": "warning",
}


class PgUnavailable(RuntimeError):
    """No PostgreSQL server binaries are installed here (tests skip on this alone)."""


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``: the newest distribution version, else PATH."""
    versions = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if versions:
        newest = max(versions, key=lambda p: int(re.sub(r"\D", "", Path(p).parent.parent.name) or 0))
        return Path(newest).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _server_user() -> pwd.struct_passwd | None:
    """Who the server runs as: None for this process's own user, unless that is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PgUnavailable("running as root and neither a 'postgres' nor a 'nobody' user exists to run the server")


class PgServer:
    """One PostgreSQL server in its own temporary directory; ``stop()`` (or the ``with``) ends it."""

    def __init__(self, bindir: Path | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise PgUnavailable("PostgreSQL is not installed (no initdb; apt-get install postgresql, as .ci/run does)")
        self.bindir = found
        self.user = _server_user()
        # Not under pytest's tmp_path: that is root's alone (0700), the server's user could not enter it.
        self.dir = Path(tempfile.mkdtemp(prefix="p4bus-pg-"))
        self.data = self.dir / "data"
        self.socket_dir = self.dir
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "server.log"

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self._initdb()
            self._run()
        except BaseException:
            self.stop()
            raise

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if self.user is None:
            return argv
        # The server dies with the process that started it (--pdeathsig): a test run that is
        # killed leaves no server behind. SIGQUIT is PostgreSQL's immediate shutdown.
        return [
            "setpriv",
            f"--reuid={self.user.pw_uid}",
            f"--regid={self.user.pw_gid}",
            "--clear-groups",
            "--pdeathsig=SIGQUIT",
            *argv,
        ]

    def _initdb(self) -> None:
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
            os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        try:
            subprocess.run(
                self._as_server_user(
                    [
                        str(self.bindir / "initdb"),
                        "-D",
                        str(self.data),
                        "-U",
                        SUPERUSER,
                        f"--pwfile={pwfile}",
                        "--auth-local=trust",
                        "--auth-host=scram-sha-256",
                        "--encoding=UTF8",
                        "--locale=C",
                        "--no-sync",
                    ]
                ),
                check=True,
                capture_output=True,
                timeout=120,
                cwd=self.dir,
            )
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"initdb failed: {e.stderr.decode(errors='replace').strip()}") from e
        finally:
            pwfile.unlink()

    def _run(self) -> None:
        settings = [f"-c{k}={v}" for k, v in _SERVER_SETTINGS.items()]
        # A port taken between choosing and binding: the server exits at once; choose again.
        for _ in range(5):
            self.port = free_port()
            log = open(self.log_path, "ab")
            if self.user is not None:
                os.chown(self.log_path, self.user.pw_uid, self.user.pw_gid)
            self.proc = subprocess.Popen(
                self._as_server_user(
                    [
                        str(self.bindir / "postgres"),
                        "-D",
                        str(self.data),
                        "-p",
                        str(self.port),
                        "-k",
                        str(self.socket_dir),
                        *settings,
                    ]
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
            )
            log.close()
            if self._wait_ready():
                return
        raise RuntimeError(f"PostgreSQL did not start; see {self.log_path}: {self._log_tail()}")

    def _wait_ready(self) -> bool:
        """True once the server accepts connections; False if it exited (e.g. its port was taken)."""
        import psycopg

        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise RuntimeError(f"PostgreSQL did not accept connections in {START_TIMEOUT_S:g}s: {self._log_tail()}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT: sessions are ended, nothing waits for clients), then remove everything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ addresses

    def dsn(self, dbname: str) -> str:
        """The database over the unix socket (no password needed)."""
        return f"postgresql://{SUPERUSER}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def tcp_dsn(self, dbname: str) -> str:
        """The database over loopback TCP: the password is required (and not in this DSN)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, dbname: str) -> str:
        """A new empty database; its (socket) DSN."""
        import psycopg
        from psycopg import sql

        if not re.fullmatch(r"[a-z_][a-z0-9_]*", dbname):
            raise ValueError(f"database name {dbname!r}: use lower-case letters, digits and _")
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} STRATEGY file_copy").format(sql.Identifier(dbname)))
        return self.dsn(dbname)

    def drop_database(self, dbname: str) -> None:
        """Remove a database, ending any session still on it (a store a test did not close)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
