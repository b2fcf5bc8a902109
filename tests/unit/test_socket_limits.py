"""The limits every socket and request gets (common/limits.py), checked on real sockets and codecs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from common import limits, zmqutil
from common import protocol as P


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _sockets(ctx: zmq.Context) -> dict[str, zmq.Socket]:
    # Nothing listens on port 1: connecting sockets just wait, which is all this needs.
    return {
        "router": zmqutil.router(ctx, "tcp://127.0.0.1:*", None, "test"),
        "dealer": zmqutil.dealer(ctx, "tcp://127.0.0.1:1", None, "master"),
        "pub": zmqutil.pub(ctx, "tcp://127.0.0.1:1", None),
        "sub": zmqutil.sub(ctx, "tcp://127.0.0.1:1", None),
    }


def test_every_socket_has_a_size_limit_keepalive_and_no_zmtp_heartbeats(ctx: zmq.Context) -> None:
    expected = {
        "router": limits.MAX_MSG_BYTES,
        "dealer": limits.MAX_MSG_BYTES,
        "pub": limits.MAX_SUBSCRIPTION_BYTES,
        "sub": limits.MAX_EVENT_BYTES,
    }
    for name, sock in _sockets(ctx).items():
        assert sock.getsockopt(zmq.MAXMSGSIZE) == expected[name] + limits.WIRE_OVERHEAD, name
        assert sock.getsockopt(zmq.HEARTBEAT_IVL) == 0, name
        assert sock.getsockopt(zmq.TCP_KEEPALIVE) == 1, name
        assert sock.getsockopt(zmq.TCP_KEEPALIVE_IDLE) == limits.TCP_KEEPALIVE_IDLE_S, name


def test_high_water_marks_follow_the_socket_role(ctx: zmq.Context) -> None:
    socks = _sockets(ctx)
    assert socks["router"].getsockopt(zmq.SNDHWM) == limits.SERVER_SNDHWM
    assert socks["router"].getsockopt(zmq.RCVHWM) == limits.SERVER_RCVHWM
    assert socks["dealer"].getsockopt(zmq.RCVHWM) == limits.CLIENT_RCVHWM
    assert socks["pub"].getsockopt(zmq.SNDHWM) == limits.EVENT_HWM
    assert socks["sub"].getsockopt(zmq.RCVHWM) == limits.EVENT_HWM
    replay = zmqutil.router(ctx, "tcp://127.0.0.1:*", None, "test", sndhwm=limits.REPLAY_SNDHWM)
    assert replay.getsockopt(zmq.SNDHWM) == limits.REPLAY_SNDHWM


def test_the_byte_bounds_hold_together() -> None:
    """The largest reply fits the request/reply frame limit; the largest page fits it too."""
    assert limits.MAX_FETCH_BYTES * 2 <= limits.MAX_MSG_BYTES
    assert max(limits.REPLAY_PAGE_BYTES, limits.MAX_EVENT_BYTES) * 2 <= limits.MAX_MSG_BYTES
    default_capture = 64 * limits.KiB
    assert limits.MAX_QUERY_IDS * 2 * default_capture < limits.MAX_MSG_BYTES
    # What docs/operations.md promises per client that stopped reading.
    unread_pages = limits.REPLAY_SNDHWM * limits.REPLAY_PAGE_BYTES
    unread_events = limits.BROKER_SNDHWM * limits.MAX_EVENT_BYTES
    assert unread_pages <= 64 * limits.MiB
    assert unread_events <= 256 * limits.MiB
    # A live subscriber's queue holds two proxy batches, so bursts do not overflow it.
    assert limits.BROKER_BATCH_EVENTS * 2 <= limits.BROKER_SNDHWM


def test_a_query_over_the_cap_is_a_bad_request_naming_both_numbers() -> None:
    ok = P.Query(req_id="q", cmd_ids=[f"c{i}" for i in range(limits.MAX_QUERY_IDS)])
    assert P.over_limit(ok) == ""
    over = P.Query(req_id="q", cmd_ids=[f"c{i}" for i in range(limits.MAX_QUERY_IDS + 1)])
    identity, msg, error = P.decode_routed([b"peer", P.encode(over)], P.ClientRequest)
    assert (identity, msg) == (b"peer", None)
    assert error is not None and (error.code, error.req_id) == ("bad_request", "q")
    assert f"{limits.MAX_QUERY_IDS + 1} command ids" in error.message
    assert f"limit of {limits.MAX_QUERY_IDS}" in error.message


def test_a_replay_prefix_longer_than_any_topic_is_refused() -> None:
    assert P.over_limit(P.Replay(req_id="r", prefix="log.")) == ""
    message = P.over_limit(P.Replay(req_id="r", prefix="é" * limits.MAX_SUBSCRIPTION_BYTES))
    assert f"{2 * limits.MAX_SUBSCRIPTION_BYTES} bytes" in message


def test_up_to_sizes_are_not_refused() -> None:
    """A fetch's size and a replay's limit are clamped by the server, never an error."""
    assert P.over_limit(P.Fetch(req_id="f", cmd_id="c", stream=1, offset=0, size=1 << 40)) == ""
    assert P.over_limit(P.Replay(req_id="r", limit=10**9)) == ""
