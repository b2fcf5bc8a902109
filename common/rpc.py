"""Request/reply clients: masters (with failover) and the orchestrator's API.

Used by the CLI, the orchestrator and anyone scripting p4bus from Python:

    with MasterClient(["tcp://127.0.0.1:9091"], auth.for_client(cfg)) as mc:
        reply = mc.exec(CmdSpec(argv=["p4", "info"]), pool="default")
        status = mc.query([reply.cmd_id], agent=reply.agent)[0]

A request goes to the current master; on a timeout or an unreachable master it is resent
through the next one. Dispatch is idempotent by cmd_id, so a resend never runs twice.

Orchestrators are different: of several, one is active and the others are standbys that
answer only reads (orchestrator/standby.py), and a write is not idempotent (a submit resent
after a timeout could queue the job twice). OrchestratorClient.request says how it chooses.
"""

from __future__ import annotations

import time
from typing import Any, Self, TypeVar

import zmq

from common import ids, roles, zmqutil
from common import protocol as P
from common.auth import Security

R = TypeVar("R", bound=P.Base)

# Several orchestrators: a read unanswered for HEDGE_S is sent to the next one as well (reads
# change nothing, so asking twice is harmless; the first answer wins), and a standby that
# refused a write is asked again after STANDBY_RETRY_S (it may have taken the lease by then).
HEDGE_S = 1.0
STANDBY_RETRY_S = 0.2


class RequestError(Exception):
    """A typed error reply (``code`` as on the wire), no answer (``timeout``), or an answer of
    the wrong type (``bad_reply``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message


class RpcClient:
    """Request/reply over a DEALER per endpoint, failing over in order. Every service answers
    ``ping`` and ``stats``; the subclasses add their own requests and name the server role
    whose key they pin."""

    server_role = ""

    def __init__(
        self,
        endpoints: list[str],
        security: Security | None,
        timeout: float = 10.0,
        ctx: zmq.Context | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self.endpoints = list(endpoints)
        self.security = security
        self.timeout = timeout
        self.ctx = ctx or zmq.Context.instance()
        self._socks: dict[str, zmq.Socket] = {}
        self._current = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for s in self._socks.values():
            s.close(linger=0)
        self._socks.clear()

    @property
    def _immediate(self) -> bool:
        """Queue nothing for an endpoint not connected now, so that a request can go to another."""
        return False

    def _sock(self, endpoint: str) -> zmq.Socket:
        s = self._socks.get(endpoint)
        if s is None:
            s = self._socks[endpoint] = zmqutil.dealer(
                self.ctx, endpoint, self.security, self.server_role, immediate=self._immediate
            )
        return s

    def request(self, msg: P.Request[R], timeout: float | None = None) -> R:
        """Send msg and return its reply, of the type P.REPLY_FOR names; raise RequestError."""
        timeout = self.timeout if timeout is None else timeout
        last = "no endpoint tried"
        for attempt in range(len(self.endpoints)):
            endpoint = self.endpoints[(self._current + attempt) % len(self.endpoints)]
            sock = self._sock(endpoint)
            sock.send(P.encode(msg))
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sock.poll(int(left * 1000)):
                    last = f"{endpoint} did not answer within {timeout:g}s"
                    self._forget(endpoint)
                    break
                try:
                    reply: P.Reply = P.decode(sock.recv(), P.Reply)
                except P.ProtocolError:
                    continue  # not a reply (a misbehaving peer): keep waiting for ours
                if reply.req_id != msg.req_id:
                    continue  # a stale reply to an earlier, timed-out request
                if isinstance(reply, P.ErrorReply) and reply.code == "agent_unreachable" and len(self.endpoints) > 1:
                    last = reply.message
                    break  # another master may still reach the agent
                self._current = (self._current + attempt) % len(self.endpoints)
                return _answer(msg, reply)
        raise RequestError("timeout", f"no answer: {last} (is the service running? check the endpoints)")

    def _reply(self, endpoint: str, req_id: str) -> P.Reply | None:
        """The reply to ``req_id`` waiting on ``endpoint``'s socket, if it has come."""
        sock = self._socks[endpoint]
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return None
            try:
                reply: P.Reply = P.decode(frame, P.Reply)
            except P.ProtocolError:
                continue  # not a reply (a misbehaving peer): keep waiting for ours
            if reply.req_id == req_id:
                return reply

    def _forget(self, endpoint: str) -> None:
        """Close the socket of a request left unanswered: its late reply must not be read as
        the answer to a later request."""
        sock = self._socks.pop(endpoint, None)
        if sock is not None:
            sock.close(linger=0)

    def ping(self, timeout: float | None = None) -> P.Pong:
        return self.request(P.Ping(req_id=ids.new_id("r")), timeout)

    def stats(self) -> dict[str, int]:
        return self.request(P.Stats(req_id=ids.new_id("r"))).counters


class MasterClient(RpcClient):
    server_role = roles.MASTER

    def exec(
        self,
        spec: P.CmdSpec,
        *,
        cmd_id: str | None = None,
        job_id: str = "",
        agent: str | None = None,
        pool: str | None = None,
        workspace: str | None = None,
    ) -> P.ExecReply:
        msg = P.Exec(
            req_id=ids.new_id("r"),
            cmd_id=cmd_id or ids.new_id("c"),
            spec=spec,
            job_id=job_id,
            agent=agent,
            pool=pool,
            workspace=workspace,
        )
        return self.request(msg)

    def kill(self, cmd_id: str, agent: str | None = None) -> P.KillReply:
        return self.request(P.Kill(req_id=ids.new_id("r"), cmd_id=cmd_id, agent=agent))

    def query(self, cmd_ids: list[str], agent: str | None = None) -> list[P.CmdStatus]:
        reply = self.request(P.Query(req_id=ids.new_id("r"), cmd_ids=cmd_ids, agent=agent))
        return reply.statuses

    def fetch(
        self, cmd_id: str, stream: int, offset: int, size: int = 1 << 20, agent: str | None = None
    ) -> P.FetchReply:
        return self.request(
            P.Fetch(req_id=ids.new_id("r"), cmd_id=cmd_id, stream=stream, offset=offset, size=size, agent=agent)
        )

    def agents(self, include_gone: bool = False) -> list[P.AgentInfo]:
        return self.request(P.ListAgents(req_id=ids.new_id("r"), include_gone=include_gone)).agents


def _answer(msg: P.Request[R], reply: P.Reply) -> R:
    if isinstance(reply, P.ErrorReply):
        raise RequestError(reply.code, reply.message)
    try:
        return P.reply_to(msg, reply)
    except P.ProtocolError as exc:
        raise RequestError(exc.code, exc.message) from None


class OrchestratorClient(RpcClient):
    """Jobs: submit, look at, resume, cancel, retry; templates and schedules."""

    server_role = roles.ORCHESTRATOR

    @property
    def _immediate(self) -> bool:
        # Several orchestrators (one active, the others standbys): a dead one costs no timeout.
        return len(self.endpoints) > 1

    def request(self, msg: P.Request[R], timeout: float | None = None) -> R:
        """Send msg and return its reply; raise RequestError.

        Of several orchestrators (the ``orchestrators`` setting), the request goes to the one
        that answered last, or else to the first one connected. A standby's refusal (code
        ``standby``) sends it on to the others, the refusing one again after STANDBY_RETRY_S,
        until ``timeout``: a takeover is a pause, not an error. A read is also sent to the next
        one after HEDGE_S without an answer. A write that went out unanswered is not sent again
        (it may have been carried out): that is a ``timeout`` error saying so.
        """
        timeout = self.timeout if timeout is None else timeout
        if len(self.endpoints) == 1:
            return super().request(msg, timeout)
        deadline = time.monotonic() + timeout
        read = isinstance(msg, P.ORCHESTRATOR_READS)
        frame = P.encode(msg)
        asked: dict[str, float] = {}  # endpoint -> when the request went there, unanswered
        refused: dict[str, float] = {}  # endpoint (a standby) -> when to ask it again
        standbys: set[str] = set()
        try:
            while (now := time.monotonic()) < deadline:
                refused = {e: t for e, t in refused.items() if t > now}
                hedge_at = max(asked.values()) + HEDGE_S if asked and read else deadline
                send = not asked or now >= hedge_at
                idle = [e for e in self._preferred() if e not in asked and e not in refused] if send else []
                poller = zmq.Poller()
                for e in asked:
                    poller.register(self._sock(e), zmq.POLLIN)
                for e in idle:
                    poller.register(self._sock(e), zmq.POLLOUT)
                wake = min([deadline, *refused.values()] + ([hedge_at] if hedge_at > now else []))
                ready = dict(poller.poll(max(1, int((wake - now) * 1000))))
                for e in list(asked):
                    reply = self._reply(e, msg.req_id) if ready.get(self._socks[e]) else None
                    if reply is None:
                        continue
                    del asked[e]
                    if isinstance(reply, P.ErrorReply) and reply.code == "standby":
                        refused[e] = time.monotonic() + STANDBY_RETRY_S
                        standbys.add(e)
                        continue
                    self._current = self.endpoints.index(e)
                    return _answer(msg, reply)
                for e in idle:
                    if ready.get(self._socks[e]):
                        try:
                            self._socks[e].send(frame, zmq.NOBLOCK)
                        except zmq.Again:
                            continue  # its connection went away since the poll
                        asked[e] = time.monotonic()
                        break
        finally:
            for e in asked:
                self._forget(e)
        if asked and not read:
            raise RequestError(
                "timeout",
                f"no answer from the orchestrator at {', '.join(asked)} within {timeout:g}s; it may have "
                "carried out the request before it stopped answering: look (p4bus status) before repeating it",
            )
        said = f"{', '.join(sorted(standbys))} answered as standby, no other" if standbys else "none answered"
        raise RequestError(
            "timeout",
            f"no answer: of the orchestrators at {', '.join(self.endpoints)}, {said} within {timeout:g}s "
            "(are they running? is the store reachable, so that one can be active?)",
        )

    def _preferred(self) -> list[str]:
        """The endpoints, the one that answered last first."""
        n = len(self.endpoints)
        return [self.endpoints[(self._current + i) % n] for i in range(n)]

    def submit(self, **fields: Any) -> P.JobView:
        return self.request(P.Submit(req_id=ids.new_id("r"), **fields)).job

    def job(self, job_id: str) -> P.JobView:
        return self.request(P.GetJob(req_id=ids.new_id("r"), job_id=job_id)).job

    def jobs(self, include_finished: bool = False, limit: int = 200) -> list[P.JobView]:
        msg = P.ListJobs(req_id=ids.new_id("r"), all=include_finished, limit=limit)
        return self.request(msg).jobs

    def resume(self, job_id: str) -> P.JobView:
        return self.request(P.Resume(req_id=ids.new_id("r"), job_id=job_id)).job

    def cancel(self, job_id: str, revert: bool = False) -> P.JobView:
        msg = P.Cancel(req_id=ids.new_id("r"), job_id=job_id, revert=revert)
        return self.request(msg).job

    def retry(self, job_id: str, from_stage: str | None = None) -> P.JobView:
        msg = P.RetryJob(req_id=ids.new_id("r"), job_id=job_id, from_stage=from_stage)
        return self.request(msg).job

    # Templates and schedules (orchestrator/scheduler.py).

    def put_template(self, template: P.Template, replace: bool = False) -> P.Template:
        return self.request(P.PutTemplate(req_id=ids.new_id("r"), template=template, replace=replace)).template

    def template(self, name: str) -> P.Template:
        return self.request(P.GetTemplate(req_id=ids.new_id("r"), name=name)).template

    def templates(self) -> list[P.Template]:
        return self.request(P.ListTemplates(req_id=ids.new_id("r"))).templates

    def remove_template(self, name: str) -> P.Template:
        return self.request(P.RemoveTemplate(req_id=ids.new_id("r"), name=name)).template

    def put_schedule(self, schedule: P.Schedule, replace: bool = False) -> P.Schedule:
        return self.request(P.PutSchedule(req_id=ids.new_id("r"), schedule=schedule, replace=replace)).schedule

    def schedules(self) -> list[P.Schedule]:
        return self.request(P.ListSchedules(req_id=ids.new_id("r"))).schedules

    def remove_schedule(self, name: str) -> P.Schedule:
        return self.request(P.RemoveSchedule(req_id=ids.new_id("r"), name=name)).schedule

    def cleanup(self, job_id: str) -> P.JobView:
        return self.request(P.CleanupJob(req_id=ids.new_id("r"), job_id=job_id)).job

    def approve(self, job_id: str) -> P.JobView:
        return self.request(P.Approve(req_id=ids.new_id("r"), job_id=job_id)).job
