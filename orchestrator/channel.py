"""The orchestrator's one channel to its masters: every request sent, none waited for.

The orchestrator's loop must keep serving events and its API while a master takes its time
(or is frozen), so every request -- exec, query, kill, fetch, agents -- is sent on a DEALER per
master and forgotten until its reply (or its deadline) comes back through the loop's poller;
the reply then goes to the continuation the request was sent with.

What each operation may do is declared once (OPS): how long a master has to answer, and
whether a request nobody answered (timeout, or ``agent_unreachable`` from a master that does
not hold the agent) is sent again through the next master. Every master request of the
orchestrator is safe to resend: dispatch is idempotent by cmd_id, a kill of a finished command
is a no-op, queries and fetches only read. A listing of agents is asked of one given master
(the answer is about that master) and never failed over.

The pending table (``Pending``) is pure -- no sockets, the clock passed in -- so its
decisions (which master next, when to give up) are tested on their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import zmq

from common import logs, roles, zmqutil
from common import protocol as P
from common.auth import Security

log = logs.get("orchestrator.channel")

R = TypeVar("R", bound=P.Base)

# Error codes that mean nobody answered for the agent (it may be reachable through another
# master), not that the request was refused.
NO_ANSWER = ("timeout", "agent_unreachable")


@dataclass(frozen=True)
class Op:
    name: str
    timeout_s: float  # how long one master has to answer
    failover: bool  # not answered: send it again through the next master


OPS: dict[type[P.Base], Op] = {
    # An agent may take a moment to start a command (spool write, fork).
    P.Exec: Op("exec", 5.0, failover=True),
    P.Query: Op("query", 3.0, failover=True),
    P.Kill: Op("kill", 3.0, failover=True),
    # Up to limits.MAX_FETCH_BYTES read from the spool and relayed by the master.
    P.Fetch: Op("fetch", 5.0, failover=True),
    # Which agents this master has seen: only that master can say.
    P.ListAgents: Op("agents", 1.0, failover=False),
}


@dataclass(slots=True)
class Request:
    """One request in flight: where it was sent last, until when, and where its reply goes."""

    msg: P.Request[Any]
    op: Op
    on_reply: Callable[[Any], None]
    master: int
    deadline: float
    key: Hashable = None  # busy(key) while in flight: one query per agent, one fetch per command
    sent_at: float = 0.0
    tries: int = 1
    tried: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Resend:
    """Send ``req`` again, through master ``req.master`` (already chosen)."""

    req: Request


@dataclass(frozen=True)
class Finish:
    """``req`` is answered (or given up on, with a ``timeout`` ErrorReply): hand ``reply`` on."""

    req: Request
    reply: P.Base


Action = Resend | Finish


class Pending:
    """The requests in flight, by req_id; which master is asked first; when to try the next."""

    def __init__(self, masters: int) -> None:
        if masters < 1:
            raise ValueError("at least one master is needed")
        self.masters = masters
        self.current = 0  # the master asked first; moves on when it fails us
        self.by_id: dict[str, Request] = {}
        self.by_key: dict[Hashable, str] = {}
        self.failovers = [0] * masters  # per master: requests it did not answer, sent elsewhere

    def busy(self, key: Hashable) -> bool:
        return key in self.by_key

    def add(
        self,
        msg: P.Request[Any],
        on_reply: Callable[[Any], None],
        now: float,
        key: Hashable = None,
        master: int | None = None,
    ) -> Request:
        if key is not None and key in self.by_key:
            raise ValueError(f"a request for {key!r} is in flight already")
        op = OPS[type(msg)]
        at = self.current if master is None else master
        req = Request(msg, op, on_reply, at, now + op.timeout_s, key, sent_at=now, tried=[at])
        self.by_id[msg.req_id] = req
        if key is not None:
            self.by_key[key] = msg.req_id
        return req

    def answered(self, reply: P.Base, now: float) -> Action | None:
        """What to do with a reply; None for one nobody waits for (a late answer to a request
        already sent elsewhere, or a stranger's)."""
        req = self.by_id.get(getattr(reply, "req_id", ""))
        if req is None:
            return None
        if isinstance(reply, P.ErrorReply) and reply.code in NO_ANSWER:
            return self.unanswered(req, reply, now)
        return self._finish(req, reply)

    def expired(self, now: float) -> list[Action]:
        if not self.by_id:
            return []
        return [
            self.unanswered(req, self._timeout(req), now) for req in list(self.by_id.values()) if req.deadline <= now
        ]

    def unanswered(self, req: Request, why: P.ErrorReply, now: float) -> Action:
        """``req``'s master did not answer for the agent: the next master, or give up with ``why``."""
        if not (req.op.failover and req.tries < self.masters):
            return self._finish(req, why)
        self.failovers[req.master] += 1
        # The master that failed us is no longer the first choice for later requests either.
        req.master = self.current = (req.master + 1) % self.masters
        req.tries += 1
        req.tried.append(req.master)
        req.deadline = now + req.op.timeout_s
        return Resend(req)

    def _finish(self, req: Request, reply: P.Base) -> Finish:
        del self.by_id[req.msg.req_id]
        if req.key is not None:
            self.by_key.pop(req.key, None)
        return Finish(req, reply)

    @staticmethod
    def _timeout(req: Request) -> P.ErrorReply:
        return P.ErrorReply(
            req_id=req.msg.req_id,
            code="timeout",
            message=f"{req.op.name}: no answer within {req.op.timeout_s:g}s (masters tried: {req.tried})",
        )


class MasterChannel:
    """The sockets around ``Pending``: ``request`` sends, ``drain`` (a socket the poller found
    readable) and ``expire`` (every loop turn) run the continuations of what is answered."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoints: list[str],
        security: Security | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoints = endpoints
        self.clock = clock
        self.socks = [zmqutil.dealer(ctx, ep, security, roles.MASTER) for ep in endpoints]
        self.pending = Pending(len(endpoints))
        # Metrics hooks (orchestrator/metrics.py): seconds from an Exec's send to its answer; a
        # master that did not answer, by endpoint.
        self.on_round_trip: Callable[[float], None] = lambda _s: None
        self.on_failover: Callable[[str], None] = lambda _endpoint: None

    def busy(self, key: Hashable) -> bool:
        return self.pending.busy(key)

    def request(
        self,
        msg: P.Request[R],
        on_reply: Callable[[R | P.ErrorReply], None],
        key: Hashable = None,
        master: int | None = None,
    ) -> None:
        """Send ``msg``; ``on_reply`` gets its reply, or an ErrorReply (``timeout`` when no
        master answered in time), from a later ``drain`` or ``expire`` -- never from this call."""
        self._send(self.pending.add(msg, on_reply, self.clock(), key, master))

    def drain(self, sock: zmq.Socket) -> None:
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = P.decode(frame, P.Reply)
            except P.ProtocolError:
                continue  # not a reply (a misbehaving peer)
            action = self.pending.answered(reply, self.clock())
            if action is not None:
                self._act(action)

    def expire(self) -> None:
        for action in self.pending.expired(self.clock()):
            self._act(action)

    def close(self) -> None:
        for s in self.socks:
            s.close(linger=0)

    def _act(self, action: Action) -> None:
        if isinstance(action, Resend):
            self.on_failover(self.endpoints[action.req.tried[-2]])
            self._send(action.req)
            return
        req, reply = action.req, action.reply
        if req.op is OPS[P.Exec] and not (isinstance(reply, P.ErrorReply) and reply.code == "timeout"):
            self.on_round_trip(self.clock() - req.sent_at)
        if not isinstance(reply, P.ErrorReply):
            try:
                reply = P.reply_to(req.msg, reply)
            except P.ProtocolError as exc:
                reply = P.ErrorReply(req_id=req.msg.req_id, code=exc.code, message=exc.message)
        req.on_reply(reply)

    def _send(self, req: Request) -> None:
        try:
            self.socks[req.master].send(P.encode(req.msg), zmq.NOBLOCK)
        except zmq.Again:
            # Never block the loop: a master that stopped reading has filled its queue, and
            # counts as not answering at the next expire (the next master, or give up).
            log.warning("master.queue_full", master=self.endpoints[req.master], op=req.op.name)
            req.deadline = self.clock()
