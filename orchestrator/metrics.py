"""The orchestrator's instruments: jobs by state, stage and command durations, dispatch round
trips and failovers, sequence holes, store commits, and its own counters."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import Counter, Gauge, Histogram

from common import protocol as P
from common.metrics import PREFIX, SECONDS_BUCKETS, CountersCollector, ProcessMetrics, command_outcome
from orchestrator.channel import MasterChannel
from orchestrator.pipeline.transition import TERMINAL, JobState
from orchestrator.store import CmdState, Store

COUNTERS = {
    "events": "Events received from the broker (commands, agents).",
    "bad_events": "Events that could not be decoded, dropped.",
    "forged_events": "Agent events published under another key than the agent's own, dropped.",
    "wrong_agent_events": "Command events from an agent other than the one the command was sent to, dropped.",
    "duplicate_events": "Events seen before (replays, resends), dropped.",
    "requests": "API requests received.",
    "bad_requests": "API requests that could not be decoded or were not allowed.",
    "dispatches": "Exec requests sent to masters.",
    "reconciles": "Reconciliations: an agent's spool asked about the commands in flight there.",
}
# Command results remembered to observe each command's duration once (a result comes again by
# reconciliation or a replayed event).
SEEN_MAX = 10_000
OPEN_CMD_STATES = (CmdState.PENDING, CmdState.DISPATCHED, CmdState.RUNNING, CmdState.UNKNOWN)


class OrchestratorMetrics(ProcessMetrics):
    def __init__(self, ident: str, counters: Callable[[], Mapping[str, int]]) -> None:
        super().__init__("orchestrator", ident)
        r = self.registry
        self.collect(CountersCollector(PREFIX + "orchestrator_", counters, COUNTERS))
        self.active = Gauge(
            PREFIX + "orchestrator_active",
            "1 while this orchestrator is the active one (runs jobs), 0 on standby.",
            registry=r,
        )
        self.jobs = Gauge(PREFIX + "orchestrator_jobs", "Jobs in the store, by state.", ["state"], registry=r)
        self.commands = Gauge(
            PREFIX + "orchestrator_commands_in_flight",
            "Commands not finished yet, by state (PENDING: not accepted by an agent yet).",
            ["state"],
            registry=r,
        )
        self.transitions = Counter(
            PREFIX + "orchestrator_job_transitions",
            "Job changes published, by the state entered.",
            ["state"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            PREFIX + "orchestrator_stage_duration_seconds",
            "How long jobs spent in each stage, waits and retries included.",
            ["stage"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.command_seconds = Histogram(
            PREFIX + "orchestrator_command_duration_seconds",
            "How long commands ran on their agents, by outcome (ok, failed, killed, timed_out, refused).",
            ["outcome"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.dispatch_seconds = Histogram(
            PREFIX + "orchestrator_dispatch_round_trip_seconds",
            "From an Exec sent to its reply (accepted or refused) through the masters.",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.failovers = Counter(
            PREFIX + "orchestrator_master_failovers",
            "Exec requests sent again through the next master, by the master that did not answer.",
            ["master"],
            registry=r,
        )
        self.commit_seconds = Histogram(
            PREFIX + "orchestrator_store_commit_seconds",
            "Store transaction commit latency.",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.holes = Counter(
            PREFIX + "orchestrator_seq_holes",
            "Holes in an agent's command events (missed events or a restarted agent) detected.",
            registry=r,
        )
        self.holes_repaired = Counter(
            PREFIX + "orchestrator_seq_holes_repaired",
            "Holes repaired: the agent's spool answered for every command in flight there.",
            registry=r,
        )
        self._holes_open: set[str] = set()
        Gauge(PREFIX + "orchestrator_seq_holes_open", "Agents with a hole not repaired yet.", registry=r).set_function(
            lambda: len(self._holes_open)
        )
        for state in JobState:
            self.jobs.labels(state.value)
            self.transitions.labels(state.value)
        self._stages: dict[str, tuple[str, float]] = {}  # job_id -> (stage, entered at)
        self._seen: OrderedDict[str, None] = OrderedDict()

    def attach(self, store: Store, channel: MasterChannel) -> None:
        """Observe the store's commits and the channel's dispatch round trips and failovers."""
        store.on_commit = self.commit_seconds.observe
        channel.on_round_trip = self.dispatch_seconds.observe
        channel.on_failover = lambda master: self.failovers.labels(master).inc()

    def counts(self, jobs: Mapping[str, int], open_commands: Iterable[CmdState]) -> None:
        """The store's counts (from the loop's once-a-second sweep)."""
        for state in JobState:
            self.jobs.labels(state.value).set(jobs.get(state.value, 0))
        in_flight = dict.fromkeys(OPEN_CMD_STATES, 0)
        for cmd_state in open_commands:
            in_flight[cmd_state] = in_flight.get(cmd_state, 0) + 1
        for cmd_state, n in in_flight.items():
            self.commands.labels(cmd_state.value).set(n)

    def job_changed(self, view: P.JobView, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.transitions.labels(view.state).inc()
        was = self._stages.get(view.job_id)
        finished = view.state in TERMINAL
        if was is not None and (was[0] != view.stage or finished):
            self.stage_seconds.labels(was[0]).observe(now - was[1])
        if finished:
            self._stages.pop(view.job_id, None)
        elif was is None or was[0] != view.stage:
            self._stages[view.job_id] = (view.stage, now)

    def command_done(self, status: P.CmdStatus) -> None:
        if status.cmd_id in self._seen:
            return
        self._seen[status.cmd_id] = None
        if len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)
        self.command_seconds.labels(command_outcome(status)).observe(max(0.0, status.duration))

    def hole(self, agent: str) -> None:
        self.holes.inc()
        self._holes_open.add(agent)

    def reconciled(self, agent: str) -> None:
        """The agent's spool answered (or nothing was in flight there): a hole of it is repaired."""
        if agent in self._holes_open:
            self._holes_open.discard(agent)
            self.holes_repaired.inc()
