"""Publisher: stamping per topic kind over a real PUB socket, and never blocking when full."""

from __future__ import annotations

import zmq

from common import protocol as P
from common.publisher import Publisher


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
