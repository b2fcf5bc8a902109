"""The orchestrator process: events in, decisions persisted by the engine, commands out.

Edge-triggered for speed (cmd.* and agent.* events), level-triggered for truth (periodic
reconciliation asks the agents' spools about anything in flight that has gone quiet).

Group commit: everything one wake-up of the loop drains (events, requests, the masters'
replies, the tick) is one transaction of the store (``Store.batch``), each event, request or
reply a savepoint of it (a bad one is rolled back and logged alone), and every effect they
cause -- an Exec or Kill sent, a job event published, an answer to a client -- is held until
that transaction has committed (``Store.after_commit``). A wake-up drains at most BATCH_MAX
messages of each socket and for at most BATCH_BUDGET_S, so a flood cannot starve the tick, the
health clock or the lease check. Reads of the agents (query, fetch, listings) go at once: they
change nothing.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, cast

import msgspec
import zmq

from common import auth, ids, lifecycle, logs, metrics, roles, topics, zmqutil
from common import protocol as P
from common.config import Config
from common.publisher import Publisher
from common.sequence import GapDetector
from orchestrator.change_poll import ChangePoller
from orchestrator.channel import NO_ANSWER, MasterChannel
from orchestrator.engine import Effects, Engine, JobError
from orchestrator.known import Answers, KnownAgents, Listing
from orchestrator.lease import LeaseLost, for_store
from orchestrator.metrics import OrchestratorMetrics
from orchestrator.pipeline.transition import TERMINAL
from orchestrator.scheduler import Scheduler
from orchestrator.standby import Role
from orchestrator.store import IN_FLIGHT, OPEN, CmdState, Store
from orchestrator.trust import EarlyEvents, source_forged
from orchestrator.whole_output import OutputRead, Stamp, wanted

log = logs.get("orchestrator")

TICK_S = 0.05
# One wake-up's batch, per socket: at most this many messages, for at most this long.
BATCH_MAX = 1000
BATCH_BUDGET_S = 0.05
# Test only: SIGKILL the process at a point of the batch (SelfKill).
SELF_KILL_ENV = "P4BUS_TEST_SIGKILL"


class SelfKill:
    """A crash test's kill at an exact point: ``P4BUS_TEST_SIGKILL=POINT:N`` makes the
    orchestrator SIGKILL itself the Nth time it reaches POINT with effects held --
    ``mid_batch``: after a step was applied, before the batch commits; ``after_commit``: right
    after a batch committed, before any of its effects went out. Read once at start; unset (as
    in production) there is no SelfKill at all (tests/e2e/test_group_commit.py)."""

    POINTS = ("mid_batch", "after_commit")

    def __init__(self, point: str, n: int) -> None:
        if point not in self.POINTS or n < 1:
            raise ValueError(f"{SELF_KILL_ENV}={point}:{n}: want one of {self.POINTS} and a count >= 1")
        self.point, self.n, self.seen = point, n, 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SelfKill | None:
        value = environ.get(SELF_KILL_ENV)
        if not value:
            return None
        point, _, n = value.partition(":")
        return cls(point, int(n or 1))

    def at(self, point: str, held: int) -> None:
        if point != self.point or not held:
            return
        self.seen += 1
        if self.seen == self.n:
            log.warning("test.sigkill_self", at=point, held_effects=held)
            os.kill(os.getpid(), signal.SIGKILL)


class Orchestrator:
    def __init__(self, cfg: Config, ctx: zmq.Context | None = None) -> None:
        self.cfg = cfg
        self.ctx = ctx or zmq.Context.instance()
        store_path = cfg.orchestrator.store or str(Path(cfg.state_path) / "jobs.db")
        self.store = Store(store_path, cfg.orchestrator.store_password_file)
        self.engine = Engine(self.store, cfg.orchestrator)
        self.clock = self.engine.clock
        security = self.security = auth.for_service(cfg, "orchestrator", "orchestrator")
        self.known = KnownAgents()
        self.listing: Listing | None = None  # agents asked of every master for waiting submits
        self.listed: Answers = []  # the last listing's answers
        # Every request to the masters, none waited for (orchestrator/channel.py).
        self.channel = MasterChannel(self.ctx, cfg.client_masters(), security)
        self.reading: dict[str, OutputRead] = {}  # cmd_id -> its whole output being read
        self.ask_again: set[str] = set()  # agents to reconcile again when their query is answered
        self.api = zmqutil.router(self.ctx, cfg.endpoint("orchestrator_api"), security, roles.ORCHESTRATOR_API)
        self.api_guard = auth.Guard(security, roles.ORCHESTRATOR_API)
        self.scheduler = Scheduler(self.store, self.engine, ChangePoller(cfg.client_masters(), security, self.ctx))
        self.id = f"orchestrator-{ids.host_id()}"
        # Active or standby (orchestrator/standby.py): a standby is on the bus only by its API.
        self.role = Role(for_store(self.store), self.id)
        self.sub: zmq.Socket  # join_bus()
        self.events: Publisher
        self.gaps = GapDetector(keep_holes=len(cfg.bus_brokers()) > 1)  # a copy per broker
        self.early = EarlyEvents()
        self._insecure_logged = False
        self._refused: dict[tuple[str, str], int] = {}  # (counter, publisher) -> dropped, for the log's rate
        self.unreachable_since: dict[str, float] = {}
        self.counters = {
            "events": 0,
            "bad_events": 0,
            # Dropped: an agent's event published under another key than the agent's own.
            "forged_events": 0,
            # Dropped: a command's event from an agent other than the one it was sent to.
            "wrong_agent_events": 0,
            # Dropped as seen before (seq not above the last one of its publisher, source and kind).
            "duplicate_events": 0,
            "requests": 0,
            "bad_requests": 0,
            "dispatches": 0,
            "reconciles": 0,
        }
        self._last_sweep = 0.0
        self._last_prune = 0.0
        self.metrics = OrchestratorMetrics(self.id, lambda: self.counters)
        self.metrics.attach(self.store, self.channel)
        self.commits = 0  # the store's commits so far: a job is published once per commit
        self._published: dict[str, int] = {}  # job id -> self.commits when last published
        self.self_kill = SelfKill.from_env(os.environ)
        observe = self.store.on_commit
        self.store.on_commit = partial(self._committed, observe)

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event) -> None:
        log.info(
            "orchestrator.ready",
            api=self.cfg.endpoint("orchestrator_api"),
            store=str(self.store.path),
            masters=self.cfg.client_masters(),
        )
        active = self.role.await_lease(self.api, self.on_api_frames, stop, tick=self.metrics.health.tick)
        if active:
            self.join_bus()
            with self.store.batch():
                self.recover()
            self.metrics.active.set(1)
        poller = zmq.Poller()
        if active:
            poller.register(self.sub, zmq.POLLIN)
        poller.register(self.api, zmq.POLLIN)
        for s in self.channel.socks:
            poller.register(s, zmq.POLLIN)
        while active and not stop.is_set():
            self.role.check()
            ready = dict(poller.poll(int(TICK_S * 1000)))
            with self.store.batch():  # one commit for the wake-up; its effects after it
                self.wake_up(ready)
            self.metrics.health.tick()
        self.api.close(linger=zmqutil.LINGER_MS)
        if active:
            self.sub.close(linger=zmqutil.LINGER_MS)
            self.events.close(linger=zmqutil.LINGER_MS)  # stops its beacon thread before the socket closes
        self.channel.close()
        self.scheduler.close()
        self.store.close()

    def wake_up(self, ready: Mapping[zmq.Socket, int]) -> None:
        """What one wake-up does, inside its batch."""
        if self.sub in ready:
            self._drain(self.sub, self.on_event_frames)
        if self.api in ready:
            self._drain(self.api, self.on_api_frames, copy=False)
        for s in self.channel.socks:
            if s in ready:
                self.channel.drain(s)  # as many as are in flight: each runs as a step (_ask)
        self.channel.expire()
        self.tick(self.clock())

    def _drain(self, sock: zmq.Socket, handler: Callable[[list[Any]], None], copy: bool = True) -> None:
        """Each message waiting on ``sock`` as a step, up to BATCH_MAX or BATCH_BUDGET_S."""
        until = time.monotonic() + BATCH_BUDGET_S
        for _ in range(BATCH_MAX):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                return
            self.step(handler, frames)
            if time.monotonic() >= until:
                return

    def step(self, handler: Callable[..., None], *args: Any) -> None:
        """One event, request or reply: applied in a savepoint of the batch, so that a bug in
        it rolls back (and logs) it alone, with its held effects, and not the rest."""
        try:
            with self.store.step():
                handler(*args)
        except Exception:
            log.exception("orchestrator.step_failed", step=getattr(handler, "__name__", repr(handler)))
        if self.self_kill is not None:
            self.self_kill.at("mid_batch", self.store.held)

    def _committed(self, observe: Callable[[float], None], seconds: float) -> None:
        """The store committed (metrics observe how long it took); its effects go out next."""
        observe(seconds)
        self.commits += 1
        if self.self_kill is not None:
            self.self_kill.at("after_commit", self.store.held)

    def _ask(
        self, msg: P.Request[Any], on_reply: Callable[[Any], None], key: Any = None, master: int | None = None
    ) -> None:
        """A request to the masters whose reply is handled as a step of the batch it comes in."""
        self.channel.request(msg, partial(self.step, on_reply), key=key, master=master)

    def join_bus(self) -> None:
        """Subscribe before recovering (nothing that happens after recovery's questions is missed)
        and publish under a new epoch, as after a restart."""
        self.sub = zmqutil.sub(self.ctx, self.cfg.broker_xpubs(), self.security, [topics.CMD + ".", topics.AGENT + "."])
        self.events = Publisher(
            zmqutil.pub(self.ctx, self.cfg.broker_xsubs(), self.security),
            self.id,
            ids.new_epoch(),
            self.cfg.orchestrator.beacon_s,
        )

    def recover(self) -> None:
        """Start-up: pick up where the store says we were."""
        self.execute(self.engine.schedule())
        for agent in sorted(self.store.agents_in_flight()):
            self.reconcile(agent)
        self.dispatch_due(self.clock())

    def tick(self, now: float) -> None:
        self.dispatch_due(now)
        if now - self._last_sweep >= 1.0:
            self._last_sweep = now
            agents = self.store.agents_in_flight(quiet_since=now - self.cfg.orchestrator.reconcile_after_s)
            agents |= set(self.unreachable_since)
            for agent in sorted(agents):
                self.reconcile(agent)
            self.execute(self.engine.auto_recheck(now))
            self.execute(self.engine.schedule())
            self.execute(self.scheduler.tick(now))
            if self.early.held:
                pending = {c.cmd_id for c in self.store.open_commands() if c.state == CmdState.PENDING}
                self.counters["wrong_agent_events"] += self.early.forget(pending)
            self.metrics.counts(self.store.count_by_state(), (c.state for c in self.store.open_commands()))
        if now - self._last_prune >= self.cfg.orchestrator.prune_interval_s:
            # A duplicate event arrives within seconds or minutes (replays, resends); a day of
            # handled-event records is plenty to recognise one.
            self._last_prune = now
            self.store.prune_events(now - 86400)
            self.prune_jobs(now)

    def prune_jobs(self, now: float) -> None:
        retention = self.cfg.orchestrator.job_retention_s
        if retention > 0:
            pruned = self.store.prune_jobs(now - retention)
            if pruned:
                log.info("jobs.pruned", count=len(pruned), finished_before=now - retention)

    # ------------------------------------------------------------------ effects

    def execute(self, eff: Effects) -> None:
        """Carry out what a step decided, once it is committed (held until then)."""
        if eff.kill or eff.dispatch or eff.publish:
            self.store.after_commit(partial(self._carry_out, eff))

    def _carry_out(self, eff: Effects) -> None:
        # The next command first: job events are for people and can wait a millisecond.
        for cmd_id, agent in eff.kill:
            msg = P.Kill(req_id=ids.new_id("r"), cmd_id=cmd_id, agent=agent or None)
            self._ask(msg, partial(self.on_killed, cmd_id, agent))
        for cmd_id in eff.dispatch:
            self._send_exec(cmd_id)
        for job_id in eff.publish:
            self._publish_now(job_id)

    def on_killed(self, cmd_id: str, agent: str, reply: P.KillReply | P.ErrorReply) -> None:
        # Nothing waits for a kill: its command's DONE (or reconciliation) ends it.
        if isinstance(reply, P.ErrorReply):
            log.warning("kill.failed", cmd_id=cmd_id, agent=agent, error=reply.message, code=reply.code)

    def dispatch_due(self, now: float) -> None:
        for cmd in self.engine.due_pending(now):
            self.dispatch(cmd.cmd_id)

    def dispatch(self, cmd_id: str) -> None:
        """Send a PENDING command's Exec once what made it so is committed."""
        if not self.channel.busy(("exec", cmd_id)):
            self.store.after_commit(partial(self._send_exec, cmd_id))

    def _send_exec(self, cmd_id: str) -> None:
        """The Exec of a command still PENDING; the reply is handled when it arrives."""
        if self.channel.busy(("exec", cmd_id)):
            return
        found = self.engine.exec_of(cmd_id)
        if found is None:
            return
        self.counters["dispatches"] += 1
        _cmd, route, spec = found
        msg = P.Exec(req_id=ids.new_id("r"), cmd_id=cmd_id, spec=spec, **route)
        self._ask(msg, partial(self.on_dispatch_reply, cmd_id), key=("exec", cmd_id))

    def on_dispatch_reply(self, cmd_id: str, reply: P.ExecReply | P.ErrorReply) -> None:
        if isinstance(reply, P.ExecReply):
            self.execute(self.engine.on_dispatched(cmd_id, reply))
            # Events that came before this reply, now that it names the command's agent.
            mine, others = self.early.release(cmd_id, reply.agent)
            self.counters["wrong_agent_events"] += others
            for got in mine:
                self.on_command_event(got)
        else:
            # Nobody answering (the Exec may have reached an agent) is not a refusal: it does
            # not count towards dispatch_refused_deadline_s.
            newly_waiting = self.engine.newly_waiting(cmd_id, reply.message)
            refused = reply.code not in NO_ANSWER
            self.execute(self.engine.on_dispatch_refused(cmd_id, reply.message, refused=refused))
            if newly_waiting:
                self.publish(newly_waiting)

    def reconcile(self, agent: str) -> None:
        """Ask the agent's spool about every command we believe is in flight there; the answer
        is handled in on_statuses. One query per agent is in flight at a time: asked again
        meanwhile (a hole in its events, a sweep), the agent is asked once more after the
        answer, which may predate what prompted the new question."""
        if self.channel.busy(("query", agent)):
            self.ask_again.add(agent)
            return
        cmds = self.store.in_flight_on(agent)
        if not cmds:
            self.unreachable_since.pop(agent, None)
            self.metrics.reconciled(agent)
            return
        self.counters["reconciles"] += 1
        msg = P.Query(req_id=ids.new_id("r"), cmd_ids=[c.cmd_id for c in cmds], agent=agent)
        self._ask(msg, partial(self.on_statuses, agent), key=("query", agent))

    def on_statuses(self, agent: str, reply: P.QueryReply | P.ErrorReply) -> None:
        """The spool's answer to a reconciliation, or no master reaching the agent.

        An agent that no master can reach for lost_after_s has its commands UNKNOWN: nothing
        runs them again while it may still be running them. Its spool answers when it is back;
        only a stage's unknown deadline gives up on it (engine.unreachable).
        """
        self._on_statuses(agent, reply)
        if agent in self.ask_again:
            self.ask_again.discard(agent)
            self.reconcile(agent)

    def _on_statuses(self, agent: str, reply: P.QueryReply | P.ErrorReply) -> None:
        if isinstance(reply, P.ErrorReply):
            now = self.clock()
            since = self.unreachable_since.setdefault(agent, now)
            if now - since >= self.cfg.orchestrator.lost_after_s:
                cmds = self.store.in_flight_on(agent)
                if any(c.state != CmdState.UNKNOWN for c in cmds):
                    log.warning(
                        "agent.unreachable", agent=agent, commands=[c.cmd_id for c in cmds], error=reply.message
                    )
                self.execute(self.engine.unreachable(agent, since))
            return
        self.unreachable_since.pop(agent, None)
        self.metrics.reconciled(agent)
        for st in reply.statuses:
            if st.state == "done":
                self.done(st)
            elif st.state == "running":
                self.execute(self.engine.still_running(st.cmd_id))
            elif self._in_flight(st.cmd_id):
                # It accepted this command (we saw its reply or its STARTED event), yet its spool
                # does not know it: the record is gone with whatever ran. Sending it again could
                # run it twice, so it is LOST and the stage's policy decides.
                log.warning("cmd.unknown_to_agent", cmd_id=st.cmd_id, agent=agent)
                self.execute(self.engine.on_done(st.cmd_id, st, lost=True))

    def _in_flight(self, cmd_id: str) -> bool:
        # Still so when the answer came: the query was sent a moment ago.
        cmd = self.store.command(cmd_id)
        return cmd is not None and cmd.state in IN_FLIGHT

    def _open(self, cmd_id: str) -> bool:
        cmd = self.store.command(cmd_id)
        return cmd is not None and cmd.state in OPEN

    def done(self, status: P.CmdStatus, stamp: Stamp | None = None) -> None:
        """A command's result, from its DONE event or its spool; applied once its whole output
        is in when the capture was cut (whole_output.py)."""
        read = self.reading.get(status.cmd_id)
        if read is not None:
            read.adopt(stamp)  # the read under way applies the result, with this event
            return
        self.metrics.command_done(status)
        if wanted(status) and self._open(status.cmd_id):
            self.reading[status.cmd_id] = read = OutputRead(status, stamp)
            self._read_next(read)
            return
        self.execute(self.engine.on_done(status.cmd_id, status, stamp=stamp))

    def _read_next(self, read: OutputRead) -> None:
        chunk = read.next()
        if chunk is None:
            self._read_done(read, read.result())
            return
        stream, offset, size = chunk
        status = read.status
        msg = P.Fetch(
            req_id=ids.new_id("r"),
            cmd_id=status.cmd_id,
            stream=stream,
            offset=offset,
            size=size,
            agent=status.agent or None,
        )
        self._ask(msg, partial(self.on_chunk, read))

    def on_chunk(self, read: OutputRead, reply: P.FetchReply | P.ErrorReply) -> None:
        try:
            if isinstance(reply, P.ErrorReply):
                raise ValueError(reply.message)
            read.take(reply)
        except ValueError as exc:
            log.warning("fetch.failed", cmd_id=read.status.cmd_id, error=str(exc))
            self._read_done(read, read.status)  # the cut capture, as the event had it
            return
        self._read_next(read)

    def _read_done(self, read: OutputRead, status: P.CmdStatus) -> None:
        del self.reading[status.cmd_id]
        if not status.truncated:
            log.info("output.read", cmd_id=status.cmd_id, bytes=len(status.stdout) + len(status.stderr))
        self.execute(self.engine.on_done(status.cmd_id, status, stamp=read.stamp))

    # ------------------------------------------------------------------ events

    def on_event_frames(self, frames: list[bytes]) -> None:
        try:
            got = P.decode_delivered(frames)
        except P.ProtocolError:
            self.counters["bad_events"] += 1
            return
        self.counters["events"] += 1
        ev, publisher = got
        if not publisher:
            self._note_insecure()
        elif source_forged(ev, publisher):
            self._refuse("forged_events", got)
            return
        kind = topics.kind(ev.topic)
        # Keyed on the publisher: a forged seq only ever counts against its own key.
        is_new, gap, restarted = self.gaps.observe(ev.source, ev.topic, ev.epoch, ev.seq, publisher)
        if not is_new:
            self.counters["duplicate_events"] += 1
            return
        if isinstance(ev, P.CmdDone | P.CmdStarted):
            self.on_command_event(got)
        elif isinstance(ev, P.AgentUp):
            self.known.saw([ev.agent])
            self.reconcile(ev.agent.agent_id)
        elif isinstance(ev, P.AgentLost):
            # One master losing it is not proof (another may still reach it, or it may be
            # back in a moment): ask through all, and keep asking until lost_after_s.
            self.reconcile(ev.agent_id)
        if (gap or restarted) and kind == topics.CMD:
            # We missed cmd events from this agent: its spool knows what they said.
            self.metrics.hole(ev.source)
            self.reconcile(ev.source)

    def on_command_event(self, got: P.Delivered) -> None:
        """A command's cmd_started or cmd_done, acted on only if it comes from the agent the
        command was sent to (held until the dispatch reply says which one that is)."""
        ev = got.event
        assert isinstance(ev, P.CmdDone | P.CmdStarted)
        if got.publisher:
            cmd = self.store.command(ev.cmd_id)
            if cmd is None or cmd.state not in OPEN:
                return  # not one of ours (p4bus run), or finished: nothing to act on
            if cmd.state == CmdState.PENDING and not cmd.agent:
                if not self.early.hold(ev.cmd_id, got):
                    self._refuse("wrong_agent_events", got)
                return
            if cmd.agent != got.publisher:
                self._refuse("wrong_agent_events", got, sent_to=cmd.agent)
                return
        if isinstance(ev, P.CmdDone):
            self.done(ev.status, stamp=(ev.source, ev.epoch, topics.kind(ev.topic), ev.seq))
        else:
            self.execute(self.engine.on_started(ev.cmd_id, ev.agent, ev.ts))

    def _refuse(self, counter: str, got: P.Delivered, **why: str) -> None:
        """Count a dropped event; log the first of each key, then one line per thousand, so a
        forger cannot flood the log."""
        self.counters[counter] += 1
        n = self._refused[(counter, got.publisher)] = self._refused.get((counter, got.publisher), 0) + 1
        if n == 1 or n % 1000 == 0:
            log.warning(
                f"event.{counter}",
                key=got.publisher,
                source=got.event.source,
                topic=got.event.topic,
                dropped_from_this_key=n,
                **why,
            )

    def _note_insecure(self) -> None:
        if not self._insecure_logged:
            self._insecure_logged = True
            log.warning(
                "events.unauthenticated",
                detail="the broker names no publisher (insecure bus): event sources are taken on trust",
            )

    def publish(self, job_id: str) -> None:
        """A job event for ``job_id``, once what changed it is committed."""
        self.store.after_commit(partial(self._publish_now, job_id))

    def _publish_now(self, job_id: str) -> None:
        # A job is published once per commit: a second time would say the same (it is read
        # from the store, as committed).
        if self._published.get(job_id) == self.commits:
            return
        self._published[job_id] = self.commits
        try:
            view = self.engine.summary(job_id)
        except JobError:
            return
        if view.state in TERMINAL:
            self._published.pop(job_id, None)  # keeps the map to the jobs still moving
        self.metrics.job_changed(view)
        detail = {
            "reason": view.reason,
            "key_line": view.key_line,
            "conflicts": view.conflicts,
            "change": view.change,
            "submitted_change": view.submitted_change,
            "agent": view.agent,
            "waiting_for": view.waiting_for,
            "workspace": view.workspace,  # for the notifier's per-workspace rules
        }
        self.events.publish(
            P.JobChanged,
            topics.job(job_id),
            job_id=job_id,
            state=view.state,
            stage=view.stage,
            detail={k: v for k, v in detail.items() if v not in (None, "", [])},
        )

    # ------------------------------------------------------------------ API

    def on_api_frames(self, frames: list[zmq.Frame]) -> None:
        self.counters["requests"] += 1
        got = zmqutil.routed(self.api, frames, P.OrchestratorRequest, self.api_guard)
        if got is None:
            self.counters["bad_requests"] += 1
            return
        # routed decoded the frame as an OrchestratorRequest, or answered it and gave None.
        client, msg = got.identity, cast(P.OrchestratorRequest, got.msg)
        if isinstance(msg, P.Submit) and self.route_unchecked(client, msg, got.user):
            return  # answered when the masters have said which agents they have seen
        self.answer(client, msg, got.user)

    def answer(self, client: bytes, msg: P.OrchestratorRequest, user: str) -> None:
        eff = Effects()
        try:
            with self.store.step():  # a refused request changes nothing, whatever it had written
                reply, eff = self.handle(msg, user)
        except JobError as exc:
            reply = P.ErrorReply(req_id=msg.req_id, code=exc.code, message=str(exc))
        except Exception as exc:  # a bug must not take the orchestrator down with it
            log.exception("api.internal_error", request=type(msg).__name__)
            reply = P.ErrorReply(req_id=msg.req_id, code="internal", message=f"internal error: {exc}")
        # Both wait for the commit: answer the person first, then act on it.
        self._reply(client, reply)
        self.execute(eff)

    def handle(self, msg: P.OrchestratorRequest, user: str = "") -> tuple[P.Base, Effects]:
        e = self.engine
        self.role.refuse_writes(msg)
        match msg:
            case P.Submit():
                # Who submits is the orchestrator's finding, not the request's word (_submitter).
                msg = msgspec.structs.replace(msg, by=self._submitter(user, msg.by))
                self.refuse_unknown_route(self.scheduler.resolve(msg))
                job_id, eff = self.scheduler.submit(msg)
                return P.JobReply(req_id=msg.req_id, job=e.view(job_id)), eff
            case P.GetJob():
                return P.JobReply(req_id=msg.req_id, job=e.view(msg.job_id)), Effects()
            case P.ListJobs():
                return P.JobList(req_id=msg.req_id, jobs=e.views(msg.all, msg.limit)), Effects()
            case P.Ping():
                return P.Pong(req_id=msg.req_id, source=self.id, role=self.role.name), Effects()
            case P.Stats():
                stats = P.StatsReply(
                    req_id=msg.req_id, source=self.id, counters=dict(self.counters), role=self.role.name
                )
                return stats, Effects()
            case P.Resume():
                eff = e.resume(msg.job_id)
            case P.Cancel():
                eff = e.cancel(msg.job_id, msg.revert)
            case P.RetryJob():
                eff = e.retry(msg.job_id, msg.from_stage)
            case P.CleanupJob():
                eff = e.cleanup(msg.job_id)
            case P.Approve():
                eff = e.approve(msg.job_id)
            case _:
                return self.scheduler.handle(msg), Effects()
        return P.JobReply(req_id=msg.req_id, job=e.view(msg.job_id)), eff

    def refuse_unknown_route(self, msg: P.Submit) -> None:
        """A job for an agent or pool that no master has ever seen would wait forever: refuse it.
        A name not learned from events was asked of the masters before (route_unchecked)."""
        agent, pool = self.engine.submit_route(msg)
        why = self.known.refusal(agent, pool, lambda: self.listed)
        if why:
            raise JobError(why)

    def route_unchecked(self, client: bytes, msg: P.Submit, user: str) -> bool:
        """Whether the submit names an agent or pool not learned yet: then every master is asked
        which agents it has seen (they remember the gone ones too) and the submit is answered
        when they all have, or have timed out (the loop goes on meanwhile)."""
        try:
            agent, pool = self.engine.submit_route(self.scheduler.resolve(msg))
        except JobError:
            return False  # handle() refuses it with the reason
        if not self.known.unknown(agent, pool):
            return False
        if self.listing is None:
            self.listing = Listing(len(self.channel.socks))
            for master in range(self.listing.masters):
                ask = P.ListAgents(req_id=ids.new_id("r"), include_gone=True)
                self._ask(ask, partial(self.on_listed, master), master=master)
        self.listing.waiting.append(partial(self.answer, client, msg, user))
        return True

    def on_listed(self, master: int, reply: P.AgentList | P.ErrorReply) -> None:
        listing = self.listing
        assert listing is not None  # one round at a time, each master answered once
        if not listing.answer(master, reply.agents if isinstance(reply, P.AgentList) else None):
            return
        self.listing = None
        self.listed = listing.result()
        for infos in self.listed:
            self.known.saw(infos or [])
        for resume in listing.waiting:
            resume()

    def _submitter(self, user: str, claimed: str) -> str:
        """Who submits: the requesting key's name, or the person the web's key names (the web
        authenticated them); on an insecure bus, whoever the request names."""
        if not user:
            return claimed
        if claimed and self.api_guard.security is not None and self.api_guard.security.role_of(user) == roles.WEB:
            return claimed
        return user

    def _reply(self, client: bytes, msg: P.Base) -> None:
        """Answer once what the request wrote (or read, of this batch's writes) is committed."""
        self.store.after_commit(partial(self._send_reply, client, msg))

    def _send_reply(self, client: bytes, msg: P.Base) -> None:
        try:
            self.api.send_multipart([client, P.encode(msg)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client went away


def main(cfg: Config) -> None:
    try:
        orch = Orchestrator(cfg)
    except JobError as exc:
        raise SystemExit(f"p4bus orchestrator: {exc}") from None
    metrics.serve(cfg, "orchestrator", orch.metrics)
    try:
        orch.run(lifecycle.stop_on_signals())
    except LeaseLost as exc:
        # Not one more step: a standby has the lease (or will have it) and acts from the store.
        log.error("orchestrator.lease_lost", error=str(exc))
        raise SystemExit(f"p4bus orchestrator: {exc}; exiting (a standby takes over)") from None
