"""Publisher: stamping per topic kind over a real PUB socket, never blocking when full, and
beacons that never overtake an event they count."""

from __future__ import annotations

import threading

import pytest
import zmq

from common import protocol as P
from common import zmqutil
from common.publisher import Publisher

pytestmark = pytest.mark.timeout(60)


def test_events_arrive_stamped_with_one_counter_per_kind():
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.subscribe(b"")
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    pub = Publisher(ctx.socket(zmq.PUB), "src", "e1")
    pub.sock.connect(f"tcp://127.0.0.1:{port}")
    try:
        # Slow joiner: publish probes until the subscription has reached the PUB side.
        while not sub.poll(20):
            pub.publish(P.JobChanged, "job.probe", job_id="probe", state="x")
        while sub.poll(100):
            sub.recv_multipart()
        sent = [
            pub.publish(P.JobChanged, "job.J1", job_id="J1", state="RUNNING"),
            pub.publish(P.AgentGone, "agent.a1", agent_id="a1", master="m"),
            pub.publish(P.JobChanged, "job.J1", job_id="J1", state="DONE"),
        ]
        got = [P.decode_event(sub.recv_multipart()) for _ in sent]
        assert got == sent
        job_seqs = [ev.seq for ev in got if isinstance(ev, P.JobChanged)]
        assert job_seqs[1] == job_seqs[0] + 1
        assert got[1].seq == 1  # the agent kind has its own counter
        assert {(ev.source, ev.epoch) for ev in got} == {("src", "e1")}
    finally:
        pub.close(linger=0)
        sub.close(linger=0)


def test_a_full_queue_drops_instead_of_blocking():
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, 1)
    pub = Publisher(sock, "src", "e1")
    try:
        # No subscriber ever reads: every send returns at once, the counter still advances.
        last = None
        for i in range(1000):
            last = pub.publish(P.JobChanged, "job.J", job_id="J", state=str(i))
        assert last is not None and last.seq == 1000
    finally:
        pub.close(linger=0)


def _connected(ctx: zmq.Context, pub: Publisher) -> zmq.Socket:
    """A SUB to everything that ``pub`` reaches (probes until it does), neither side dropping."""
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.subscribe(b"")
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    pub.sock.setsockopt(zmq.SNDHWM, 0)
    pub.sock.connect(f"tcp://127.0.0.1:{port}")
    while not sub.poll(20):
        pub.publish(P.JobChanged, "job.probe", job_id="probe", state="x")
    return sub


def test_a_beacon_never_leaves_before_an_event_it_counts():
    """Events from one thread, beacons every millisecond from the beacon thread: with nothing
    dropped, each beacon's ``last`` is exactly the highest seq of each kind received before it."""
    ctx = zmq.Context.instance()
    pub = Publisher(ctx.socket(zmq.PUB), "src", "e1", beacon_s=0.001)
    sub = _connected(ctx, pub)
    total = 20_000
    try:
        for i in range(total):
            if i % 3:
                pub.publish(P.LogChunk, "log.J.c", job_id="J", cmd_id="c", stream=1, offset=i, data=b"x")
            else:
                pub.publish(P.JobChanged, "job.J", job_id="J", state=str(i))
        sent = pub.stamper.last()
        highest: dict[str, int] = {}
        beacons = 0
        while highest != sent:
            ev = P.decode_event(sub.recv_multipart())
            if isinstance(ev, P.Beacon):
                beacons += 1
                assert ev.last == {k: highest.get(k, 0) for k in ev.last}, (ev.last, highest)
            else:
                highest[ev.topic.split(".")[0]] = ev.seq
        assert beacons > 0, "no beacon was sent while the events were"
    finally:
        pub.close(linger=0)
        sub.close(linger=0)


def test_beacons_come_every_interval_and_stop_with_close():
    ctx = zmq.Context.instance()
    pub = Publisher(ctx.socket(zmq.PUB), "src", "e1", beacon_s=0.05)
    sub = _connected(ctx, pub)
    try:
        pub.publish(P.AgentGone, "agent.a1", agent_id="a1", master="m")
        beacons = []
        while len(beacons) < 3:
            assert sub.poll(5000), "no beacon within 5 s"
            ev = P.decode_event(sub.recv_multipart())
            if isinstance(ev, P.Beacon):
                beacons.append(ev)
        assert beacons[-1].topic == "beacon.src" and beacons[-1].last["agent"] == 1
        assert [b.seq for b in beacons] == list(range(beacons[0].seq, beacons[0].seq + 3))
    finally:
        pub.close(linger=0)
        sub.close(linger=0)
    assert not any(t.name == "beacon" and t.is_alive() for t in threading.enumerate())


def test_no_beacons_unless_asked():
    ctx = zmq.Context.instance()
    pub = Publisher(ctx.socket(zmq.PUB), "src", "e1")
    sub = _connected(ctx, pub)
    try:
        while sub.poll(100):
            sub.recv_multipart()
        assert not sub.poll(300)
    finally:
        pub.close(linger=0)
        sub.close(linger=0)


def test_connected_to_several_brokers_each_gets_every_event_and_a_stuck_one_holds_back_nobody():
    """One PUB connected to two XSUB-like peers (zmqutil.pub with a list): each pipe has its own
    queue, so a peer that never reads only drops its own copies."""
    ctx = zmq.Context.instance()
    live, stuck = ctx.socket(zmq.SUB), ctx.socket(zmq.SUB)
    stuck.setsockopt(zmq.RCVHWM, 10)
    for s in (live, stuck):
        s.subscribe(b"")
    ports = [s.bind_to_random_port("tcp://127.0.0.1") for s in (stuck, live)]
    pub = Publisher(zmqutil.pub(ctx, [f"tcp://127.0.0.1:{p}" for p in ports], None), "src", "e1")
    try:
        while not (live.poll(20) and stuck.poll(0)):  # slow joiners: both subscribed
            pub.publish(P.JobChanged, "job.probe", job_id="probe", state="x")
        while live.poll(100):
            live.recv_multipart()
        sent = [pub.publish(P.JobChanged, "job.J", job_id="J", state=str(i)) for i in range(5000)]
        got = [P.decode_event(live.recv_multipart()) for _ in sent]
        assert got == sent
    finally:
        pub.close(linger=0)
        live.close(linger=0)
        stuck.close(linger=0)
