"""The request->reply map, and the clients' use of it against a real socket."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import zmq

from common import protocol as P
from common import roles, zmqutil
from common.rpc import MasterClient, RequestError

pytestmark = pytest.mark.timeout(20)


def _members(union: object) -> set[type]:
    return set(getattr(union, "__args__", (union,)))


# Every type a service accepts from a client, or the master forwards to an agent, carries a req_id.
REQUESTS = {
    cls
    for union in (P.ClientRequest, P.OrchestratorRequest, P.ReplayRequest, P.MasterToAgent)
    for cls in _members(union)
    if "req_id" in cls.__struct_fields__ and cls is not P.ErrorReply
}


@pytest.mark.parametrize("cls", sorted(REQUESTS, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_every_request_has_a_reply_type_in_the_reply_union(cls: type) -> None:
    assert cls in P.REPLY_FOR, f"{cls.__name__} is not a Request[...]: no reply type declared"
    assert P.REPLY_FOR[cls] in _members(P.Reply)


def test_requests_forwarded_to_agents_are_answered_with_types_agents_send() -> None:
    for cls in _members(P.MasterToAgent) & REQUESTS:
        assert P.REPLY_FOR[cls] in _members(P.AgentToMaster), cls


def test_the_map_has_no_request_that_no_socket_takes() -> None:
    assert set(P.REPLY_FOR) == REQUESTS


def test_reply_to_accepts_the_declared_type_and_names_a_wrong_one() -> None:
    ping = P.Ping(req_id="r1")
    pong = P.Pong(req_id="r1", source="m")
    assert P.reply_to(ping, pong) is pong
    with pytest.raises(P.ProtocolError) as err:
        P.reply_to(P.Kill(req_id="r2", cmd_id="c1"), P.Pong(req_id="r2"))
    assert err.value.code == "bad_reply"
    assert "kill was answered with pong, expected kill_r" in err.value.message


@pytest.fixture
def wrong_server() -> Iterator[str]:
    """A real ROUTER that answers every request with a pong carrying its req_id."""
    ctx = zmq.Context.instance()
    port = zmqutil.free_port()
    sock = zmqutil.router(ctx, f"tcp://127.0.0.1:{port}", None, roles.MASTER_CLIENTS)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if sock.poll(50):
                identity, frame = sock.recv_multipart()
                req = P.decode(frame, P.ClientRequest)
                sock.send_multipart([identity, P.encode(P.Pong(req_id=req.req_id, source="wrong"))])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"tcp://127.0.0.1:{port}"
    stop.set()
    t.join(5)
    sock.close(linger=0)


def test_a_reply_of_the_wrong_type_is_a_request_error(wrong_server: str) -> None:
    with MasterClient([wrong_server], None, timeout=5.0) as mc:
        assert mc.ping().source == "wrong"
        with pytest.raises(RequestError) as err:
            mc.query(["c1"])
        assert err.value.code == "bad_reply" and "expected query_r" in err.value.message


def test_req_id_is_recovered_past_bad_values_and_extra_frames() -> None:
    # A map whose `t` is not a str and whose other value is invalid UTF-8: still has a req_id.
    frame = b"\x83\xa6req_id\xa2r7\xa1t\x05\xa1x\xa2\xff\xfe"
    assert P.req_id_of(frame) == "r7"
    assert P.req_id_of(b"\x92\x01\x02") == ""  # not a map
    assert P.req_id_of(b"\xc1") == ""  # not msgpack
    # A REQ socket puts an empty delimiter frame before the message.
    identity, msg, error = P.decode_routed([b"peer", b"", P.encode(P.Ping(req_id="r8"))], P.ClientRequest)
    assert (identity, msg) == (b"peer", None)
    assert error is not None and (error.code, error.req_id) == ("bad_frame", "r8")
