"""The master: agents' ROUTER, clients' ROUTER, and the registry between them.

Clients (CLI, orchestrator) send requests; the master picks or looks up the agent, forwards
the request under its own req_id, and relays the agent's reply back with the client's req_id.
It owns nothing durable: a restarted master learns its agents again from their HELLOs, and
command state is always the agent spool's answer.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import msgspec
import zmq

from common import auth, ids, lifecycle, logs, metrics, roles, topics, zmqutil
from common import protocol as P
from common.config import Config
from common.publisher import Publisher
from master.metrics import MasterMetrics
from master.registry import AgentRecord, NoAgent, Registry

log = logs.get("master")


@dataclass
class Pending:
    """A client request forwarded to an agent, waiting for its reply."""

    client: bytes
    client_req_id: str
    msg: P.Base
    agent_id: str
    deadline: float
    tried: set[str] = field(default_factory=set)


class Master:
    def __init__(self, cfg: Config, ctx: zmq.Context | None = None) -> None:
        self.cfg = cfg
        self.id = cfg.master.id or f"master-{ids.host_id()}"
        self.hb = cfg.master.heartbeat_s
        self.ctx = ctx or zmq.Context.instance()
        self.registry = Registry(int(cfg.master.min_spool_free_mb * 2**20))
        self.pending: dict[str, Pending] = {}
        self.counters: dict[str, int] = {
            "agent_msgs": 0,
            "client_msgs": 0,
            "bad_frames": 0,
            "dispatched": 0,
            "rejected": 0,
            "agents_lost": 0,
            "unreachable": 0,
            "forbidden": 0,
        }
        self.security = auth.for_service(cfg, "master", "master")
        # No handover: agents do not choose routing ids, so none can take over another's.
        self.agents_sock = zmqutil.router(
            self.ctx, cfg.endpoint("master_agents"), self.security, roles.MASTER_AGENTS, handover=False
        )
        self.clients_sock = zmqutil.router(
            self.ctx, cfg.endpoint("master_clients"), self.security, roles.MASTER_CLIENTS
        )
        self.agents_guard = auth.Guard(self.security, roles.MASTER_AGENTS)
        self.clients_guard = auth.Guard(self.security, roles.MASTER_CLIENTS)
        # Events are notifications; the registry (ask LIST_AGENTS) is the truth.
        self.events = Publisher(
            zmqutil.pub(self.ctx, cfg.broker_xsubs(), self.security),
            self.id,
            ids.new_epoch(),
            cfg.master.beacon_s,
        )
        self._last_hb_sent = 0.0
        self._refused_hellos: set[tuple[str, str]] = set()  # (key, claimed id) already logged
        self.metrics = MasterMetrics(self.id, lambda: self.counters, self.registry.agents)

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event) -> None:
        poller = zmq.Poller()
        poller.register(self.agents_sock, zmq.POLLIN)
        poller.register(self.clients_sock, zmq.POLLIN)
        log.info(
            "master.ready",
            id=self.id,
            agents=self.cfg.endpoint("master_agents"),
            clients=self.cfg.endpoint("master_clients"),
        )
        while not stop.is_set():
            ready = dict(poller.poll(timeout=min(100, int(self.hb * 1000 / 2))))
            # Drain each socket per wake-up rather than one message per poll.
            if self.agents_sock in ready:
                zmqutil.drain(self.agents_sock, self._on_agent_frames, copy=False)
            if self.clients_sock in ready:
                zmqutil.drain(self.clients_sock, self._on_client_frames, copy=False)
            self._tick(time.time())
            self.metrics.health.tick()
        self.close()

    def close(self) -> None:
        for s in (self.agents_sock, self.clients_sock):
            s.close(linger=zmqutil.LINGER_MS)
        self.events.close(linger=zmqutil.LINGER_MS)  # stops its beacon thread before the socket closes

    def _tick(self, now: float) -> None:
        if now - self._last_hb_sent >= self.hb:
            self._last_hb_sent = now
            for rec in list(self.registry.agents.values()):
                self._to_agent(rec, P.Heartbeat())
        for rec in self.registry.expire(self.hb, now):
            self.counters["agents_lost"] += 1
            log.warning("agent.lost", agent=rec.agent_id, running=sorted(rec.running))
            self.events.publish(
                P.AgentLost,
                topics.agent(rec.agent_id),
                agent_id=rec.agent_id,
                master=self.id,
                running=sorted(rec.running),
                reason="missed heartbeats",
            )
            self._fail_pending_for(rec.agent_id, "agent_unreachable", f"agent {rec.agent_id} stopped answering")
        for req_id, p in list(self.pending.items()):
            if now > p.deadline:
                del self.pending[req_id]
                self._reply(
                    p.client,
                    P.ErrorReply(
                        req_id=p.client_req_id,
                        code="timeout",
                        message=f"agent {p.agent_id} did not answer within {self.cfg.master.request_timeout_s}s",
                    ),
                )

    # ------------------------------------------------------------------ agents

    def _on_agent_frames(self, frames: list[zmq.Frame]) -> None:
        self.counters["agent_msgs"] += 1
        got = zmqutil.routed(self.agents_sock, frames, P.AgentToMaster, self.agents_guard)
        if got is None:
            self.counters["bad_frames"] += 1
            return
        identity, user, msg = got
        if isinstance(msg, P.Hello):
            self._on_hello(identity, user, msg)
            return
        rec = self.registry.lookup(identity)
        if rec is not None and self.security is not None and rec.agent_id != user:
            rec = None  # a routing id is no identity: only the key that said HELLO speaks for it
        if rec is None:
            if not isinstance(msg, P.Bye):
                # We restarted, or declared it dead: it must introduce itself again.
                self._send(self.agents_sock, identity, P.Reregister(reason="unknown agent"))
            return
        self.metrics.heard(rec, msg, time.time())
        self.registry.touch(rec)
        if isinstance(msg, P.Heartbeat):
            self.registry.heartbeat(rec, msg.running, msg.free_slots, spool_free=msg.spool_free)
        elif isinstance(msg, P.Bye):
            self.registry.remove(rec.agent_id)
            self.events.publish(P.AgentGone, topics.agent(rec.agent_id), agent_id=rec.agent_id, master=self.id)
            self._fail_pending_for(rec.agent_id, "agent_unreachable", f"agent {rec.agent_id} shut down")
        else:
            self._on_agent_reply(rec, msg)

    def _on_hello(self, identity: bytes, user: str, msg: P.Hello) -> None:
        if self.security is not None and msg.agent.agent_id != user:
            self.counters["forbidden"] += 1
            if (user, msg.agent.agent_id) not in self._refused_hellos:  # once per pair, not per retry
                self._refused_hellos.add((user, msg.agent.agent_id))
                log.warning("agent.hello_refused", key=user, claimed=msg.agent.agent_id)
            text = f"key {user} may say HELLO only as agent {user}, not as {msg.agent.agent_id}"
            self._send(self.agents_sock, identity, P.ErrorReply(req_id="", code="forbidden", message=text))
            return
        if msg.proto != P.PROTOCOL_VERSION:
            self._send(
                self.agents_sock,
                identity,
                P.ErrorReply(
                    req_id="",
                    code="bad_request",
                    message=f"protocol {msg.proto} not supported (master speaks {P.PROTOCOL_VERSION}); upgrade the agent",
                ),
            )
            return
        is_new = self.registry.register(identity, msg.agent, msg.heartbeat_s)
        self._send(self.agents_sock, identity, P.Welcome(master_id=self.id, heartbeat_s=self.hb))
        rec = self.registry.agents[msg.agent.agent_id]
        log.info("agent.up", agent=rec.agent_id, host=msg.agent.host, new=is_new, running=len(rec.running))
        self.events.publish(
            P.AgentUp, topics.agent(rec.agent_id), agent=rec.snapshot(), master=self.id, recent_done=msg.recent_done
        )

    def _on_agent_reply(self, rec: AgentRecord, msg: P.Base) -> None:
        req_id = getattr(msg, "req_id", "")
        p = self.pending.pop(req_id, None)
        if p is None:
            return  # late reply to a request that timed out
        if (
            isinstance(msg, P.ErrorReply)
            and msg.code == "agent_busy"
            and isinstance(p.msg, P.Exec)
            and p.msg.agent is None
        ):
            # A pool dispatch: another agent in the pool may have room.
            p.tried.add(rec.agent_id)
            if self._dispatch(p):
                return
            self.counters["rejected"] += 1
        if isinstance(msg, P.ExecReply):
            self.registry.assign(msg.cmd_id, rec) if not msg.duplicate else None
            self.counters["dispatched"] += 1
        self._reply(p.client, msg_with_req_id(msg, p.client_req_id))

    # ------------------------------------------------------------------ clients

    def _on_client_frames(self, frames: list[zmq.Frame]) -> None:
        self.counters["client_msgs"] += 1
        got = zmqutil.routed(self.clients_sock, frames, P.ClientRequest, self.clients_guard)
        if got is None:
            self.counters["bad_frames"] += 1
            return
        client, _user, msg = got
        if isinstance(msg, P.Ping):
            self._reply(client, P.Pong(req_id=msg.req_id, source=self.id))
        elif isinstance(msg, P.Stats):
            self._reply(
                client,
                P.StatsReply(
                    req_id=msg.req_id, source=self.id, counters={**self.counters, "agents": len(self.registry.agents)}
                ),
            )
        elif isinstance(msg, P.ListAgents):
            agents = (
                self.registry.known() if msg.include_gone else [r.snapshot() for r in self.registry.agents.values()]
            )
            self._reply(client, P.AgentList(req_id=msg.req_id, agents=agents))
        elif isinstance(msg, P.Exec):
            self._on_exec(client, msg)
        else:
            self._on_cmd_request(client, msg)

    def _on_exec(self, client: bytes, msg: P.Exec) -> None:
        if not msg.cmd_id or not msg.spec.argv:
            self._reply(
                client,
                P.ErrorReply(req_id=msg.req_id, code="bad_request", message="exec needs a cmd_id and a non-empty argv"),
            )
            return
        p = Pending(client=client, client_req_id=msg.req_id, msg=msg, agent_id="", deadline=0.0)
        if not self._dispatch(p):
            self.counters["rejected"] += 1

    def _dispatch(self, p: Pending) -> bool:
        """Forward an Exec to the best agent not yet tried; on no fit, reply with the reason."""
        msg = p.msg
        assert isinstance(msg, P.Exec)
        try:
            rec = self.registry.select(msg.agent, msg.pool, msg.workspace, exclude=p.tried)
        except NoAgent as exc:
            code = "agent_busy" if p.tried else "no_agent"
            text = f"every agent that fits is busy (tried {', '.join(sorted(p.tried))})" if p.tried else str(exc)
            self._reply(p.client, P.ErrorReply(req_id=p.client_req_id, code=code, message=text))
            return False
        p.agent_id = rec.agent_id
        return self._forward(p, rec, msgspec.structs.replace(msg, agent=rec.agent_id))

    def _on_cmd_request(self, client: bytes, msg: P.Kill | P.Query | P.Fetch) -> None:
        if isinstance(msg, P.Query):
            owners = {msg.agent} if msg.agent else {self.registry.owner(c) for c in msg.cmd_ids}
            owners.discard(None)
            if len(owners) > 1:
                self._reply(
                    client,
                    P.ErrorReply(
                        req_id=msg.req_id,
                        code="bad_request",
                        message="query commands of one agent at a time (give agent=)",
                    ),
                )
                return
            agent_id = owners.pop() if owners else None
            if agent_id is None:
                # No owner known here: honestly unknown (ask with agent= to reach the spool).
                self._reply(
                    client, P.QueryReply(req_id=msg.req_id, statuses=[P.CmdStatus(cmd_id=c) for c in msg.cmd_ids])
                )
                return
        else:
            agent_id = msg.agent or self.registry.owner(msg.cmd_id)
            if agent_id is None:
                self._reply(
                    client,
                    P.ErrorReply(
                        req_id=msg.req_id,
                        code="unknown_cmd",
                        message=f"no agent known for command {msg.cmd_id}; pass its agent id",
                    ),
                )
                return
        rec = self.registry.agents.get(agent_id)
        if rec is None:
            self._reply(
                client,
                P.ErrorReply(
                    req_id=msg.req_id,
                    code="agent_unreachable",
                    message=f"agent {agent_id} is not connected to this master",
                ),
            )
            return
        p = Pending(client=client, client_req_id=msg.req_id, msg=msg, agent_id=agent_id, deadline=0.0)
        self._forward(p, rec, msgspec.structs.replace(msg, agent=agent_id))

    def _forward(self, p: Pending, rec: AgentRecord, msg: P.Base) -> bool:
        fwd_id = ids.new_id("m")
        p.deadline = time.time() + self.cfg.master.request_timeout_s
        if not self._to_agent(rec, msgspec.structs.replace(msg, req_id=fwd_id)):
            self._reply(
                p.client,
                P.ErrorReply(
                    req_id=p.client_req_id, code="agent_unreachable", message=f"agent {rec.agent_id} is not reachable"
                ),
            )
            return False
        self.pending[fwd_id] = p
        return True

    def _fail_pending_for(self, agent_id: str, code: str, text: str) -> None:
        for req_id, p in list(self.pending.items()):
            if p.agent_id == agent_id:
                del self.pending[req_id]
                self._reply(p.client, P.ErrorReply(req_id=p.client_req_id, code=code, message=text))

    # ------------------------------------------------------------------ sending

    def _send(self, sock: zmq.Socket, identity: bytes, msg: P.Base) -> bool:
        try:
            sock.send_multipart([identity, P.encode(msg)], zmq.NOBLOCK)
            return True
        except zmq.ZMQError:
            # ROUTER_MANDATORY: the peer is gone (or its queue is full); the caller decides.
            self.counters["unreachable"] += 1
            return False

    def _to_agent(self, rec: AgentRecord, msg: P.Base) -> bool:
        return self._send(self.agents_sock, rec.identity, msg)

    def _reply(self, client: bytes, msg: P.Base) -> None:
        self._send(self.clients_sock, client, msg)


def msg_with_req_id(msg: P.Base, req_id: str) -> P.Base:
    return msgspec.structs.replace(msg, req_id=req_id)


def main(cfg: Config) -> None:
    master = Master(cfg)
    metrics.serve(cfg, "master", master.metrics)
    master.run(lifecycle.stop_on_signals())
