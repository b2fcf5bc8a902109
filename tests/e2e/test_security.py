"""Secrets stay secret, and the orchestrator's API survives garbage."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess

import pytest
import zmq

from common import protocol as P
from common import roles, zmqutil

pytestmark = pytest.mark.timeout(120)

PASSWORD = "s3cret-Pa55-7f1e"


def test_login_through_stdin_and_the_password_is_nowhere(jobs):
    pw_file = jobs.tmp / "p4passwd"
    pw_file.write_text(PASSWORD + "\n")
    pw_file.chmod(0o600)
    jobs.workspace(
        "ws1", "clean", password=PASSWORD, password_file=str(pw_file), tickets_file=str(jobs.tmp / "ws1" / "tickets")
    )
    jobs.start()
    view = jobs.wait_state(jobs.submit("ws1"))
    assert view.state == "DONE", view.reason
    assert view.timeline[0].stage == "LOGIN" and view.timeline[0].argv == ["p4", "login"]
    # Not in argv (the timeline and every spool spec), the store, the journal, the logs, the spool.
    needle = PASSWORD.encode()
    server = jobs.tmp / "ws1" / "server"  # the Perforce server's own user table
    for path in jobs.tmp.rglob("*"):
        if path.is_file() and path != pw_file and server not in path.parents:
            assert needle not in path.read_bytes(), f"password found in {path}"
    # And not hidden in a SQLite page either: dump the databases as text.
    for db in [jobs.tmp / "state" / "jobs.db", jobs.tmp / "state" / "journal.db"]:
        con = sqlite3.connect(db)
        assert PASSWORD not in "\n".join(con.iterdump())
        con.close()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert PASSWORD not in ps


def test_without_the_password_the_job_fails_clearly(jobs):
    jobs.workspace("ws1", "clean", password=PASSWORD)  # the server wants one; none configured
    jobs.start()
    view = jobs.wait_state(jobs.submit("ws1"))
    assert view.state == "FAILED"
    assert "P4PASSWD" in view.key_line or "password" in view.reason.lower()


def test_orchestrator_api_answers_garbage_and_keeps_serving(jobs):
    jobs.workspace("ws1", "clean")
    jobs.start()
    s = zmqutil.dealer(
        zmq.Context.instance(), jobs.stack.endpoint("orchestrator_api"), jobs.stack.security(), roles.ORCHESTRATOR
    )
    rng = random.Random(5)
    for _ in range(300):
        s.send_multipart([os.urandom(rng.randrange(0, 80)) for _ in range(rng.choice([1, 1, 2]))])
    s.send(P.encode(P.GetJob(req_id="q1", job_id="INT-19700101-0001")))
    got = None
    while s.poll(10_000):
        reply = P.decode(s.recv(), P.Reply)
        assert isinstance(reply, P.ErrorReply)
        if reply.req_id == "q1":
            got = reply
            break
    assert got is not None and got.code == "unknown_job" and "no job" in got.message
    s.close(linger=0)
    view = jobs.wait_state(jobs.submit("ws1"))
    assert view.state == "DONE"
