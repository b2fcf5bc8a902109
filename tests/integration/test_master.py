"""The master against real peers: a DEALER playing an agent, a SUB where its PUB connects."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
import zmq

from common import protocol as P
from common import roles, zmqutil
from common.rpc import MasterClient, RequestError
from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.timeout(60)

HEARTBEAT_S = 0.2  # the stack's master.heartbeat_s, and what FakeAgentPeer announces in its HELLO
MISSED_HEARTBEATS = 3  # docs/protocol.md: a peer is dead after 3 missed heartbeat intervals


class FakeAgentPeer:
    """A real DEALER speaking the agent side of the protocol by hand."""

    def __init__(self, stack: Stack, agent_id: str = "peer-1", workspaces=("ws",)) -> None:
        self.ctx = zmq.Context.instance()
        security = stack.security(agent_id, role=roles.AGENT)
        self.sock = zmqutil.dealer(self.ctx, stack.endpoint("master_agents"), security, roles.MASTER)
        self.info = P.AgentInfo(
            agent_id=agent_id, host="h", pools=["default"], workspaces=list(workspaces), slots=2, epoch="e1"
        )

    def send(self, msg) -> None:
        self.sock.send(P.encode(msg))

    def recv(self, timeout: float = 5.0, skip_heartbeats: bool = True):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(int((deadline - time.monotonic()) * 1000) + 1):
                msg = P.decode(self.sock.recv(), P.MasterToAgent)
                if skip_heartbeats and isinstance(msg, P.Heartbeat):
                    continue
                return msg
        raise AssertionError("no message from master")

    def hello(self) -> P.Welcome:
        self.send(P.Hello(proto=P.PROTOCOL_VERSION, agent=self.info, heartbeat_s=HEARTBEAT_S))
        msg = self.recv()
        assert isinstance(msg, P.Welcome), msg
        return msg

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture
def master(stack):
    ctx = zmq.Context.instance()
    # Stand in for the broker: an XSUB bound where the master's PUB connects, subscribed to all.
    events = ctx.socket(zmq.XSUB)
    broker = stack.security("broker")
    assert broker is not None
    broker.serve(events, roles.BROKER_PUBLISH)  # the master's PUB pins the broker's key
    events.bind(stack.endpoint("broker_xsub"))
    events.send(b"\x01")
    stack.start("master")
    mc = MasterClient([stack.endpoint("master_clients")], stack.security(), timeout=2.0)
    wait_for(lambda: _pings(mc), what="master to answer")
    # A bound socket attaches a new peer (and sends it our subscription) only when its own
    # thread touches it, as the broker's loop always does.
    events.poll(200)
    yield mc, events
    mc.close()
    events.close(linger=0)


def _pings(mc) -> bool:
    try:
        mc.ping(timeout=0.3)
        return True
    except RequestError:
        return False


def _next_event(sub, kind, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sub.poll(100):
            ev = P.decode_event(sub.recv_multipart())
            if isinstance(ev, kind):
                return ev
    raise AssertionError(f"no {kind.__name__} event")


def test_hello_listed_and_lost_after_missed_heartbeats(stack, master):
    """Silence makes an agent lost, and only enough of it: a peer that stops talking is declared
    lost no sooner than MISSED_HEARTBEATS intervals after it last spoke, while a peer that keeps
    sending heartbeats over the same span stays. (How soon after is speed: bench/, not here.)"""
    mc, events = master
    beating = FakeAgentPeer(stack, "beating")
    beating.hello()
    up = _next_event(events, P.AgentUp)
    assert up.agent.agent_id == "beating" and up.topic == "agent.beating"
    assert [a.agent_id for a in mc.agents()] == ["beating"]

    stop = threading.Event()
    beats: list[float] = []

    def keep_beating() -> None:  # owns the beating peer's socket from here on
        while not stop.wait(HEARTBEAT_S / 4):
            beating.send(P.Heartbeat())
            beats.append(time.time())

    thread = threading.Thread(target=keep_beating, daemon=True)
    thread.start()
    silent = FakeAgentPeer(stack, "silent")
    try:
        spoke = time.time()
        silent.hello()  # and nothing after it
        assert _next_event(events, P.AgentUp).agent.agent_id == "silent"
        lost = _next_event(events, P.AgentLost, timeout=10)
    finally:
        stop.set()
        thread.join(5)
    assert (lost.agent_id, lost.reason) == ("silent", "missed heartbeats")
    # ts is the master's clock when it gave up: at least MISSED_HEARTBEATS intervals of silence.
    assert lost.ts - spoke > MISSED_HEARTBEATS * HEARTBEAT_S
    # Over that same span the other peer spoke every quarter interval, and it is still there.
    assert len([t for t in beats if spoke < t < lost.ts]) >= MISSED_HEARTBEATS
    assert [a.agent_id for a in mc.agents()] == ["beating"]
    # The silent one speaks again without HELLO: it is told to re-register.
    silent.send(P.Heartbeat())
    assert isinstance(silent.recv(), P.Reregister)
    silent.close()
    beating.close()


def test_exec_forwarded_with_own_req_id_and_reply_relayed(stack, master):
    mc, _ = master
    peer = FakeAgentPeer(stack)
    peer.hello()
    result = {}
    t = threading.Thread(target=lambda: result.update(r=mc.exec(P.CmdSpec(argv=["true"]), cmd_id="c1")))
    t.start()
    fwd = peer.recv()
    assert isinstance(fwd, P.Exec) and fwd.agent == "peer-1" and fwd.cmd_id == "c1"
    peer.send(
        P.ExecReply(req_id=fwd.req_id, cmd_id="c1", agent="peer-1", status=P.CmdStatus(cmd_id="c1", state="running"))
    )
    t.join(5)
    assert result["r"].cmd_id == "c1" and result["r"].status.state == "running"
    # Later requests for c1 find their agent without being told.
    t = threading.Thread(target=lambda: result.update(k=mc.kill("c1")))
    t.start()
    kill = peer.recv()
    assert isinstance(kill, P.Kill) and kill.cmd_id == "c1"
    peer.send(P.KillReply(req_id=kill.req_id, cmd_id="c1", found=True))
    t.join(5)
    assert result["k"].found
    peer.close()


def test_dispatch_rejections_are_precise(stack, master):
    mc, _ = master
    with pytest.raises(RequestError) as err:
        mc.exec(P.CmdSpec(argv=["true"]), pool="gpu")
    assert err.value.code == "no_agent" and "pool 'gpu'" in err.value.message
    with pytest.raises(RequestError) as err:
        mc.kill("never-dispatched")
    assert err.value.code == "unknown_cmd"


def test_malformed_frames_answered_or_dropped_and_master_keeps_serving(stack, master):
    mc, _ = master
    ctx = zmq.Context.instance()
    rng = random.Random(7)
    # Per endpoint: what the replies decode as, and a valid message whose answer comes after
    # every answer to what was sent before it (one peer, one loop, in order).
    endpoints = [
        (stack.endpoint("master_clients"), "operator", roles.OPERATOR, P.Reply, P.Ping(req_id="fence"), P.Pong),
        # from an agent that never said HELLO
        (stack.endpoint("master_agents"), "stranger", roles.AGENT, P.MasterToAgent, P.Heartbeat(), P.Reregister),
    ]
    for endpoint, key, role, kind, fence, fence_reply in endpoints:
        s = zmqutil.dealer(ctx, endpoint, stack.security(key, role=role), roles.MASTER)
        for _i in range(200):
            frames = [os.urandom(rng.randrange(0, 64)) for _ in range(rng.choice([1, 1, 2, 3]))]
            s.send_multipart(frames)
        s.send(b"\x81\xa1t\xa4nope")  # a map with an unknown type
        s.send(P.encode(fence))
        errors = []
        while True:
            assert s.poll(10_000), f"{endpoint}: no answer to {fence} after {len(errors)} replies"
            reply = P.decode(s.recv(), kind)
            if isinstance(reply, fence_reply):
                break
            errors.append(reply)
        assert errors and all(isinstance(e, P.ErrorReply) for e in errors), errors
        assert {e.code for e in errors} <= {"bad_frame", "unknown_type", "bad_request"}
        assert errors[-1].code == "unknown_type"  # the last malformed one, answered in order
        s.close(linger=0)
    assert mc.ping().source
    stats = mc.stats()
    assert stats["bad_frames"] >= 2 * 201
