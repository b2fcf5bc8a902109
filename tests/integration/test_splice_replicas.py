"""The splice over two real brokers: a hole one broker's stream shows is filled by the other's
late copy exactly once and not reported; a hole neither fills is reported once, at a beacon,
after HOLE_GRACE_S, and a copy arriving after that is dropped.

The publisher here is two PUB sockets under one key, one per broker, so the test chooses which
broker gets which event (a real publisher's one PUB sends each event to both)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import zmq

from broker.client import HOLE_GRACE_S, ReplayClient, ReplayTimeout, history_then_live
from common import protocol as P
from common import roles, topics, zmqutil
from common.sequence import Gap, Stamper
from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.timeout(60)


class Reader(threading.Thread):
    """A spliced reader of both brokers, collecting what it yields and what it reports missing."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.ctx = zmq.Context()
        brokers = stack.config().bus_brokers()
        self.stream = history_then_live(
            self.ctx,
            [b.xpub for b in brokers],
            [b.replay for b in brokers],
            stack.security(),
            ["log.", "job."],
            on_missing=lambda gap, _why: self.missing.append(gap),
        )
        self.got: list[P.Event] = []
        self.missing: list[Gap] = []

    def run(self) -> None:
        try:
            for ev, _publisher in self.stream:
                self.got.append(ev)
        except zmq.ContextTerminated:
            pass
        finally:
            self.stream.close()

    def seqs(self, topic: str) -> list[int]:
        return [ev.seq for ev in list(self.got) if ev.topic == topic]


def _answers(rc: ReplayClient) -> bool:
    try:
        rc.ping()
    except ReplayTimeout:
        return False
    return True


@pytest.fixture
def replicas(stack: Stack) -> Iterator[tuple[Stack, list[zmq.Socket], Stamper]]:
    for name, extra in stack.replicate_brokers(2).items():
        stack.start("broker", name=name, extra=extra)
    for broker in stack.config().bus_brokers():
        with ReplayClient(zmq.Context.instance(), broker.replay, stack.security(), timeout_s=0.5) as rc:
            wait_for(lambda rc=rc: _answers(rc), 20, f"broker {broker.replay} to answer")
    security = stack.security("replica-publisher", roles.AGENT)
    ctx = zmq.Context.instance()
    pubs = [zmqutil.pub(ctx, b.xsub, security) for b in stack.config().bus_brokers()]
    yield stack, pubs, Stamper("replica-publisher", "e1")
    for s in pubs:
        s.close(linger=0)


def test_a_late_copy_fills_a_hole_once_and_a_hole_nobody_fills_is_reported_once(replicas):
    stack, (a, b), stamper = replicas
    reader = Reader(stack)
    reader.start()

    def send(ev: P.EventBase, *to: zmq.Socket) -> None:
        for s in to:
            s.send_multipart(P.encode_event(ev))

    def beacon() -> P.Beacon:
        return P.Beacon(**stamper.stamp(topics.beacon(stamper.source)), last=stamper.last())

    # Both brokers' subscriptions are active once a probe sent to each alone came through.
    for pub in (a, b):
        probe = f"job.probe{id(pub)}"

        def through(pub: zmq.Socket = pub, probe: str = probe) -> bool:
            send(P.JobChanged(**stamper.stamp(probe), job_id="p", state="x"), a, b)
            send(beacon(), a, b)
            return bool(reader.seqs(probe))

        wait_for(through, 20, "the reader to subscribe at both brokers", interval=0.1)
    e1, e2, e3 = (P.JobChanged(**stamper.stamp("log.R.c"), job_id="R", state=str(i)) for i in (1, 2, 3))
    send(e1, a, b)
    send(e3, a)  # broker A never gets e2
    wait_for(lambda: reader.seqs("log.R.c") == [e1.seq, e3.seq], 10, "e1 and e3 through broker A")
    send(e2, b)  # broker B, late: the hole it fills is still open
    send(e3, b)
    wait_for(lambda: reader.seqs("log.R.c") == [e1.seq, e3.seq, e2.seq], 10, "e2 through broker B")
    # A hole nobody fills: e4 is published to neither broker.
    e4, e5 = (P.JobChanged(**stamper.stamp("log.R.c"), job_id="R", state=str(i)) for i in (4, 5))
    send(e5, a, b)

    def reported() -> bool:
        send(beacon(), a, b)  # each beacon comes twice: through both brokers
        return bool(reader.missing)

    wait_for(reported, 5 * HOLE_GRACE_S + 10, "the hole e4 left to be reported", interval=0.2)
    send(beacon(), a, b)
    send(e4, a, b)  # too late: reported lost, so dropped
    send(e6 := P.JobChanged(**stamper.stamp("log.R.c"), job_id="R", state="6"), a, b)
    wait_for(lambda: e6.seq in reader.seqs("log.R.c"), 10, "e6")
    reader.ctx.term()
    reader.join(10)
    assert reader.seqs("log.R.c") == [e1.seq, e3.seq, e2.seq, e5.seq, e6.seq]
    assert [(g.kind, g.first_missing, g.last_missing) for g in reader.missing] == [("log", e4.seq, e4.seq)]
