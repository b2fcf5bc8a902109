"""The dashboard's pure parts: tokens, sessions and the trusted header, the output model, the ring."""

from __future__ import annotations

import base64
import json
import stat

import pytest
from click.testing import CliRunner

from common import protocol as P
from common.config import WebConf
from p4bus.cli import cli
from p4bus.commands import register
from p4bus.web import views
from p4bus.web.feed import OutputModel, Ring, sse
from p4bus.web.people import People, csrf_ok
from p4bus.web.tokens import TokenError, TokenFile


def test_tokens_are_stored_hashed_in_a_private_file(tmp_path):
    tf = TokenFile(tmp_path / "state" / "tokens.json")
    token = tf.add("alice", "operator")
    raw = tf.path.read_text()
    assert token not in raw and "alice" in raw
    assert stat.S_IMODE(tf.path.stat().st_mode) == 0o600
    assert tf.person(token).role == "operator"
    assert tf.person(token + "x") is None
    tf.revoke("alice")
    assert tf.person(token) is None
    with pytest.raises(TokenError, match="no token named"):
        tf.revoke("alice")
    with pytest.raises(TokenError, match="unknown role"):
        tf.add("bob", "admin")
    with pytest.raises(TokenError, match="bad name"):
        tf.add("<b>", "viewer")


def test_a_tokens_file_others_may_read_is_refused(tmp_path):
    tf = TokenFile(tmp_path / "tokens.json")
    tf.add("alice", "viewer")
    tf.path.chmod(0o644)
    with pytest.raises(TokenError, match="chmod 600"):
        TokenFile(tf.path).entries()


def test_a_session_ends_when_its_token_is_revoked(tmp_path):
    tf = TokenFile(tmp_path / "tokens.json")
    people = People(WebConf(), tf)
    sid, s = people.login(tf.add("alice", "operator"))
    assert people.session(sid, "127.0.0.1", {}) is not None
    assert csrf_ok(s, s.csrf) and not csrf_ok(s, "") and not csrf_ok(s, s.csrf[:-1])
    tf.revoke("alice")
    assert people.session(sid, "127.0.0.1", {}) is None
    assert people.login("not-a-token") is None


def test_the_trusted_header_counts_only_from_a_trusted_proxy_and_for_known_people(tmp_path):
    conf = WebConf(trusted_header="X-Remote-User", trusted_proxies=["10.1.2.0/24"], users={"bob": "viewer"})
    people = People(conf, TokenFile(tmp_path / "tokens.json"))
    got = people.session(None, "10.1.2.7", {"x-remote-user": "bob"})
    assert got is not None and got[1].person.name == "bob" and got[1].person.role == "viewer"
    assert people.session(got[0], "10.1.2.7", {"x-remote-user": "bob"})[0] == got[0]  # the same session
    assert people.session(None, "10.9.9.9", {"x-remote-user": "bob"}) is None  # not from the proxy
    assert people.session(None, "10.1.2.7", {"x-remote-user": "mallory"}) is None  # not in users
    # Without the header the proxy's session is not a cookie session either.
    assert people.session(got[0], "10.1.2.7", {}) is None
    with pytest.raises(TokenError, match=r"web\.users\.eve"):
        People(WebConf(users={"eve": "root"}), TokenFile(tmp_path / "t2.json"))


def _run(cmd_id: str = "c1", agent: str = "agent-1") -> P.StageRun:
    return P.StageRun(stage="SYNC", step=0, attempt=1, cmd_id=cmd_id, state="RUNNING", agent=agent, argv=["p4", "sync"])


def _chunk(offset: int, data: bytes, cmd_id: str = "c1") -> P.LogChunk:
    return P.LogChunk(
        topic=f"log.J.{cmd_id}", source="agent-1", epoch="e", seq=1, ts=0.0, job_id="J", cmd_id=cmd_id,
        stream=P.STDOUT, offset=offset, data=data,
    )  # fmt: skip


def _bytes(ops) -> bytes:
    return b"".join(base64.b64decode(op["d"]) for op in ops if op["k"] == "out")


def test_the_output_model_fills_a_gap_from_the_spool_and_drops_repeats():
    spool = b"0123456789abcdef"
    fetched = []

    def fetch(cmd, agent, stream, offset, size):
        fetched.append((offset, size))
        return spool[offset : offset + size]

    m = OutputModel("J", fetch, lambda cmd: _run())
    ops = m.apply(P.Delivered(_chunk(0, b"0123"), "agent-1"), lambda k: False)
    assert ops[0]["k"] == "section" and _bytes(ops) == b"0123"
    ops = m.apply(P.Delivered(_chunk(8, b"89ab"), "agent-1"), lambda k: False)  # 4..8 was lost
    assert _bytes(ops) == b"456789ab" and fetched == [(4, 4)]
    assert m.apply(P.Delivered(_chunk(6, b"6789ab"), "agent-1"), lambda k: False) == []
    done = P.CmdDone(
        topic="cmd.J.c1", source="agent-1", epoch="e", seq=2, ts=0.0, job_id="J", cmd_id="c1",
        status=P.CmdStatus(cmd_id="c1", state="done", exit_code=0, stdout_bytes=16),
    )  # fmt: skip
    ops = m.apply(P.Delivered(done, "agent-1"), lambda k: False)
    assert _bytes(ops) == b"cdef" and ops[-1]["k"] == "done"
    snap = m.snapshot()
    assert snap[0]["k"] == "reset" and _bytes(snap) == spool


def test_the_output_model_ignores_events_from_another_key():
    m = OutputModel("J", lambda *a: b"", lambda cmd: _run(agent="agent-1"))
    said = m.apply(P.Delivered(_chunk(0, b"forged"), "agent-2"), lambda k: False)
    assert [op["k"] for op in said] == ["note"] and "key agent-2: it runs on agent-1" in said[0]["text"]
    assert m.apply(P.Delivered(_chunk(6, b"again"), "agent-2"), lambda k: False) == []  # said once
    job = P.JobChanged(topic="job.J", source="o", epoch="e", seq=1, ts=0.0, job_id="J", state="DONE")
    assert m.apply(P.Delivered(job, "agent-2"), lambda k: k == "orchestrator") == []
    assert m.apply(P.Delivered(job, "orchestrator"), lambda k: k == "orchestrator")[0]["state"] == "DONE"


def test_the_ring_resumes_after_any_id_it_holds_and_says_when_it_cannot(monkeypatch):
    monkeypatch.setattr("p4bus.web.feed.RING_MESSAGES", 8)
    ring = Ring()
    for i in range(1, 11):
        ring.add((i * 10,), sse((i * 10,), [{"k": "note", "i": i}]))
    assert ring.floor == (20,)  # two dropped
    assert ring.after((20,)) == [sse((i * 10,), [{"k": "note", "i": i}]) for i in range(3, 11)]
    assert ring.after((55,)) == [sse((i * 10,), [{"k": "note", "i": i}]) for i in range(6, 11)]
    assert ring.after((100,)) == []
    assert ring.after((19,)) is None
    assert json.loads(sse((7,), [{"k": "x"}]).decode().split("data: ")[1]) == [{"k": "x"}]
    assert sse((7,), []).startswith(b"id: 7\n")  # one broker: the journal id, as it always was


def test_with_two_brokers_the_ring_resumes_after_a_position_of_both(monkeypatch):
    monkeypatch.setattr("p4bus.web.feed.RING_MESSAGES", 8)
    ring = Ring(2)
    # Both brokers' copies at first, then the first broker is gone and only the second moves.
    positions = [(i * 10, i * 10 + 1) for i in range(1, 6)] + [(50, 51 + i * 10) for i in range(1, 6)]
    for n, pos in enumerate(positions):
        ring.add(pos, sse(pos, [{"k": "note", "n": n}]))
    assert ring.floor == (20, 21)
    assert ring.after((40, 41)) == [sse(p, [{"k": "note", "n": n}]) for n, p in enumerate(positions)][4:]
    assert ring.after((50, 71)) == [sse(p, [{"k": "note", "n": n}]) for n, p in enumerate(positions)][7:]
    assert ring.after((20, 0)) is None  # the second broker's messages before it are gone
    assert sse((50, 71), []).startswith(b"id: 50.71\n")


@pytest.mark.parametrize(
    ("raw", "brokers", "pos"),
    [
        ("17", 1, (17,)),
        ("17", 2, None),  # an old browser's journal id, now that there are two brokers: a snapshot
        ("17.4", 2, (17, 4)),
        ("17.4", 1, None),
        ("17.x", 2, None),
        ("", 1, None),
        ("-1", 1, None),
        ("9" * 20, 1, None),
    ],
)
def test_an_sse_id_names_a_position_only_for_the_brokers_configured_now(raw, brokers, pos):
    from p4bus.web import journal

    assert journal.decode(raw, brokers) == pos
    if pos is not None:
        assert journal.encode(pos) == raw


def test_token_commands(tmp_path):
    register(cli)
    runner = CliRunner()
    env = {"P4BUS_STATE_DIR": str(tmp_path)}
    added = runner.invoke(cli, ["web", "token", "add", "alice", "--role", "viewer"], env=env)
    assert added.exit_code == 0 and len(added.stdout.strip()) > 30
    listed = runner.invoke(cli, ["web", "token", "list"], env=env)
    assert "alice" in listed.stdout and "viewer" in listed.stdout and added.stdout.strip() not in listed.stdout
    bad = runner.invoke(cli, ["web", "token", "revoke", "bob"], env=env)
    assert bad.exit_code == 2 and "no token named 'bob'" in bad.stderr
    assert runner.invoke(cli, ["web", "token", "revoke", "alice"], env=env).exit_code == 0


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path):
    import socket
    import subprocess
    import sys

    from tests.conftest import REPO

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "p4bus", "web", "--bind", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={"PATH": "/usr/bin:/bin", "P4BUS_INSECURE": "1", "P4BUS_STATE_DIR": str(tmp_path)},
            timeout=60,
        )
    assert done.returncode == 1
    assert f"p4bus: the dashboard cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr


class _Journal:
    """The broker's replay answers over a fixed list of (id, topic, body, publisher)."""

    def __init__(self, rows):
        self.rows = rows

    def page(self, prefix, after=0, since_ts=0.0, limit=1000):
        head = self.rows[-1][0]
        mine = [r for r in self.rows if r[1].startswith(prefix) and r[0] > after][:2]  # small pages
        more = len([r for r in self.rows if r[1].startswith(prefix) and r[0] > after]) > 2
        return P.ReplayPage(
            req_id="r",
            events=[(i, t, b) for i, t, b, _ in mine],
            publishers=[p for *_, p in mine],
            last_id=mine[-1][0] if mine else after,
            head_id=head,
            more=more,
        )


def test_a_failed_spool_read_loses_and_repeats_nothing(monkeypatch):
    import asyncio

    from broker.journals import BrokerJournal, Journals
    from common.config import Config
    from common.rpc import RequestError
    from p4bus.web.feed import JobFeed

    spool = b"0123456789ab"
    job = P.JobChanged(topic="job.J", source="o", epoch="e", seq=1, ts=0.0, job_id="J", state="DONE")
    rows = [
        (1, "log.J.c1", P.encode(_chunk(0, b"0123")), "agent-1"),
        (2, "log.J.c1", P.encode(_chunk(8, b"89ab")), "agent-1"),  # 4..8 must come from the spool
        (3, "job.J", P.encode(job), ""),
    ]
    fails = [RequestError("timeout", "the master did not answer")]

    def fetch(cmd, agent, stream, offset, size):
        if fails:
            raise fails.pop()
        return spool[offset : offset + size]

    loop = asyncio.new_event_loop()
    try:
        feed = JobFeed(Config(), None, "J", loop)
        feed.model = OutputModel("J", fetch, lambda cmd: _run())
        prefixes = ["log.J.", "cmd.J.", "job.J"]
        cursor = Journals([BrokerJournal(_Journal(rows), None, prefixes)])  # type: ignore[arg-type]
        with pytest.raises(RequestError):
            feed._read(cursor)
        assert feed.ring.ids == [(1,)]  # what was handled is out; the rest is read again
        feed._read(cursor)
        assert feed.ring.ids == [(1,), (3,)] and feed.pos == (3,)  # events 2 and 3: one message
        ops = [op for m in feed.ring.msgs for op in json.loads(m.decode().split("data: ", 1)[1])]
        assert _bytes(ops) == spool
        assert [op["o"] for op in ops if op["k"] == "out"] == [0, 4, 8]
        assert [op["k"] for op in ops].count("section") == 1
        feed._read(cursor)  # nothing new
        assert feed.ring.ids == [(1,), (3,)]
    finally:
        loop.close()


def _job(state: str, change: int | None = None) -> P.JobView:
    return P.JobView(
        job_id="INT-20261201-0001",
        state=state,
        stage="P4PUSH",
        pipeline="p4-integrate",
        workspace="ws",
        created_at=0.0,
        updated_at=0.0,
        change=change,
    )


@pytest.mark.parametrize(
    ("state", "change", "names"),
    [
        ("WAITING_RESOLVE", 5, ["resume", "cancel", "revert"]),
        ("WAITING_APPROVAL", 5, ["approve", "cancel", "revert"]),
        ("UNKNOWN", None, ["cancel"]),
        ("FAILED", 5, ["retry", "cleanup"]),
        ("FAILED", None, ["retry"]),
        ("DONE", None, []),
    ],
)
def test_the_actions_a_page_offers_follow_the_jobs_state(state, change, names):
    assert [a.name for a in views.actions(_job(state, change))] == names
