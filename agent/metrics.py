"""The agent's instruments: its slots, its spool, its commands' durations and its masters."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sized

from prometheus_client import Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from common import protocol as P
from common.metrics import PREFIX, SECONDS_BUCKETS, ProcessMetrics, command_outcome


class AgentMetrics(ProcessMetrics):
    def __init__(
        self,
        ident: str,
        slots: int,
        running: Sized,
        spool_free: Callable[[], int | None],
        masters_welcomed: Callable[[], int],
        bad_messages: Mapping[str, int],
    ) -> None:
        super().__init__("agent", ident)
        r = self.registry
        Gauge(PREFIX + "agent_slots", "Commands this agent runs at once at most (agent.slots).", registry=r).set(slots)
        Gauge(PREFIX + "agent_commands_running", "Commands running now.", registry=r).set_function(lambda: len(running))
        Gauge(
            PREFIX + "agent_spool_free_bytes",
            "Free space for the spool (no exec is accepted below the master's minimum).",
            registry=r,
        ).set_function(lambda: float(spool_free() or 0))
        Gauge(PREFIX + "agent_masters_connected", "Masters that welcomed this agent.", registry=r).set_function(
            masters_welcomed
        )
        self.collect(_BadMessages(bad_messages))
        self.command_seconds = Histogram(
            PREFIX + "agent_command_duration_seconds",
            "How long commands ran, from start to exit, by outcome (ok, failed, killed, timed_out, refused).",
            ["outcome"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )

    def done(self, status: P.CmdStatus) -> None:
        self.command_seconds.labels(command_outcome(status)).observe(max(0.0, status.duration or 0.0))


class _BadMessages(Collector):
    def __init__(self, counts: Mapping[str, int]) -> None:
        self.counts = counts

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            PREFIX + "agent_bad_messages", "Malformed messages from masters, by error code.", labels=["code"]
        )
        for code, n in dict(self.counts).items():
            family.add_metric([code], n)
        yield family

    def describe(self) -> Iterable[Metric]:
        return self.collect()
