"""Issue 9 finding 6, each attack against real processes: sizes are capped, memory stays bounded,
and the service keeps serving everyone else.

Sizes are scaled down (a frame a little over the limit proves the refusal) but every memory
assertion compares against what the attack would have cost without the limit, read from the
target's /proc/<pid>/status.
"""

from __future__ import annotations

import msgspec
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from broker.client import ReplayClient
from common import ids, limits, roles, topics, zmqutil
from common import protocol as P
from common.auth import Security
from common.rpc import RequestError
from common.sequence import Stamper
from tests.conftest import Stack, wait_for
from tests.integration.attack_support import memory_kib
from tests.integration.conftest import agent_ids, journalled
from tests.integration.test_agent_support import EventSink, MasterPeer, agent_extra

pytestmark = pytest.mark.timeout(180)

MiB_KiB = 1024  # KiB per MiB, for /proc figures


def _attacker(
    ctx: zmq.Context, kind: int, endpoint: str, security: Security | None, server_role: str
) -> tuple[zmq.Socket, zmq.Socket]:
    """A socket with no size limit of its own, holding an authorized key (the attacks are what
    an authenticated peer can still do), and a monitor that reports its disconnects."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if security is not None:
        security.connect(sock, server_role, endpoint)
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    sock.connect(endpoint)
    return sock, monitor


def _dropped(monitor: zmq.Socket, timeout_ms: int = 20_000) -> bool:
    """The peer closed this connection (what libzmq does with a frame over MAXMSGSIZE)."""
    if not monitor.poll(timeout_ms):
        return False
    return recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED


def _close(*socks: zmq.Socket) -> None:
    for s in socks:
        s.close(linger=0)


# --------------------------------------------------------------------------- the master


def test_oversized_frames_to_the_master_are_dropped_unread(bus):
    """One 500 MB frame took the master to 1 GB; three at once got both agents declared lost."""
    stack, mc = bus
    ctx = zmq.Context.instance()
    master = stack.proc("master")
    before = memory_kib(master.pid)
    frame = b"x" * (limits.MAX_MSG_BYTES + limits.WIRE_OVERHEAD + 1)
    operator = stack.security()
    attackers = [_attacker(ctx, zmq.DEALER, stack.endpoint("master_clients"), operator, roles.MASTER) for _ in range(3)]
    try:
        for sock, _ in attackers:
            sock.send(frame)
        assert all(_dropped(monitor) for _, monitor in attackers), "the master kept an oversized frame's connection"
    finally:
        for pair in attackers:
            _close(*pair)
    after = memory_kib(master.pid)
    # Three frames of 16 MiB each were refused while being read: none was ever buffered.
    assert after["VmHWM"] - before["VmHWM"] < 8 * MiB_KiB, (before, after)
    assert mc.ping().source
    assert agent_ids(mc) == ["a1"]
    assert mc.stats()["agents_lost"] == 0


def test_a_query_over_the_id_cap_is_refused_and_the_agent_stays(bus):
    """One query with 500,000 ids got the agent declared lost."""
    _, mc = bus
    cmd_ids = [f"c{i}" for i in range(500_000)]
    with pytest.raises(RequestError) as err:
        mc.query(cmd_ids, agent="a1")
    assert err.value.code == "bad_request"
    assert "500000 command ids" in err.value.message and str(limits.MAX_QUERY_IDS) in err.value.message
    # The cap itself is served, the agent is still there, and it was never lost.
    statuses = mc.query(cmd_ids[: limits.MAX_QUERY_IDS], agent="a1")
    assert [s.state for s in statuses] == ["unknown"] * limits.MAX_QUERY_IDS
    assert agent_ids(mc) == ["a1"]
    assert mc.stats()["agents_lost"] == 0


def test_the_agent_refuses_an_over_cap_query_from_any_master(stack):
    """Checked at the agent too: a master (of another version) that forwards it gets bad_request,
    and the agent goes on answering that master."""
    ctx = zmq.Context()
    master, sink = MasterPeer(ctx, stack.security("master")), EventSink(ctx, stack.security("broker"))
    try:
        stack.start("agent", extra=agent_extra([master], sink))
        master.handshake()
        too_many = [f"c{i}" for i in range(limits.MAX_QUERY_IDS + 1)]
        reply = master.request(P.Query(req_id="q", cmd_ids=too_many))
        assert isinstance(reply, P.ErrorReply) and reply.code == "bad_request"
        assert f"{limits.MAX_QUERY_IDS + 1} command ids" in reply.message
        assert master.query("c0").state == "unknown"
    finally:
        master.close()
        sink.close()
        ctx.destroy(linger=0)


# --------------------------------------------------------------------------- the broker
# glibc keeps freed heap memory and raises its mmap threshold as big blocks come and go, so a
# process's RSS would not go back down after the attack's data is freed. A fixed threshold
# makes every block over 128 KiB its own mapping, returned when freed: RSS is then what the
# broker really holds.
_EXACT_RSS = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


@pytest.fixture
def broker(stack):
    stack.start("broker", env=_EXACT_RSS)
    with ReplayClient(zmq.Context.instance(), stack.endpoint("broker_replay"), stack.security()) as client:
        client.ping()
    return stack


def _stamped_done(stamper: Stamper, cmd_id: str, stdout: bytes) -> list[bytes]:
    ev = P.CmdDone(
        **stamper.stamp(topics.cmd("J", cmd_id)),
        job_id="J",
        cmd_id=cmd_id,
        status=P.CmdStatus(cmd_id=cmd_id, state="done", exit_code=0, stdout=stdout),
    )
    return P.encode_event(ev)


def _publisher_ready(stack: Stack, name: str) -> tuple[zmq.Socket, zmq.Socket, Stamper]:
    """A PUB (no limits of its own, a publisher's key) whose events the broker has started journalling."""
    ctx = zmq.Context.instance()
    replay = stack.endpoint("broker_replay")
    sock, monitor = _attacker(
        ctx, zmq.PUB, stack.endpoint("broker_xsub"), stack.security(name, roles.AGENT), roles.BROKER
    )
    stamper = Stamper("attacker", ids.new_epoch())

    def probe() -> bool:
        sock.send_multipart(_stamped_done(stamper, "probe", b""))
        return bool(journalled(replay, stack.security(), topics.cmd("J", "probe"), P.CmdDone))

    wait_for(probe, 20, "the attacker's PUB to be subscribed", interval=0.05)
    return sock, monitor, stamper


def test_an_event_over_the_limit_never_reaches_the_journal(broker):
    """A 300 MB cmd_done was journalled and took the orchestrator to 930 MB."""
    stack = broker
    replay = stack.endpoint("broker_replay")
    target = stack.proc("broker")
    # The largest event allowed passes; one byte of frame more does not.
    sock, monitor, stamper = _publisher_ready(stack, "attacker")
    try:
        overhead = len(_stamped_done(Stamper("attacker", stamper.epoch), "at-limit", b"x" * 100_000)[1]) - 100_000
        at_limit = _stamped_done(stamper, "at-limit", b"x" * (limits.MAX_EVENT_BYTES - overhead))
        assert len(at_limit[1]) == limits.MAX_EVENT_BYTES
        sock.send_multipart(at_limit)
        wait_for(
            lambda: journalled(replay, stack.security(), topics.cmd("J", "at-limit"), P.CmdDone),
            20,
            "the largest event",
        )
        before = memory_kib(target.pid)
        over = _stamped_done(stamper, "over", b"x" * limits.MAX_EVENT_BYTES)
        assert len(over[1]) > limits.MAX_EVENT_BYTES
        sock.send_multipart(over)
        assert _dropped(monitor), "the broker kept the connection that sent an oversized event"
        # 16 times the limit: a 32 MiB event costs the broker nothing either.
        sock2, monitor2, stamper2 = _publisher_ready(stack, "attacker")
        try:
            sock2.send_multipart(_stamped_done(stamper2, "huge", b"x" * (16 * limits.MAX_EVENT_BYTES)))
            assert _dropped(monitor2)
        finally:
            _close(sock2, monitor2)
        after = memory_kib(target.pid)
    finally:
        _close(sock, monitor)
    assert journalled(replay, stack.security(), topics.cmd("J", "over"), P.CmdDone) == []
    assert journalled(replay, stack.security(), topics.cmd("J", "huge"), P.CmdDone) == []
    assert after["VmHWM"] - before["VmHWM"] < 8 * MiB_KiB, (before, after)
    stack.check_alive()


def test_replay_pages_stay_under_the_byte_cap(broker):
    """Six 60-byte replay requests for a 300 MB event took the broker to 1.8 GB: events are now
    at most MAX_EVENT_BYTES, and a page never carries more than REPLAY_PAGE_BYTES of them."""
    stack = broker
    ctx = zmq.Context.instance()
    replay = stack.endpoint("broker_replay")
    sock, monitor, stamper = _publisher_ready(stack, "attacker")
    body = b"y" * (limits.MiB - 1024)
    try:
        for i in range(10):
            sock.send_multipart(_stamped_done(stamper, f"big-{i}", body))
        prefix = topics.cmd("J", "big-")
        wait_for(
            lambda: len(journalled(replay, stack.security(), prefix, P.CmdDone)) == 10,
            30,
            "ten 1 MiB events journalled",
        )
    finally:
        _close(sock, monitor)
    with ReplayClient(ctx, replay, stack.security()) as client:
        pages = list(client.pages(prefix))
    assert sum(len(p) for p in pages) == 10
    assert all(sum(len(b) for _i, _t, b in page) <= limits.REPLAY_PAGE_BYTES for page in pages)
    assert [len(p) for p in pages] == [4, 4, 2]  # a fifth body of just under 1 MiB would pass 4 MiB


def test_replay_requests_that_are_never_read_cost_a_bounded_queue(broker):
    stack = broker
    ctx = zmq.Context.instance()
    replay = stack.endpoint("broker_replay")
    target = stack.proc("broker")
    sock, monitor, stamper = _publisher_ready(stack, "attacker")
    try:
        for i in range(4):
            sock.send_multipart(_stamped_done(stamper, f"page-{i}", b"z" * (limits.MiB - 1024)))
        prefix = topics.cmd("J", "page-")
        wait_for(
            lambda: len(journalled(replay, stack.security(), prefix, P.CmdDone)) == 4, 30, "a 4 MiB page journalled"
        )
    finally:
        _close(sock, monitor)
    requests = 100  # 100 pages of ~4 MiB: 400 MiB if the broker queued them all
    reader, rmon = _attacker(ctx, zmq.DEALER, replay, stack.security(), roles.BROKER)
    reader.setsockopt(zmq.RCVHWM, 1)
    reader.setsockopt(zmq.RCVBUF, 64 * 1024)
    before = memory_kib(target.pid)
    try:
        for i in range(requests):
            reader.send(P.encode(P.Replay(req_id=f"r{i}", prefix=prefix)))
        # The replay thread answers in order: once another client's ping is answered, all
        # 100 requests have been served (or their pages dropped at the queue limit).
        with ReplayClient(ctx, replay, stack.security()) as other:
            wait_for(lambda: other.stats()["replay_requests"] >= requests, 60, "the replays to be served")
            assert other.ping().source
        after = memory_kib(target.pid)
    finally:
        _close(reader, rmon)
    # docs/operations.md promises at most 64 MiB per replay client that does not read; 32 MiB
    # of slack. Without the limit the broker held all 100 pages, 400 MiB.
    bound = (64 + 32) * MiB_KiB
    assert after["VmRSS"] - before["VmRSS"] < bound, (before, after)


def test_a_subscriber_that_never_reads_costs_the_broker_a_bounded_queue(broker):
    """A subscriber that never reads plus 1,000 events of 1 MB took the broker to 1 GB."""
    stack = broker
    ctx = zmq.Context.instance()
    replay = stack.endpoint("broker_replay")
    target = stack.proc("broker")
    stalled = ctx.socket(zmq.SUB)
    stalled.setsockopt(zmq.LINGER, 0)
    security = stack.security("stalled", roles.VIEWER)
    if security is not None:
        security.connect(stalled, roles.BROKER, stack.endpoint("broker_xpub"))
    stalled.setsockopt(zmq.RCVHWM, 1)  # its I/O thread stops reading at once...
    stalled.setsockopt(zmq.RCVBUF, 64 * 1024)  # ...and the kernel holds little for it
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    stalled.connect(stack.endpoint("broker_xpub"))
    sock, monitor, stamper = _publisher_ready(stack, "attacker")
    try:
        # Subscribed once it has received something; from here on it never reads again.
        wait_for(
            lambda: (sock.send_multipart(_stamped_done(stamper, "hello", b"")), stalled.poll(50))[1], 20, "subscribed"
        )
        stalled.recv_multipart()
        before = memory_kib(target.pid)
        count = 700  # 700 MB: what the broker would hold for this subscriber without the limit
        payload = b"m" * 1_000_000
        for i in range(count):
            sock.send_multipart(_stamped_done(stamper, f"mb-{i}", payload))
        with ReplayClient(ctx, replay, stack.security()) as client:
            # Forwarded (to the subscriber's queue, or dropped there) and written: the journal
            # holds nothing more in memory.
            wait_for(lambda: client.stats()["journalled"] >= count, 60, "the broker to journal every event")
        after = memory_kib(target.pid)
    finally:
        _close(sock, monitor, stalled)
    # docs/operations.md promises at most 256 MiB per stalled subscriber; 32 MiB of slack.
    bound = (256 + 32) * MiB_KiB
    assert after["VmRSS"] - before["VmRSS"] < bound, (before, after)
    stack.check_alive()


def test_request_caps_are_documented_values(broker):
    """The replay endpoint refuses a prefix no topic could have, with the limit in the message."""
    stack = broker
    sock = zmqutil.dealer(zmq.Context.instance(), stack.endpoint("broker_replay"), stack.security(), roles.BROKER)
    try:
        sock.send(P.encode(P.Replay(req_id="long", prefix="x" * (limits.MAX_SUBSCRIPTION_BYTES + 1))))
        assert sock.poll(10_000)
        reply = msgspec.msgpack.decode(sock.recv())
    finally:
        sock.close(linger=0)
    assert reply["code"] == "bad_request" and reply["req_id"] == "long"
    assert str(limits.MAX_SUBSCRIPTION_BYTES) in reply["message"]
