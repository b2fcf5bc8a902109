"""Run one command through the bus and follow it to the end: the engine of `p4bus run`.

Subscribe first, then dispatch, then stream chunks in order; gaps and a missed DONE are
recovered from the agent's spool (Fetch, Query), so nothing is lost even when PUB/SUB drops.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import zmq

from common import ids, topics, zmqutil
from common import protocol as P
from common.rpc import MasterClient
from p4bus.stream import OutputAssembler, Sink

# With no event for this long, ask the agent's spool whether the command has finished.
IDLE_QUERY_S = 0.5


@dataclass
class RunResult:
    status: P.CmdStatus
    agent: str
    fetched_bytes: int  # bytes that had to come from the spool rather than the live stream


def exit_code_of(status: P.CmdStatus) -> int:
    """Shell convention: the exit code, or 128+signal; 126 when the command could not start."""
    if status.error:
        return 126
    if status.exit_code is not None:
        return status.exit_code
    if status.signal:
        return 128 + status.signal
    return 1


class CommandFollower:
    """Follows one dispatched command on an already-subscribed SUB socket."""

    def __init__(self, mc: MasterClient, sub: zmq.Socket, cmd_id: str, agent: str, sink: Sink) -> None:
        self.mc = mc
        self.sub = sub
        self.cmd_id = cmd_id
        self.agent = agent
        self.out = OutputAssembler(self._fetch, sink)

    def _fetch(self, stream: int, offset: int, size: int) -> tuple[bytes, int]:
        r = self.mc.fetch(self.cmd_id, stream, offset, size, agent=self.agent)
        return r.data, r.total

    def wait(self, on_tick: Callable[[], None] | None = None) -> P.CmdStatus:
        last_event = time.monotonic()
        while True:
            if on_tick:
                on_tick()
            if self.sub.poll(int(IDLE_QUERY_S * 1000)):
                last_event = time.monotonic()
                done = self._drain()
                if done is not None:
                    self.out.finish(done)
                    return done
            elif time.monotonic() - last_event >= IDLE_QUERY_S:
                last_event = time.monotonic()
                status = self.mc.query([self.cmd_id], agent=self.agent)[0]
                if status.state == "done":
                    self.out.finish(status)
                    return status

    def _drain(self) -> P.CmdStatus | None:
        while True:
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return None
            try:
                ev, publisher = P.decode_delivered(frames)
            except P.ProtocolError:
                continue
            if publisher and publisher != self.agent:
                continue  # not from the agent running it (the broker authenticated who sent it)
            if isinstance(ev, P.LogChunk) and ev.cmd_id == self.cmd_id:
                self.out.chunk(ev.stream, ev.offset, ev.data)
            elif isinstance(ev, P.CmdDone) and ev.cmd_id == self.cmd_id:
                return ev.status


def run_command(
    mc: MasterClient,
    xpub: str | Sequence[str],
    spec: P.CmdSpec,
    sink: Sink,
    *,
    agent: str | None = None,
    pool: str | None = None,
    job_id: str = "",
    on_started: Callable[[P.ExecReply], None] | None = None,
    on_tick: Callable[[], None] | None = None,
    ctx: zmq.Context | None = None,
) -> RunResult:
    cmd_id = ids.new_id("c")
    sub = zmqutil.sub(
        ctx or zmq.Context.instance(), xpub, mc.security, [topics.log(job_id, cmd_id), topics.cmd(job_id, cmd_id)]
    )
    try:
        reply = mc.exec(spec, cmd_id=cmd_id, job_id=job_id, agent=agent, pool=pool)
        if on_started:
            on_started(reply)
        if reply.status.state == "done" and reply.status.error:
            return RunResult(reply.status, reply.agent, 0)
        follower = CommandFollower(mc, sub, cmd_id, reply.agent, sink)
        status = follower.wait(on_tick)
        return RunResult(status, reply.agent, follower.out.fetched_bytes)
    finally:
        sub.close(linger=0)
