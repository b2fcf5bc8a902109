"""A DONE whose capture was cut waits for its whole output, read through the orchestrator's
channel without blocking its loop, and is applied exactly once (issue 13, item 4).

A real orchestrator in-process (its own store and sockets), the test playing its master on a
real ROUTER: the first stage's `p4 changes` output is cut before the change number, so only
the whole output read from the spool lets the job go on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from common import protocol as P
from common import topics
from common.sequence import Stamper
from orchestrator.service import Orchestrator
from orchestrator.store import CmdState, Store
from tests.integration.test_event_trust import Orch

pytestmark = pytest.mark.timeout(30)

WHOLE = b"... change 42\n... time 1700000000\n... user bob\n... client ws\n... status submitted\n"
CUT = WHOLE[:8]  # "... chan": the head the capture kept


class Master:
    """The orchestrator's master, played by the test: a ROUTER where the orchestrator connects."""

    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.bind(orch.cfg.client_masters()[0])

    def request(self) -> tuple[bytes, P.Base]:
        assert self.sock.poll(10_000), "the orchestrator sent nothing"
        peer, frame = self.sock.recv_multipart()
        return peer, P.decode(frame, P.ClientRequest)

    def answer(self, peer: bytes, reply: P.Base) -> None:
        """Reply, and let the orchestrator's loop take the reply in (as run() does)."""
        self.sock.send_multipart([peer, P.encode(reply)])
        (sock,) = self.orch.channel.socks
        assert sock.poll(10_000)
        self.orch.channel.drain(sock)

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Orch, Master]]:
    orch = Orch(tmp_path)
    master = Master(orch.o)
    orch.reply("agent-1")  # GET_LATEST_CL runs on agent-1
    yield orch, master
    master.close()
    orch.close()


def _done(orch: Orch, stamper: Stamper) -> tuple[P.CmdStatus, tuple[str, str, str, int]]:
    """agent-1's DONE event for the command, its capture cut; returns its status and stamp."""
    status = P.CmdStatus(
        cmd_id=orch.cmd_id,
        job_id=orch.job_id,
        agent="agent-1",
        state="done",
        exit_code=0,
        stdout_bytes=len(WHOLE),
        stdout=CUT,
        truncated=True,
    )
    st = stamper.stamp(f"cmd.{orch.job_id}.{orch.cmd_id}")
    orch.feed(P.CmdDone(**st, job_id=orch.job_id, cmd_id=orch.cmd_id, status=status), "agent-1")
    return status, (st["source"], st["epoch"], topics.kind(st["topic"]), st["seq"])


def test_a_cut_capture_is_read_whole_and_applied_once(rig: tuple[Orch, Master]) -> None:
    orch, master = rig
    status, stamp = _done(orch, orch.agents["agent-1"])
    peer, fetch = master.request()
    assert isinstance(fetch, P.Fetch) and (fetch.stream, fetch.offset, fetch.agent) == (P.STDOUT, 0, "agent-1")
    assert orch.state() == CmdState.RUNNING  # waits for its output; the loop goes on
    # Meanwhile a reconciliation hears the same result from the spool: nothing is applied twice.
    orch.o.on_statuses("agent-1", P.QueryReply(req_id="q", statuses=[status]))
    assert orch.state() == CmdState.RUNNING
    # The spool answers in two chunks (a reply holds at most limits.MAX_FETCH_BYTES).
    half = len(WHOLE) // 2
    master.answer(
        peer,
        P.FetchReply(
            req_id=fetch.req_id,
            cmd_id=orch.cmd_id,
            stream=P.STDOUT,
            offset=0,
            data=WHOLE[:half],
            total=len(WHOLE),
            complete=False,
        ),
    )
    peer, rest = master.request()
    assert isinstance(rest, P.Fetch) and (rest.offset, rest.size) == (half, len(WHOLE) - half)
    assert orch.state() == CmdState.RUNNING
    master.answer(
        peer,
        P.FetchReply(
            req_id=rest.req_id,
            cmd_id=orch.cmd_id,
            stream=P.STDOUT,
            offset=half,
            data=WHOLE[half:],
            total=len(WHOLE),
            complete=True,
        ),
    )
    assert orch.state() == CmdState.DONE and not orch.o.reading
    view = orch.o.engine.view(orch.job_id)
    assert view.state == "RUNNING" and view.stage == "SYNC", view.reason  # the change number was read
    assert [r.key_line for r in view.timeline if r.stage == "GET_LATEST_CL"] == ["Change 42 by bob@ws"]
    # The DONE event was recorded with the result: a replay of it is not handled again.
    assert not orch.o.store.record_event(*stamp, now=0.0)


def test_a_failed_read_applies_the_cut_capture(rig: tuple[Orch, Master]) -> None:
    orch, master = rig
    _done(orch, orch.agents["agent-1"])
    peer, fetch = master.request()
    master.answer(peer, P.ErrorReply(req_id=fetch.req_id, code="unknown_cmd", message="gone from the spool"))
    assert orch.state() == CmdState.DONE and not orch.o.reading
    view = orch.o.engine.view(orch.job_id)
    # As before whole output: the interpreter saw the head the event carried.
    assert view.state == "FAILED" and "no submitted changes" in view.reason


def test_a_crash_during_the_read_leaves_the_command_to_reconciliation(rig: tuple[Orch, Master]) -> None:
    orch, master = rig
    _, stamp = _done(orch, orch.agents["agent-1"])
    master.request()  # the read is out, never answered: the orchestrator dies here
    store = Store(str(orch.o.store.path))  # what a restarted orchestrator finds
    try:
        cmd = store.command(orch.cmd_id)
        assert cmd is not None and cmd.state == CmdState.RUNNING  # nothing was applied
        assert "agent-1" in store.agents_in_flight()  # the restart's recover() asks its spool
        assert store.record_event(*stamp, now=0.0)  # the event was not recorded as handled
    finally:
        store.close()
