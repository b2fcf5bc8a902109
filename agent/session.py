"""The agent's main thread: its masters, its requests, its slots.

One DEALER per master (a CURVE client pinning that master's key; the master knows the agent by
the key that said HELLO, not by a routing id), all served by one zmq.Poller loop together with
the output thread's completion fd and the stop fd; every wake-up drains each ready socket in a
batch. Replies go back on the DEALER the request came from, echoing its req_id.

Outcomes of an Exec (docs/protocol.md repeats this):
- known cmd_id (running, or in the spool even from before a restart): ExecReply(duplicate=True,
  status=<known state>); nothing is started again;
- malformed request (bad cmd_id, empty argv, non-positive timeout): ErrorReply "bad_request";
- no free slot, or a command already running in the same ``workspace``: ErrorReply
  "agent_busy" -- nothing is recorded, so the same cmd_id may be sent again later;
- refused by policy (executable, cwd, env, p4 arguments): checked before anything is written,
  so a refusal leaves nothing on disk; it is remembered in memory (the last REFUSED_MAX), and
  answered like a command that ran: ExecReply(status=done, error set) and a CmdDone event --
  one path for the orchestrator, idempotent and queryable while remembered (a refusal
  forgotten or lost in a restart is refused again when resent: the policy decides alike);
- allowed but not executable (or its keeper could not record it): its spool entry is removed
  and it is remembered and answered as a refusal;
- started: ExecReply(status=running, pid), then CmdStarted, LogChunks and CmdDone events.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass

import zmq

from agent import policy, recovery
from agent.executor import executor_for
from agent.keeper import Keepers, StartError
from agent.links import MasterLink
from agent.metrics import AgentMetrics
from agent.pump import Pump, Started
from agent.redact import Redactor
from agent.spool import Spool, SpoolEntry, valid_cmd_id
from common import auth, limits, logs, roles, zmqutil
from common import protocol as proto
from common.config import Config
from common.ids import new_epoch

# Hello.recent_done covers commands that finished this long ago at most.
RECENT_S = 600.0
RECENT_MAX = 1000
# Per wake-up and socket, so one chatty master cannot starve the other.
DRAIN_BATCH = 256
# Outcomes remembered in memory only (refusals; results a full disk kept out of the spool),
# for Query and duplicate Execs.
REFUSED_MAX = 1000
# libzmq never reconnects a socket whose handshake failed (a process squatting on the master's
# port, a key the master does not accept yet): a link not welcomed for this long gets a new one.
REDIAL_S = 3.0

log = logs.get("agent")


@dataclass
class _Slot:
    job_id: str
    workspace: str | None
    pid: int
    started_at: float


class Agent:
    def __init__(self, cfg: Config, environ: Mapping[str, str] | None = None) -> None:
        self.conf = cfg.agent
        self.environ = dict(os.environ if environ is None else environ)
        self.agent_id = cfg.agent_id()
        self.epoch = new_epoch()
        self.spool = Spool(self.conf.spool_dir or cfg.state_path / "spool" / self.agent_id)
        # The keeper factory starts now and makes the first keeper while the agent starts up.
        self.keepers = Keepers(self.spool, idle_max=self.conf.slots)
        self.keepers.ready()
        security = auth.for_service(cfg, "agent", self.agent_id)
        if security is not None:
            for broker in cfg.agent_brokers():  # a missing key fails here, not in the pump
                security.keyring.server_key(roles.BROKER, broker)
        self.ctx = zmq.Context()
        self._security = security
        self.links = [MasterLink(ep, self._dealer(ep), self.conf.heartbeat_s) for ep in cfg.agent_masters()]
        self._dialed = dict.fromkeys(cfg.agent_masters(), 0.0)  # endpoint -> last welcome or redial
        self._poller = zmq.Poller()
        self.pump = Pump(self.ctx, cfg.agent_brokers(), security, self.agent_id, self.epoch, self.spool, self.conf)
        self.executor = executor_for(self.conf, cfg.state_path, self.environ)
        self.running: dict[str, _Slot] = {}
        self.refused: OrderedDict[str, proto.CmdStatus] = OrderedDict()
        # The secrets every keeper takes out of its command's output (agent/redact.py).
        self.redactor = Redactor()
        self.recent: deque[tuple[float, str]] = deque(
            self.spool.finished_since(time.time() - RECENT_S)[-RECENT_MAX:], maxlen=RECENT_MAX
        )
        self.counters: Counter[str] = Counter()
        self._refused_by: set[str] = set()  # masters that refused our key, until one welcomes us
        self._stop = False
        self._stop_r, self._stop_w = os.pipe()
        os.set_blocking(self._stop_r, False)
        os.set_blocking(self._stop_w, False)
        self._prune_every = min(60.0, max(1.0, self.conf.spool_max_age_s / 4))
        self._next_prune = 0.0
        self.metrics = AgentMetrics(
            self.agent_id,
            self.conf.slots,
            self.running,
            self.spool.free_bytes,
            lambda: sum(link.welcomed for link in self.links),
            self.counters,
        )

    # ------------------------------------------------------------------ lifecycle
    @property
    def stop_fd(self) -> int:
        """Write end to wake the loop (for signal.set_wakeup_fd)."""
        return self._stop_w

    def request_stop(self) -> None:
        self._stop = True

    def run(self) -> int:
        try:
            self.keepers.prime()
        except StartError as exc:
            log.error("no keeper yet; the first command tries again", error=str(exc))
        attach, recovered = recovery.recover(self.spool, self.agent_id, self.conf.capture_bytes, self.executor)
        self.executor.open()
        self.pump.start()
        for status in recovered:
            log.warning(
                "command orphaned by a previous agent process",
                cmd_id=status.cmd_id,
                killed=status.killed,
                error=status.error,
            )
            self._remember_done(status)
            self.pump.publish_done(status)
        for st in attach:
            log.info("re-attached to a command of a previous agent process", cmd_id=st.cmd_id, pid=st.handle.pid)
            workspace = entry.workspace if (entry := self.spool.read_spec(st.cmd_id)) else None
            self.running[st.cmd_id] = _Slot(st.job_id, workspace, st.handle.pid, st.started_at)
            self.pump.start_cmd(st)
        log.info(
            "agent started",
            agent_id=self.agent_id,
            epoch=self.epoch,
            spool=str(self.spool.root),
            masters=[ln.endpoint for ln in self.links],
        )
        poller = self._poller
        for link in self.links:
            poller.register(link.sock, zmq.POLLIN)
            self._dialed[link.endpoint] = time.monotonic()
        poller.register(self.pump.done_fd, zmq.POLLIN)
        poller.register(self._stop_r, zmq.POLLIN)
        self._tick(time.monotonic())  # the first Hellos go out now, not after a poll timeout
        while not self._stop:
            ready = dict(poller.poll(self._poll_ms(time.monotonic())))
            for link in self.links:
                if link.sock in ready:
                    self._drain(link)
            if self.pump.done_fd in ready:
                self._on_done(self.pump.take_done())
            # After the replies went out: the next command's keeper is forked off the round trip.
            self.keepers.ready()
            if not self.pump.is_alive():
                log.error("output thread died; stopping")
                self._close()
                return 1
            self._tick(time.monotonic())
            self.metrics.health.tick()
        self._shutdown()
        return 0

    def _poll_ms(self, now: float) -> int:
        t = min([self._next_prune, *(link.next_due(now) for link in self.links)])
        return max(0, int((t - now) * 1000) + 1)

    def _dealer(self, endpoint: str) -> zmq.Socket:
        # No routing id of our own: the master learns who we are from HELLO, checked against our key.
        return zmqutil.dealer(self.ctx, endpoint, self._security, roles.MASTER, immediate=True)

    def _redial(self, link: MasterLink, now: float) -> None:
        self._dialed[link.endpoint] = now
        self._poller.unregister(link.sock)
        link.sock.close(linger=0)
        link.sock = self._dealer(link.endpoint)
        self._poller.register(link.sock, zmq.POLLIN)

    def _tick(self, now: float) -> None:
        for link in self.links:
            if not link.check_alive(now):
                log.warning("master silent; saying hello until it answers", master=link.endpoint)
            if link.welcomed:
                self._dialed[link.endpoint] = now
            elif now - self._dialed[link.endpoint] >= REDIAL_S:
                self._redial(link, now)
            due = link.due(now)
            if due == "hello":
                link.send(self._hello(), now, "hello")
            elif due == "heartbeat":
                link.send(self._heartbeat(), now, "heartbeat")
        if now >= self._next_prune:
            self._next_prune = now + self._prune_every
            removed = self.spool.prune(self.conf.spool_max_age_s)
            if removed:
                log.info("spool pruned", removed=len(removed))

    def _shutdown(self) -> None:
        """Clean stop: say Bye, then (``on_stop = "kill"``) end running commands (TERM, KILL
        after the grace period) and record them ``killed`` (``error`` stays empty: they did
        start), or (``"detach"``) leave them to their keepers for the next agent."""
        now = time.monotonic()
        detach = self.conf.on_stop == "detach"
        log.info("agent stopping", running=list(self.running), commands="left to their keepers" if detach else "ended")
        for link in self.links:
            link.send(proto.Bye(agent_id=self.agent_id), now)
        self.pump.shutdown(detach)
        self.pump.join(timeout=self.conf.kill_grace_s + 5.0)
        self._close()

    def _close(self) -> None:
        for link in self.links:
            link.sock.close()
        self.keepers.close()
        self.executor.close()
        if self.pump.is_alive():
            # term() would wait forever for the PUB the stuck thread still owns.
            log.error("output thread did not finish; exiting without flushing its events")
            return
        self.ctx.term()

    # ------------------------------------------------------------------ messages
    def _drain(self, link: MasterLink) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                frames = link.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._on_frames(link, frames, time.monotonic())

    def _on_frames(self, link: MasterLink, frames: list[bytes], now: float) -> None:
        link.heard(now)
        try:
            if len(frames) != 1:
                raise proto.ProtocolError("bad_frame", f"expected one frame, got {len(frames)}")
            msg = proto.decode(frames[0], proto.MasterToAgent)
        except proto.ProtocolError as exc:
            self.counters[exc.code] += 1
            log.warning("bad frame from master", master=link.endpoint, code=exc.code, error=exc.message)
            rid = proto.req_id_of(frames[0]) if len(frames) == 1 else ""
            link.send(proto.ErrorReply(req_id=rid, code=exc.code, message=exc.message), now)
            return
        if isinstance(msg, proto.Welcome):
            link.welcome(msg)
            self._refused_by.discard(link.endpoint)
            log.info("welcomed", master=link.endpoint, master_id=msg.master_id)
            return
        if isinstance(msg, proto.Reregister):
            link.welcomed = False
            link.send(self._hello(), now, "hello")
            return
        if isinstance(msg, proto.ErrorReply) and msg.code == "forbidden":
            if link.endpoint not in self._refused_by:  # once, not at every HELLO it refuses
                log.error("master refused this agent", master=link.endpoint, error=msg.message)
            self._refused_by.add(link.endpoint)
        elif isinstance(msg, proto.ErrorReply):
            # Never answered: two peers must not trade error replies forever.
            log.warning("master reported an error", master=link.endpoint, code=msg.code, error=msg.message)
        elif not isinstance(msg, proto.Heartbeat):
            link.send(self._request(msg), now)
        if link.hello_wanted(now):
            link.send(self._hello(), now, "hello")

    def _request(self, req: proto.Exec | proto.Kill | proto.Query | proto.Fetch) -> proto.Base:
        # The master refuses these already; checked again so that no master (of any version)
        # can make the agent read its spool long enough to miss its own heartbeats.
        over = proto.over_limit(req)
        if over:
            return proto.ErrorReply(req_id=req.req_id, code="bad_request", message=over)
        # Completions not taken yet: the answer must know every command that has ended.
        self._on_done(self.pump.take_done())
        try:
            if isinstance(req, proto.Exec):
                return self._exec(req)
            if isinstance(req, proto.Kill):
                return self._kill(req)
            if isinstance(req, proto.Query):
                return proto.QueryReply(req_id=req.req_id, statuses=[self._status(c) for c in req.cmd_ids])
            return self._fetch(req)
        except OSError as exc:
            log.exception("request failed", req_id=req.req_id)
            return proto.ErrorReply(req_id=req.req_id, code="internal", message=f"agent I/O error: {exc}")

    # ------------------------------------------------------------------ Exec
    def _exec(self, req: proto.Exec) -> proto.Base:
        spec = req.spec
        bad = _malformed(req)
        if bad:
            return proto.ErrorReply(req_id=req.req_id, code="bad_request", message=bad)
        known = self._status(req.cmd_id)
        if known.state != "unknown":
            return proto.ExecReply(
                req_id=req.req_id, cmd_id=req.cmd_id, agent=self.agent_id, status=known, duplicate=True
            )
        busy = self._busy(req.workspace)
        if busy:
            return proto.ErrorReply(req_id=req.req_id, code="agent_busy", message=busy)
        try:
            starter = self.executor.prepare(spec, req.workspace)
        except policy.Refusal as exc:
            return self._unstarted(req, str(exc))
        if spec.stdin_secret and spec.stdin:
            self.redactor.learn(spec.stdin)
        # Made durable by the keepers while a keeper gets ready for it (Keepers.spawn).
        self.spool.create(
            req.cmd_id,
            SpoolEntry(spec=spec, job_id=req.job_id, workspace=req.workspace, received_at=time.time()),
            durable=False,
        )
        # Taken before the keeper starts it: a command that ends at once must not look shorter
        # than it was (its keeper's grace for leftovers runs from the leader's exit).
        started_at = time.time()
        try:
            handle, kept = starter(self.keepers, req.cmd_id, self.redactor.secrets)
        except OSError as exc:
            # It never ran: forget it, so that the same cmd_id can be sent again.
            self.spool.discard(req.cmd_id)
            return self._unstarted(req, f"cannot execute {spec.argv[0]!r}: {exc}")
        pid = handle.pid
        self.running[req.cmd_id] = _Slot(req.job_id, req.workspace, pid, started_at)
        self.pump.start_cmd(Started(req.cmd_id, req.job_id, list(spec.argv), handle, started_at, spec.timeout, kept))
        # Debug only: the CmdStarted event (journalled by the broker) is the record, and a log
        # line per command costs measurable time on the dispatch round trip.
        log.debug("command started", cmd_id=req.cmd_id, job_id=req.job_id, pid=pid, argv0=spec.argv[0])
        status = proto.CmdStatus(
            cmd_id=req.cmd_id,
            job_id=req.job_id,
            agent=self.agent_id,
            state="running",
            pid=pid,
            started_at=started_at,
        )
        return proto.ExecReply(req_id=req.req_id, cmd_id=req.cmd_id, agent=self.agent_id, status=status)

    def _busy(self, workspace: str | None) -> str:
        # A command with a result on disk has finished even if the output thread's notice has
        # not reached this thread yet: CmdDone -- which may well have prompted this very Exec --
        # is published only after the result is written.
        live = {c: slot for c, slot in self.running.items() if not self.spool.has_result(c)}
        if len(live) >= self.conf.slots:
            return f"all {self.conf.slots} slots of agent {self.agent_id} are busy"
        if workspace:
            for cmd_id, slot in live.items():
                if slot.workspace == workspace:
                    return f"workspace {workspace!r} is busy with command {cmd_id}"
        return ""

    def _unstarted(self, req: proto.Exec, error: str) -> proto.ExecReply:
        """A command that will never run: its outcome is remembered in memory (nothing of it is
        on disk) and answered like any other."""
        now = time.time()
        status = proto.CmdStatus(
            cmd_id=req.cmd_id,
            job_id=req.job_id,
            agent=self.agent_id,
            state="done",
            error=error,
            started_at=now,
            ended_at=now,
        )
        self._keep_in_memory(status)
        self.pump.publish_done(status)
        self._remember_done(status)
        log.warning("command refused", cmd_id=req.cmd_id, error=error)
        return proto.ExecReply(req_id=req.req_id, cmd_id=req.cmd_id, agent=self.agent_id, status=status)

    def _keep_in_memory(self, status: proto.CmdStatus) -> None:
        self.refused[status.cmd_id] = status
        if len(self.refused) > REFUSED_MAX:
            self.refused.popitem(last=False)

    # ------------------------------------------------------------------ Kill, Query, Fetch
    def _kill(self, req: proto.Kill) -> proto.KillReply:
        if req.cmd_id in self.running:
            self.pump.kill(req.cmd_id)
        status = self._status(req.cmd_id)
        return proto.KillReply(req_id=req.req_id, cmd_id=req.cmd_id, found=status.state != "unknown", status=status)

    def _status(self, cmd_id: str) -> proto.CmdStatus:
        """From the spool: the result if there is one, else the live state of our own process.
        (Start-up recovery re-attaches to every other kind of spool entry, or ends it.)"""
        refused = self.refused.get(cmd_id)
        if refused is not None:
            return refused
        if valid_cmd_id(cmd_id):
            result = self.spool.read_result(cmd_id)
            if result is not None:
                return result
            slot = self.running.get(cmd_id)
            if slot is not None:
                return proto.CmdStatus(
                    cmd_id=cmd_id,
                    job_id=slot.job_id,
                    agent=self.agent_id,
                    state="running",
                    pid=slot.pid,
                    started_at=slot.started_at,
                    duration=time.time() - slot.started_at,
                    stdout_bytes=self.spool.output_size(cmd_id, proto.STDOUT),
                    stderr_bytes=self.spool.output_size(cmd_id, proto.STDERR),
                )
        return proto.CmdStatus(cmd_id=cmd_id, agent=self.agent_id, state="unknown")

    def _fetch(self, req: proto.Fetch) -> proto.Base:
        if req.stream not in proto.STREAM_NAMES or req.offset < 0 or req.size <= 0:
            return proto.ErrorReply(
                req_id=req.req_id,
                code="bad_request",
                message="fetch needs stream 1 (stdout) or 2 (stderr), offset >= 0 and size > 0",
            )
        if req.cmd_id in self.refused and not self.spool.exists(req.cmd_id):
            return proto.FetchReply(
                req_id=req.req_id,
                cmd_id=req.cmd_id,
                stream=req.stream,
                offset=req.offset,
                data=b"",
                total=0,
                complete=True,
            )
        if not valid_cmd_id(req.cmd_id) or not self.spool.exists(req.cmd_id):
            return proto.ErrorReply(
                req_id=req.req_id, code="unknown_cmd", message=f"no command {req.cmd_id!r} in the spool"
            )
        # Asked before reading: a result written means the output files are final.
        finished = self.spool.read_result(req.cmd_id) is not None or req.cmd_id in self.refused
        data, total = self.spool.read_range(req.cmd_id, req.stream, req.offset, min(req.size, limits.MAX_FETCH_BYTES))
        # Complete only when nothing is left to read: a read capped at MAX_FETCH_BYTES is not.
        complete = finished and req.offset + len(data) >= total
        return proto.FetchReply(
            req_id=req.req_id,
            cmd_id=req.cmd_id,
            stream=req.stream,
            offset=req.offset,
            data=data,
            total=total,
            complete=complete,
        )

    # ------------------------------------------------------------------ completions
    def _on_done(self, statuses: list[proto.CmdStatus]) -> None:
        for status in statuses:
            self.running.pop(status.cmd_id, None)
            self.metrics.done(status)
            if not self.spool.has_result(status.cmd_id):
                self._keep_in_memory(status)  # a full disk: Query still gets the real answer
            self._remember_done(status)
            log.info(
                "command done",
                cmd_id=status.cmd_id,
                exit_code=status.exit_code,
                signal=status.signal,
                timed_out=status.timed_out,
                killed=status.killed,
            )
        if statuses:
            # Tell the masters at once that slots are free, rather than at the next heartbeat.
            now = time.monotonic()
            for link in self.links:
                if link.welcomed:
                    link.send(self._heartbeat(), now, "heartbeat")

    def _remember_done(self, status: proto.CmdStatus) -> None:
        self.recent.append((status.ended_at or time.time(), status.cmd_id))

    # ------------------------------------------------------------------ greetings
    def _hello(self) -> proto.Hello:
        cutoff = time.time() - RECENT_S
        info = proto.AgentInfo(
            agent_id=self.agent_id,
            host=socket.gethostname(),
            pools=list(self.conf.pools),
            labels=dict(self.conf.labels),
            workspaces=list(self.conf.workspaces),
            slots=self.conf.slots,
            running=list(self.running),
            epoch=self.epoch,
            spool_free=self.spool.free_bytes(),
        )
        return proto.Hello(
            proto=proto.PROTOCOL_VERSION,
            agent=info,
            heartbeat_s=self.conf.heartbeat_s,
            recent_done=[c for t, c in self.recent if t >= cutoff],
        )

    def _heartbeat(self) -> proto.Heartbeat:
        return proto.Heartbeat(
            running=list(self.running),
            free_slots=max(0, self.conf.slots - len(self.running)),
            spool_free=self.spool.free_bytes(),
        )


def _malformed(req: proto.Exec) -> str:
    if not valid_cmd_id(req.cmd_id):
        return f"cmd_id {req.cmd_id!r} must be 1-128 characters of letters, digits, '_', '.', ':' or '-'"
    if not req.spec.argv or not req.spec.argv[0]:
        return "argv is empty"
    if req.spec.timeout is not None and req.spec.timeout <= 0:
        return f"timeout must be positive, got {req.spec.timeout}"
    return ""
