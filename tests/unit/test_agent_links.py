from collections.abc import Iterator

import pytest
import zmq

from agent.links import MasterLink
from common import protocol as proto


@pytest.fixture
def sock() -> Iterator[zmq.Socket]:
    """An unconnected DEALER: these tests check the schedule and send nothing."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    yield s
    s.close(linger=0)
    ctx.term()


def test_hello_until_welcome_then_heartbeats(sock: zmq.Socket) -> None:
    ln = MasterLink("tcp://x", sock, heartbeat_s=1.0)
    assert ln.due(0.0) == "hello"
    ln.last_sent["hello"] = 0.0
    assert ln.due(0.5) is None and ln.due(1.0) == "hello"
    ln.welcome(proto.Welcome(master_id="m", heartbeat_s=2.0))
    ln.heard(1.0)
    assert ln.due(1.0) == "heartbeat"
    ln.last_sent["heartbeat"] = 1.0
    assert ln.due(1.5) is None and ln.next_due(1.5) == 2.0


def test_silent_master_is_gone_after_three_of_the_longer_intervals(sock: zmq.Socket) -> None:
    ln = MasterLink("tcp://x", sock, heartbeat_s=1.0)
    ln.welcome(proto.Welcome(master_id="m", heartbeat_s=2.0))
    ln.heard(10.0)
    assert ln.check_alive(15.9) and ln.welcomed
    assert not ln.check_alive(16.1) and not ln.welcomed
    assert ln.due(16.1) == "hello"


def test_hello_when_an_unwelcomed_master_speaks_is_rate_limited(sock: zmq.Socket) -> None:
    ln = MasterLink("tcp://x", sock, heartbeat_s=1.0)
    assert ln.hello_wanted(0.0)
    ln.last_sent["hello"] = 0.0
    assert not ln.hello_wanted(0.5) and ln.hello_wanted(1.0)
    ln.welcome(proto.Welcome(master_id="m", heartbeat_s=1.0))
    assert not ln.hello_wanted(5.0)
