"""The master's live view of its agents: who is there, what they offer, what they run.

Pure bookkeeping (no sockets), so selection and expiry are unit-tested directly. The registry
is not durable by design: after a master restart agents re-register (HELLO) and rebuild it.
"""

from __future__ import annotations

import time
from collections.abc import Set
from dataclasses import dataclass, field

import msgspec

from common.protocol import AgentInfo

MISSED_HEARTBEATS = 3


@dataclass
class AgentRecord:
    info: AgentInfo
    identity: bytes
    heartbeat_s: float
    last_seen: float
    running: set[str] = field(default_factory=set)
    free_slots: int = 0
    spool_free: int | None = None  # bytes, as the agent last reported (None: not reported)

    @property
    def agent_id(self) -> str:
        return self.info.agent_id

    def snapshot(self) -> AgentInfo:
        info = self.info
        return AgentInfo(
            agent_id=info.agent_id,
            host=info.host,
            pools=info.pools,
            labels=info.labels,
            workspaces=info.workspaces,
            slots=info.slots,
            running=sorted(self.running),
            epoch=info.epoch,
            last_seen=self.last_seen,
            alive=True,
            spool_free=self.spool_free,
        )

    def short_of_spool(self, min_free: int) -> str:
        """Why this agent gets no work for lack of spool space; "" when it has enough."""
        if self.spool_free is None or self.spool_free >= min_free:
            return ""
        return (
            f"agent {self.agent_id} has {self.spool_free / 2**20:.1f} MiB free for its spool, below this "
            f"master's min_spool_free_mb ({min_free / 2**20:.0f} MiB): free space on it "
            "(or lower master.min_spool_free_mb)"
        )


class NoAgent(Exception):
    """No live agent fits a dispatch; the message says why and what exists."""


class Registry:
    def __init__(self, min_spool_free: int = 0) -> None:
        self.min_spool_free = min_spool_free  # bytes
        self.agents: dict[str, AgentRecord] = {}
        self.by_identity: dict[bytes, str] = {}
        # cmd_id -> agent_id, from dispatches and heartbeats, so Kill/Query/Fetch need no agent.
        self.cmd_owner: dict[str, str] = {}
        # Every agent that said HELLO since this master started, as it last described itself:
        # a job for one that is offline now waits for it; one for a name never seen is refused.
        self.seen: dict[str, AgentInfo] = {}
        # No agent can be dead before this: the earliest deadline the last expiry scan saw. A
        # message only moves an agent's deadline later, so the master's loop, which asks on every
        # wake-up (a thousand a second with a thousand agents), scans only when one may be due.
        self._next_expiry = 0.0

    def register(self, identity: bytes, info: AgentInfo, heartbeat_s: float, now: float | None = None) -> bool:
        """Add or refresh an agent; returns True when it is new (or came back with a new epoch)."""
        now = time.time() if now is None else now
        old = self.agents.get(info.agent_id)
        rec = AgentRecord(
            info=info,
            identity=identity,
            heartbeat_s=heartbeat_s,
            last_seen=now,
            running=set(info.running),
            free_slots=max(0, info.slots - len(info.running)),
            spool_free=info.spool_free,
        )
        self.agents[info.agent_id] = rec
        # Its own interval is no longer than the one expire() applies: an early enough bound.
        self._next_expiry = min(self._next_expiry, now + MISSED_HEARTBEATS * heartbeat_s)
        self.by_identity[identity] = info.agent_id
        self.seen[info.agent_id] = info
        for cmd in info.running:
            self.cmd_owner[cmd] = info.agent_id
        return old is None or old.info.epoch != info.epoch

    def lookup(self, identity: bytes) -> AgentRecord | None:
        aid = self.by_identity.get(identity)
        return self.agents.get(aid) if aid else None

    def touch(self, rec: AgentRecord, now: float | None = None) -> None:
        rec.last_seen = time.time() if now is None else now

    def heartbeat(
        self,
        rec: AgentRecord,
        running: list[str],
        free_slots: int,
        now: float | None = None,
        spool_free: int | None = None,
    ) -> None:
        self.touch(rec, now)
        rec.running = set(running)
        rec.free_slots = free_slots
        rec.spool_free = spool_free
        for cmd in running:
            self.cmd_owner[cmd] = rec.agent_id

    def remove(self, agent_id: str) -> AgentRecord | None:
        rec = self.agents.pop(agent_id, None)
        if rec is not None and self.by_identity.get(rec.identity) == agent_id:
            del self.by_identity[rec.identity]
        return rec

    def expire(self, master_hb: float, now: float | None = None) -> list[AgentRecord]:
        """Agents silent for MISSED_HEARTBEATS of their (or our, if longer) interval are dead."""
        now = time.time() if now is None else now
        if now <= self._next_expiry:
            return []
        dead, soonest = [], float("inf")
        for r in self.agents.values():
            deadline = r.last_seen + MISSED_HEARTBEATS * max(r.heartbeat_s, master_hb)
            if now > deadline:
                dead.append(r)
            else:
                soonest = min(soonest, deadline)
        self._next_expiry = soonest
        for r in dead:
            self.remove(r.agent_id)
        return dead

    def select(
        self, agent: str | None, pool: str | None, workspace: str | None, exclude: Set[str] = frozenset()
    ) -> AgentRecord:
        """Pick the agent for a dispatch: a named agent, else the least busy that fits."""
        if agent:
            rec = self.agents.get(agent)
            if rec is None:
                raise NoAgent(f"agent {agent!r} is not connected to this master (connected: {self._names()})")
            if workspace and workspace not in rec.info.workspaces:
                raise NoAgent(
                    f"agent {agent!r} has no workspace {workspace!r} (it has: {', '.join(rec.info.workspaces) or 'none'})"
                )
            short = rec.short_of_spool(self.min_spool_free)
            if short:
                raise NoAgent(short)
            return rec
        fits = [
            r
            for r in self.agents.values()
            if r.agent_id not in exclude
            and (pool is None or pool in r.info.pools)
            and (workspace is None or workspace in r.info.workspaces)
        ]
        roomy = [r for r in fits if not r.short_of_spool(self.min_spool_free)]
        if fits and not roomy:
            raise NoAgent("; ".join(r.short_of_spool(self.min_spool_free) for r in fits))
        fits = roomy
        if not fits:
            want = " and ".join(x for x in (pool and f"pool {pool!r}", workspace and f"workspace {workspace!r}") if x)
            raise NoAgent(f"no live agent with {want or 'any pool'} (connected: {self._names()})")
        return max(fits, key=lambda r: (r.free_slots, -len(r.running)))

    def known(self) -> list[AgentInfo]:
        """Every agent seen since start: the connected ones live, the others with alive=False."""
        gone = [
            msgspec.structs.replace(info, running=[], alive=False)
            for agent_id, info in self.seen.items()
            if agent_id not in self.agents
        ]
        return [r.snapshot() for r in self.agents.values()] + gone

    def assign(self, cmd_id: str, rec: AgentRecord) -> None:
        self.cmd_owner[cmd_id] = rec.agent_id
        rec.running.add(cmd_id)
        rec.free_slots = max(0, rec.free_slots - 1)

    def owner(self, cmd_id: str) -> str | None:
        return self.cmd_owner.get(cmd_id)

    def _names(self) -> str:
        return ", ".join(sorted(self.agents)) or "none"
