"""The orchestrator process: events in, decisions persisted by the engine, commands out.

Edge-triggered for speed (cmd.* and agent.* events), level-triggered for truth (periodic
reconciliation asks the agents' spools about anything in flight that has gone quiet).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import cast

import msgspec
import zmq

from common import auth, ids, lifecycle, logs, roles, topics, zmqutil
from common import protocol as P
from common.config import Config
from common.publisher import Publisher
from common.rpc import MasterClient, RequestError
from common.sequence import GapDetector
from orchestrator.change_poll import ChangePoller
from orchestrator.dispatcher import Dispatcher
from orchestrator.engine import Effects, Engine, JobError
from orchestrator.known import KnownAgents
from orchestrator.lease import LeaseLost, for_store
from orchestrator.scheduler import Scheduler
from orchestrator.standby import Role
from orchestrator.store import OPEN, CmdState, Store
from orchestrator.trust import EarlyEvents, source_forged

log = logs.get("orchestrator")

TICK_S = 0.05
# Dispatch replies that say nobody answered (the Exec may have reached an agent), not that
# the command was refused: they do not count towards dispatch_refused_deadline_s.
NO_ANSWER = ("timeout", "agent_unreachable")
# Up to this much output is fetched whole from the spool for interpreters when a capture was cut.
FULL_OUTPUT_MAX = 32 << 20


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
        self.masters = MasterClient(cfg.client_masters(), security, timeout=3.0, ctx=self.ctx)
        self.dispatcher = Dispatcher(self.ctx, cfg.client_masters(), security, timeout_s=5.0)
        self.api = zmqutil.router(self.ctx, cfg.endpoint("orchestrator_api"), security, roles.ORCHESTRATOR_API)
        self.api_guard = auth.Guard(security, roles.ORCHESTRATOR_API)
        self.scheduler = Scheduler(self.store, self.engine, ChangePoller(cfg.client_masters(), security, self.ctx))
        self.id = f"orchestrator-{ids.host_id()}"
        # Active or standby (orchestrator/standby.py): a standby is on the bus only by its API.
        self.role = Role(for_store(self.store), self.id)
        self.sub: zmq.Socket  # join_bus()
        self.events: Publisher
        self.gaps = GapDetector()
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

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event) -> None:
        log.info(
            "orchestrator.ready",
            api=self.cfg.endpoint("orchestrator_api"),
            store=str(self.store.path),
            masters=self.cfg.client_masters(),
        )
        active = self.role.await_lease(self.api, self.on_api_frames, stop)
        if active:
            self.join_bus()
            self.recover()
        poller = zmq.Poller()
        if active:
            poller.register(self.sub, zmq.POLLIN)
        poller.register(self.api, zmq.POLLIN)
        for s in self.dispatcher.socks:
            poller.register(s, zmq.POLLIN)
        while active and not stop.is_set():
            self.role.check()
            ready = dict(poller.poll(int(TICK_S * 1000)))
            if self.sub in ready:
                zmqutil.drain(self.sub, self.on_event_frames, 1000)
            if self.api in ready:
                zmqutil.drain(self.api, self.on_api_frames, 1000, copy=False)
            for s in self.dispatcher.socks:
                if s in ready:
                    self.on_dispatch_replies(self.dispatcher.drain(s))
            self.on_dispatch_replies(self.dispatcher.expire())
            self.tick(self.clock())
        self.api.close(linger=zmqutil.LINGER_MS)
        if active:
            self.sub.close(linger=zmqutil.LINGER_MS)
            self.events.close(linger=zmqutil.LINGER_MS)  # stops its beacon thread before the socket closes
        self.dispatcher.close()
        self.masters.close()
        self.scheduler.close()
        self.store.close()

    def join_bus(self) -> None:
        """Subscribe before recovering (nothing that happens after recovery's questions is missed)
        and publish under a new epoch, as after a restart."""
        self.sub = zmqutil.sub(
            self.ctx, self.cfg.endpoint("broker_xpub"), self.security, [topics.CMD + ".", topics.AGENT + "."]
        )
        self.events = Publisher(
            zmqutil.pub(self.ctx, self.cfg.endpoint("broker_xsub"), self.security),
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
        # The next command first: job events are for people and can wait a millisecond.
        for cmd_id, agent in eff.kill:
            try:
                self.masters.kill(cmd_id, agent=agent or None)
            except RequestError as exc:
                log.warning("kill.failed", cmd_id=cmd_id, agent=agent, error=exc.message)
        for cmd_id in eff.dispatch:
            self.dispatch(cmd_id)
        for job_id in eff.publish:
            self.publish(job_id)

    def dispatch_due(self, now: float) -> None:
        for cmd in self.engine.due_pending(now):
            self.dispatch(cmd.cmd_id)

    def dispatch(self, cmd_id: str) -> None:
        """Send a PENDING command's Exec; the reply is handled when it arrives."""
        if self.dispatcher.busy(cmd_id):
            return
        cmd = self.store.command(cmd_id)
        if cmd is None or cmd.state != CmdState.PENDING:
            return
        self.counters["dispatches"] += 1
        self.dispatcher.exec(cmd_id, self.engine.dispatch_spec(cmd), **self.engine.route(cmd))

    def on_dispatch_replies(self, replies: list) -> None:
        for cmd_id, reply in replies:
            if isinstance(reply, P.ExecReply):
                self.execute(self.engine.on_dispatched(cmd_id, reply))
                # Events that came before this reply, now that it names the command's agent.
                mine, others = self.early.release(cmd_id, reply.agent)
                self.counters["wrong_agent_events"] += others
                for got in mine:
                    self.on_command_event(got)
            else:
                newly_waiting = self.engine.newly_waiting(cmd_id, reply.message)
                refused = reply.code not in NO_ANSWER
                self.execute(self.engine.on_dispatch_refused(cmd_id, reply.message, refused=refused))
                if newly_waiting:
                    self.publish(newly_waiting)

    def reconcile(self, agent: str) -> None:
        """Ask the agent's spool about every command we believe is in flight there.

        An agent that no master can reach for lost_after_s has its commands UNKNOWN: nothing
        runs them again while it may still be running them. Its spool answers when it is back;
        only a stage's unknown deadline gives up on it (engine.unreachable).
        """
        cmds = self.store.in_flight_on(agent)
        if not cmds:
            self.unreachable_since.pop(agent, None)
            return
        self.counters["reconciles"] += 1
        try:
            statuses = self.masters.query([c.cmd_id for c in cmds], agent=agent)
        except RequestError as exc:
            now = self.clock()
            since = self.unreachable_since.setdefault(agent, now)
            if now - since >= self.cfg.orchestrator.lost_after_s:
                if any(c.state != CmdState.UNKNOWN for c in cmds):
                    log.warning("agent.unreachable", agent=agent, commands=[c.cmd_id for c in cmds], error=exc.message)
                self.execute(self.engine.unreachable(agent, since))
            return
        self.unreachable_since.pop(agent, None)
        for st in statuses:
            if st.state == "done":
                self.done(st)
            elif st.state == "running":
                self.execute(self.engine.still_running(st.cmd_id))
            else:
                # It accepted this command (we saw its reply or its STARTED event), yet its spool
                # does not know it: the record is gone with whatever ran. Sending it again could
                # run it twice, so it is LOST and the stage's policy decides.
                log.warning("cmd.unknown_to_agent", cmd_id=st.cmd_id, agent=agent)
                self.execute(self.engine.on_done(st.cmd_id, st, lost=True))

    def done(self, status: P.CmdStatus, stamp: tuple[str, str, str, int] | None = None) -> None:
        self.execute(self.engine.on_done(status.cmd_id, self.whole_output(status), stamp=stamp))

    def whole_output(self, status: P.CmdStatus) -> P.CmdStatus:
        """Interpreters that must see every line (opened-file lists) get the spool's full output
        when the event's capture was cut; a huge output (a big sync) keeps its head and tail."""
        if not status.truncated or status.stdout_bytes + status.stderr_bytes > FULL_OUTPUT_MAX:
            return status
        cmd = self.store.command(status.cmd_id)
        if cmd is None or cmd.state not in OPEN:
            return status
        try:
            out = [
                self._read_all(status, stream, size)
                for stream, size in ((P.STDOUT, status.stdout_bytes), (P.STDERR, status.stderr_bytes))
            ]
        except RequestError as exc:
            log.warning("fetch.failed", cmd_id=status.cmd_id, error=exc.message)
            return status
        return msgspec.structs.replace(status, stdout=out[0], stderr=out[1], truncated=False)

    def _read_all(self, status: P.CmdStatus, stream: int, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            r = self.masters.fetch(status.cmd_id, stream, len(data), size - len(data), agent=status.agent or None)
            if not r.data:
                break
            data += r.data
        return bytes(data)

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
        try:
            view = self.engine.view(job_id)
        except JobError:
            return
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
        eff = Effects()
        try:
            reply, eff = self.handle(msg, got.user)
        except JobError as exc:
            reply = P.ErrorReply(req_id=msg.req_id, code=exc.code, message=str(exc))
        except Exception as exc:  # a bug must not take the orchestrator down with it
            log.exception("api.internal_error", request=type(msg).__name__)
            reply = P.ErrorReply(req_id=msg.req_id, code="internal", message=f"internal error: {exc}")
        # The decision is committed: answer the person first, then act on it.
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
        """A job for an agent or pool that no master has ever seen would wait forever: refuse it."""
        agent, pool = self.engine.submit_route(msg)
        why = self.known.refusal(agent, pool, self._masters_agents)
        if why:
            raise JobError(why)

    def _masters_agents(self) -> list[list[P.AgentInfo] | None]:
        """Every master's agents, the ones it saw but are gone too (None: that master did not answer).
        Blocking, but only for a submit naming an agent or pool not learned from events yet."""
        answers: list[list[P.AgentInfo] | None] = []
        for endpoint in self.cfg.client_masters():
            with MasterClient([endpoint], self.security, timeout=1.0, ctx=self.ctx) as mc:
                try:
                    answers.append(mc.agents(include_gone=True))
                except RequestError:
                    answers.append(None)
        return answers

    def _submitter(self, user: str, claimed: str) -> str:
        """Who submits: the requesting key's name, or the person the web's key names (the web
        authenticated them); on an insecure bus, whoever the request names."""
        if not user:
            return claimed
        if claimed and self.api_guard.security is not None and self.api_guard.security.role_of(user) == roles.WEB:
            return claimed
        return user

    def _reply(self, client: bytes, msg: P.Base) -> None:
        try:
            self.api.send_multipart([client, P.encode(msg)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client went away


def main(cfg: Config) -> None:
    try:
        orch = Orchestrator(cfg)
    except JobError as exc:
        raise SystemExit(f"p4bus orchestrator: {exc}") from None
    try:
        orch.run(lifecycle.stop_on_signals())
    except LeaseLost as exc:
        # Not one more step: a standby has the lease (or will have it) and acts from the store.
        log.error("orchestrator.lease_lost", error=str(exc))
        raise SystemExit(f"p4bus orchestrator: {exc}; exiting (a standby takes over)") from None
