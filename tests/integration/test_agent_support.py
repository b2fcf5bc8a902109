"""Real peers for agent tests: the test plays the master with a bound ROUTER (exactly what a
master does) and the broker with a bound SUB where the agent's PUB connects. No tests here."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import zmq

from common import protocol as proto
from common import roles, zmqutil
from common.auth import Security
from common.ids import new_id


class MasterPeer:
    """A ROUTER on a free loopback port. By default it answers Hello with Welcome and
    Heartbeat with Heartbeat while receiving, as a live master would."""

    def __init__(self, ctx: zmq.Context, security: Security | None, name: str = "m", port: int | None = None) -> None:
        self.name = name
        self.port = port or zmqutil.free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.sock = zmqutil.router(ctx, self.endpoint, security, roles.MASTER_AGENTS)
        self.ident: bytes | None = None
        self.hellos: list[proto.Hello] = []

    def close(self) -> None:
        self.sock.close(linger=0)

    def send(self, msg: proto.Base) -> None:
        self.send_raw([proto.encode(msg)])

    def send_raw(self, frames: list[bytes]) -> None:
        assert self.ident is not None, "the agent has not spoken yet"
        self.sock.send_multipart([self.ident, *frames])

    def recv(self, timeout: float = 10.0, auto: bool = True) -> Any:
        """The next message other than the ones answered automatically."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                raise AssertionError(f"{self.name}: no message from the agent within {timeout}s")
            ident, frame = self.sock.recv_multipart()
            self.ident = ident
            msg = proto.decode(frame, proto.AgentToMaster)
            if isinstance(msg, proto.Hello):
                self.hellos.append(msg)
            if auto and isinstance(msg, proto.Hello):
                self.send(proto.Welcome(master_id=self.name, heartbeat_s=0.2))
            elif auto and isinstance(msg, proto.Heartbeat):
                self.send(proto.Heartbeat())
            else:
                return msg

    def expect(self, kind: type, timeout: float = 10.0, auto: bool = True) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()), auto=auto)
            if isinstance(msg, kind):
                return msg

    def handshake(self, timeout: float = 20.0) -> proto.Hello:
        hello = self.expect(proto.Hello, timeout, auto=False)
        self.send(proto.Welcome(master_id=self.name, heartbeat_s=0.2))
        return hello

    def request(self, msg: proto.Base, timeout: float = 10.0) -> Any:
        """Send a request and return the reply echoing its req_id (other traffic is skipped)."""
        self.send(msg)
        deadline = time.monotonic() + timeout
        while True:
            reply = self.recv(max(0.01, deadline - time.monotonic()))
            if getattr(reply, "req_id", None) == msg.req_id:  # type: ignore[attr-defined]
                return reply

    def exec(self, cmd_id: str, argv: list[str], **kw: Any) -> Any:
        exec_fields = {k: kw.pop(k) for k in ("job_id", "workspace") if k in kw}
        return self.request(
            proto.Exec(req_id=new_id("r"), cmd_id=cmd_id, spec=proto.CmdSpec(argv=argv, **kw), **exec_fields)
        )

    def query(self, cmd_id: str) -> proto.CmdStatus:
        reply = self.request(proto.Query(req_id=new_id("r"), cmd_ids=[cmd_id]))
        return reply.statuses[0]


class Transcript:
    """Everything published for one command, checked for order and contiguity as it arrives.

    A chunk may overlap what came before only by what a restarted agent publishes again (from
    the offsets its predecessor last saved); it is taken as ``tail`` takes it, and counted."""

    def __init__(self) -> None:
        self.started: proto.CmdStarted | None = None
        self.done: proto.CmdDone | None = None
        self.streams: dict[int, bytearray] = {proto.STDOUT: bytearray(), proto.STDERR: bytearray()}
        self.chunks = 0
        self.max_chunk = 0
        self.overlap = 0  # bytes published twice (across an agent restart)

    def add(self, ev: Any) -> None:
        assert self.done is None, f"event after CmdDone: {type(ev).__name__}"
        if isinstance(ev, proto.CmdStarted):
            self.started = ev
        elif isinstance(ev, proto.LogChunk):
            assert self.started is not None, "LogChunk before CmdStarted"
            buf = self.streams[ev.stream]
            assert ev.offset <= len(buf), f"chunk at offset {ev.offset}, expected {len(buf)}"
            seen = len(buf) - ev.offset
            assert ev.offset == len(buf) or bytes(buf[ev.offset :][: len(ev.data)]) == ev.data[:seen]
            self.overlap += min(seen, len(ev.data))
            buf += ev.data[seen:]
            self.chunks += 1
            self.max_chunk = max(self.max_chunk, len(ev.data))
        elif isinstance(ev, proto.CmdDone):
            self.done = ev


class EventSink:
    """A SUB bound where the agent's PUB connects; checks every (source, kind) seq is hole-free."""

    def __init__(self, ctx: zmq.Context, security: Security | None) -> None:
        self.endpoint = f"tcp://127.0.0.1:{zmqutil.free_port()}"
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        if security is not None:
            security.serve(self.sock, roles.BROKER_PUBLISH)  # the agent's PUB pins the broker's key
        self.sock.bind(self.endpoint)
        self.last_seq: dict[tuple[str, str, str], int] = {}
        self.transcripts: dict[str, Transcript] = {}

    def close(self) -> None:
        self.sock.close(linger=0)

    def next(self, timeout: float = 10.0) -> Any:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        ev = proto.decode_event(self.sock.recv_multipart())
        key = (ev.source, ev.epoch, ev.topic.split(".")[0])
        prev = self.last_seq.get(key)
        assert prev is None or ev.seq == prev + 1, f"seq hole in {key}: {prev} -> {ev.seq}"
        self.last_seq[key] = ev.seq
        cmd_id = getattr(ev, "cmd_id", None)
        if cmd_id:
            self.transcripts.setdefault(cmd_id, Transcript()).add(ev)
        return ev

    def until_done(self, cmd_id: str, timeout: float = 30.0) -> Transcript:
        deadline = time.monotonic() + timeout
        while True:
            t = self.transcripts.get(cmd_id)
            if t is not None and t.done is not None:
                return t
            if time.monotonic() > deadline:
                raise AssertionError(f"no CmdDone for {cmd_id} within {timeout}s")
            self.next(max(0.01, deadline - time.monotonic()))

    def until_started(self, cmd_id: str, timeout: float = 10.0) -> proto.CmdStarted:
        deadline = time.monotonic() + timeout
        while True:
            t = self.transcripts.get(cmd_id)
            if t is not None and t.started is not None:
                return t.started
            if time.monotonic() > deadline:
                raise AssertionError(f"no CmdStarted for {cmd_id} within {timeout}s")
            self.next(max(0.01, deadline - time.monotonic()))


def warm_up(master: MasterPeer, sink: EventSink, timeout: float = 10.0) -> None:
    """Run trivial commands until one's events reach the sink: the PUB->SUB path (and its
    subscription) is then established, so later commands lose no event to a slow join."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cmd_id = new_id("warm-")
        master.exec(cmd_id, ["true"])
        try:
            sink.until_done(cmd_id, timeout=0.5)
            return
        except AssertionError:
            continue
    raise AssertionError("the agent's events never reached the test subscriber")


def agent_extra(masters: list[MasterPeer], sink: EventSink, **agent: Any) -> dict:
    return {"agent": {"id": "a1", "masters": [m.endpoint for m in masters], "broker": sink.endpoint, **agent}}


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            out.append(int(entry))
    return out
