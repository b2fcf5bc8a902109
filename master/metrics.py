"""The master's instruments: its message counts, its agents, their heartbeats and spools."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common import protocol as P
from common.metrics import PREFIX, CountersCollector, ProcessMetrics
from master.registry import AgentRecord

COUNTERS = {
    "agent_msgs": "Messages received from agents.",
    "client_msgs": "Requests received from clients (orchestrator, CLI, web).",
    "bad_frames": "Malformed or unauthorized messages, dropped.",
    "dispatched": "Exec requests an agent accepted.",
    "rejected": "Exec requests no agent could take (none fits, all busy).",
    "agents_lost": "Agents declared lost after missed heartbeats.",
    "unreachable": "Messages that could not be sent (the peer was gone or its queue full).",
    "forbidden": "HELLOs refused: a key speaking for another agent.",
}
# A heartbeat is late when the agent was silent for more than this many of its intervals.
LATE_FACTOR = 1.5


class MasterMetrics(ProcessMetrics):
    def __init__(
        self, ident: str, counters: Callable[[], Mapping[str, int]], agents: Mapping[str, AgentRecord]
    ) -> None:
        super().__init__("master", ident)
        self.collect(CountersCollector(PREFIX + "master_", counters, COUNTERS))
        self.collect(_AgentsCollector(agents))
        self.heartbeats_late = Counter(
            PREFIX + "master_heartbeats_late",
            f"Heartbeats that came more than {LATE_FACTOR}x the agent's interval after it was last heard.",
            registry=self.registry,
        )

    def heard(self, rec: AgentRecord, msg: P.Base, now: float) -> None:
        """Called with every message of a known agent, before its record is touched."""
        if isinstance(msg, P.Heartbeat) and now - rec.last_seen > LATE_FACTOR * rec.heartbeat_s:
            self.heartbeats_late.inc()


class _AgentsCollector(Collector):
    """The live registry at scrape time (a copy: the master's loop changes it meanwhile)."""

    def __init__(self, agents: Mapping[str, AgentRecord]) -> None:
        self.agents = agents

    def collect(self) -> Iterable[Metric]:
        records = list(dict(self.agents).values())
        yield GaugeMetricFamily(
            PREFIX + "master_agents_alive", "Agents connected and heartbeating.", value=len(records)
        )
        running = GaugeMetricFamily(
            PREFIX + "master_commands_running", "Commands running on each agent, as it last reported.", labels=["agent"]
        )
        free = GaugeMetricFamily(
            PREFIX + "master_agent_spool_free_bytes",
            "Free space for each agent's spool, as it last reported.",
            labels=["agent"],
        )
        for rec in records:
            running.add_metric([rec.agent_id], len(rec.running))
            if rec.spool_free is not None:
                free.add_metric([rec.agent_id], rec.spool_free)
        yield running
        yield free

    def describe(self) -> Iterable[Metric]:
        return self.collect()
