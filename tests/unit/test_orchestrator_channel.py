"""The orchestrator's channel to its masters: the pending table's decisions (which master next,
when to give up, what a late reply is), the whole-output read, and one continuation per reply
through real sockets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from common import protocol as P
from orchestrator.channel import OPS, Finish, MasterChannel, Pending, Resend
from orchestrator.whole_output import FULL_OUTPUT_MAX, OutputRead, wanted

pytestmark = pytest.mark.timeout(20)


def _query(req_id: str = "q1", agent: str = "a1") -> P.Query:
    return P.Query(req_id=req_id, cmd_ids=["c1"], agent=agent)


def _error(req_id: str, code: str) -> P.ErrorReply:
    return P.ErrorReply(req_id=req_id, code=code, message=code)


def _ignore(_reply: Any) -> None:
    pass


# ---------------------------------------------------------------------------- pending table


def test_a_reply_finishes_its_request_and_frees_its_key() -> None:
    table = Pending(2)
    table.add(_query(), _ignore, now=0.0, key=("query", "a1"))
    assert table.busy(("query", "a1"))
    with pytest.raises(ValueError):
        table.add(_query("q2"), _ignore, now=0.0, key=("query", "a1"))  # one per key in flight
    reply = P.QueryReply(req_id="q1", statuses=[])
    action = table.answered(reply, now=0.1)
    assert isinstance(action, Finish) and action.reply is reply
    assert not table.busy(("query", "a1")) and not table.by_id
    assert table.answered(reply, now=0.2) is None  # a second (late) copy: nobody waits for it


def test_no_answer_fails_over_to_the_next_master_which_stays_first_choice() -> None:
    table = Pending(3)
    req = table.add(_query(), _ignore, now=0.0)
    assert req.master == 0 and req.deadline == OPS[P.Query].timeout_s
    assert table.expired(now=1.0) == []
    (action,) = table.expired(now=OPS[P.Query].timeout_s)
    assert isinstance(action, Resend) and action.req.master == 1 and action.req.tries == 2
    assert action.req.deadline == 2 * OPS[P.Query].timeout_s
    assert table.current == 1 and table.failovers == [1, 0, 0]
    # The next request goes to the master that answers now.
    assert table.add(_query("q2"), _ignore, now=3.0).master == 1
    # agent_unreachable from master 1 (it does not hold the agent): master 2 is tried.
    resend = table.answered(_error("q1", "agent_unreachable"), now=3.5)
    assert isinstance(resend, Resend) and resend.req.master == 2 and resend.req.tried == [0, 1, 2]


def test_every_master_tried_gives_up_with_the_last_reason() -> None:
    table = Pending(2)
    table.add(_query(), _ignore, now=0.0)
    assert isinstance(table.answered(_error("q1", "timeout"), now=0.1), Resend)
    action = table.answered(_error("q1", "agent_unreachable"), now=0.2)
    assert isinstance(action, Finish) and isinstance(action.reply, P.ErrorReply)
    assert action.reply.code == "agent_unreachable" and not table.by_id
    # Timed out everywhere: a timeout reply naming the masters tried.
    table.add(_query("q2"), _ignore, now=1.0)
    table.expired(now=10.0)
    (gave_up,) = table.expired(now=20.0)
    assert isinstance(gave_up, Finish) and isinstance(gave_up.reply, P.ErrorReply)
    assert gave_up.reply.code == "timeout" and "[1, 0]" in gave_up.reply.message


def test_a_refusal_is_final_and_a_listing_is_never_failed_over() -> None:
    table = Pending(2)
    table.add(_query(), _ignore, now=0.0)
    refused = table.answered(_error("q1", "bad_request"), now=0.1)
    assert isinstance(refused, Finish)  # another master would say the same
    table.add(P.ListAgents(req_id="l1", include_gone=True), _ignore, now=0.0, master=1)
    (action,) = table.expired(now=OPS[P.ListAgents].timeout_s)
    assert isinstance(action, Finish) and action.req.master == 1 and table.current == 0


# ---------------------------------------------------------------------------- whole output


def _status(out: int, err: int, truncated: bool = True) -> P.CmdStatus:
    return P.CmdStatus(cmd_id="c1", agent="a1", state="done", stdout_bytes=out, stderr_bytes=err, truncated=truncated)


def _chunk(stream: int, offset: int, data: bytes) -> P.FetchReply:
    return P.FetchReply(req_id="f", cmd_id="c1", stream=stream, offset=offset, data=data, total=0, complete=False)


def test_whole_output_is_read_stdout_then_stderr_chunk_by_chunk() -> None:
    assert not wanted(_status(10, 0, truncated=False)) and not wanted(_status(FULL_OUTPUT_MAX, 1))
    read = OutputRead(_status(5, 2))
    assert read.next() == (P.STDOUT, 0, 5)
    read.take(_chunk(P.STDOUT, 0, b"abc"))  # the spool caps a reply: the rest is asked for
    assert read.next() == (P.STDOUT, 3, 2)
    read.take(_chunk(P.STDOUT, 3, b"de"))
    assert read.next() == (P.STDERR, 0, 2)
    read.take(_chunk(P.STDERR, 0, b""))  # the spool has less than DONE said: keep what there is
    assert read.next() is None
    whole = read.result()
    assert (whole.stdout, whole.stderr, whole.truncated) == (b"abcde", b"", False)
    with pytest.raises(ValueError):
        OutputRead(_status(5, 0)).take(_chunk(P.STDOUT, 2, b"x"))  # not the chunk asked for


def test_a_read_keeps_the_first_stamp_it_is_given() -> None:
    read = OutputRead(_status(1, 0))  # begun from a query: no event to record
    read.adopt(("a1", "e", "cmd", 7))
    read.adopt(("a1", "e", "cmd", 8))
    assert read.stamp == ("a1", "e", "cmd", 7)


# ---------------------------------------------------------------------------- sockets


@pytest.fixture
def masters() -> Iterator[tuple[zmq.Context, list[zmq.Socket]]]:
    ctx = zmq.Context()
    routers = []
    for _ in range(2):
        r = ctx.socket(zmq.ROUTER)
        r.bind("tcp://127.0.0.1:*")
        routers.append(r)
    yield ctx, routers
    for r in routers:
        r.close(linger=0)
    ctx.term()


def test_the_channel_fails_over_from_a_silent_master_without_waiting(
    masters: tuple[zmq.Context, list[zmq.Socket]],
) -> None:
    ctx, (silent, live) = masters
    endpoints = [s.getsockopt_string(zmq.LAST_ENDPOINT) for s in (silent, live)]
    now = [0.0]
    channel = MasterChannel(ctx, endpoints, None, clock=lambda: now[0])
    got: list[P.Base] = []
    channel.request(_query(), got.append, key=("query", "a1"))
    assert got == []  # never answered from the call itself
    assert silent.poll(5000)  # the first master got it and says nothing
    silent.recv_multipart()
    now[0] = OPS[P.Query].timeout_s
    channel.expire()
    assert live.poll(5000)
    peer, frame = live.recv_multipart()
    assert P.decode(frame, P.ClientRequest) == _query()
    live.send_multipart([peer, P.encode(P.QueryReply(req_id="q1", statuses=[]))])
    assert channel.socks[1].poll(5000)
    channel.drain(channel.socks[1])
    assert got == [P.QueryReply(req_id="q1", statuses=[])] and not channel.busy(("query", "a1"))
    channel.close()


def test_a_reply_of_the_wrong_type_reaches_the_continuation_as_an_error(
    masters: tuple[zmq.Context, list[zmq.Socket]],
) -> None:
    ctx, (_silent, live) = masters
    channel = MasterChannel(ctx, [live.getsockopt_string(zmq.LAST_ENDPOINT)], None)
    got: list[P.Base] = []
    channel.request(P.Kill(req_id="k1", cmd_id="c1"), got.append)
    assert live.poll(5000)
    peer, _ = live.recv_multipart()
    live.send_multipart([peer, P.encode(P.QueryReply(req_id="k1", statuses=[]))])
    assert channel.socks[0].poll(5000)
    channel.drain(channel.socks[0])
    (reply,) = got
    assert isinstance(reply, P.ErrorReply) and reply.code == "bad_reply"
    channel.close()
