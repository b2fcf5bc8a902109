"""Dispatching commands without waiting: Exec requests out, replies handled as they arrive.

The orchestrator's loop must keep serving events and its API while an agent takes its time to
start a command, so an Exec is sent and forgotten until its reply (or its deadline) comes
back through the same poller. A request that times out or finds the agent unreachable is sent
again through the next master: safe, because dispatch is idempotent by cmd_id.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from common import ids, roles, zmqutil
from common import protocol as P
from common.auth import Security


@dataclass
class _Pending:
    msg: P.Exec
    master: int
    deadline: float
    tries: int = 1
    sent_at: float = field(default_factory=time.monotonic)


Outcome = tuple[str, P.ExecReply | P.ErrorReply]  # (cmd_id, reply)


class Dispatcher:
    def __init__(self, ctx: zmq.Context, endpoints: list[str], security: Security | None, timeout_s: float) -> None:
        self.endpoints = endpoints
        self.timeout_s = timeout_s
        self.socks = [zmqutil.dealer(ctx, ep, security, roles.MASTER) for ep in endpoints]
        self.current = 0
        self.pending: dict[str, _Pending] = {}  # req_id -> request
        self.by_cmd: dict[str, str] = {}  # cmd_id -> req_id
        # Metrics hooks (orchestrator/metrics.py): seconds from send to reply; a master failed over.
        self.on_round_trip: Callable[[float], None] = lambda _s: None
        self.on_failover: Callable[[str], None] = lambda _endpoint: None

    def busy(self, cmd_id: str) -> bool:
        return cmd_id in self.by_cmd

    def send(self, msg: P.Exec) -> None:
        self.pending[msg.req_id] = _Pending(msg, self.current, time.monotonic() + self.timeout_s)
        self.by_cmd[msg.cmd_id] = msg.req_id
        self.socks[self.current].send(P.encode(msg))

    def exec(
        self, cmd_id: str, spec: P.CmdSpec, *, job_id: str, agent: str | None, pool: str | None, workspace: str
    ) -> None:
        self.send(
            P.Exec(
                req_id=ids.new_id("r"),
                cmd_id=cmd_id,
                spec=spec,
                job_id=job_id,
                agent=agent,
                pool=pool,
                workspace=workspace,
            )
        )

    def drain(self, sock: zmq.Socket) -> list[Outcome]:
        out: list[Outcome] = []
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return out
            try:
                reply = P.decode(frame, P.Reply)
            except P.ProtocolError:
                continue
            p = self.pending.get(getattr(reply, "req_id", ""))
            if p is None:
                continue  # a late answer to a request already resent elsewhere
            if (
                isinstance(reply, P.ErrorReply)
                and reply.code in ("agent_unreachable", "timeout")
                and p.tries < len(self.socks)
            ):
                self._resend(p)  # another master may still reach the agent
                continue
            out.append(self._finish(p, reply))

    def expire(self) -> list[Outcome]:
        now = time.monotonic()
        out: list[Outcome] = []
        for p in [p for p in self.pending.values() if p.deadline < now]:
            if p.tries < len(self.socks):
                self._resend(p)
            else:
                out.append(
                    self._finish(
                        p,
                        P.ErrorReply(
                            req_id=p.msg.req_id,
                            code="timeout",
                            message=f"no master answered within {self.timeout_s:g}s ({', '.join(self.endpoints)})",
                        ),
                    )
                )
        return out

    def _resend(self, p: _Pending) -> None:
        # The master that failed us is no longer the first choice for later requests either.
        self.on_failover(self.endpoints[p.master])
        p.master = self.current = (p.master + 1) % len(self.socks)
        p.tries += 1
        p.deadline = time.monotonic() + self.timeout_s
        self.socks[p.master].send(P.encode(p.msg))

    def _finish(self, p: _Pending, reply: P.ExecReply | P.ErrorReply) -> Outcome:
        del self.pending[p.msg.req_id]
        self.by_cmd.pop(p.msg.cmd_id, None)
        self.on_round_trip(time.monotonic() - p.sent_at)
        return p.msg.cmd_id, reply

    def close(self) -> None:
        for s in self.socks:
            s.close(linger=0)
