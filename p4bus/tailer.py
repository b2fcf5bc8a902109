"""Following a job: its whole output so far from the journal, then live, to its end.

Every command's output goes through an OutputAssembler, so a byte range the journal or the
live stream lacks is fetched from the agent's spool: no gap, no duplicate.

Events are claims; the orchestrator and the spools are the truth. A command's events are taken
only from the agent the orchestrator's timeline says runs it (the broker names each event's
authenticated publisher; "" on an insecure bus, where the body is all there is), job events only
from a key the keyring gives the orchestrator's role, and a job event that claims an end is
checked with the orchestrator before the tail stops. So an event forged by another key changes
nothing printed but one note naming the key; a command event the orchestrator's timeline does
not explain yet is dropped, and whatever it would have delivered comes from the spool when a
later chunk or the command's end shows the gap.

Whether the job has ended is asked of the orchestrator too, not only read from events
(level-triggered): when the stream has been quiet for QUIET_S, and every CHECK_EVERY_S while it
flows. So a job whose final events never reached the journal (the broker was down when it
ended) still ends the tail, its output completed from the spools. The events are read by a
pump thread into a queue, so the reader drains everything that has arrived before it renders
and never falls behind the job; the pump's sockets live in a context of their own, whose
termination (zmq_ctx_term, the thread-safe way) ends the pump's blocking read.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol

import zmq

from broker.client import HOLE_GRACE_S, history_then_live
from common import auth, roles, topics
from common import protocol as P
from common.config import Config
from common.rpc import MasterClient, OrchestratorClient, RequestError
from p4bus.journal_chunks import JournalChunks
from p4bus.render import END_STATES
from p4bus.stream import Gap, HoldBack, MissingOutput, OutputAssembler

# No event for this long: ask the orchestrator whether the job has ended.
QUIET_S = 1.0
# Ask anyway this often while events flow (a replay of a long history, a busy job).
CHECK_EVERY_S = 5.0
# A command in one of these states will not run again under its id.
_ENDED_RUNS = ("DONE", "LOST", "CANCELLED")
# Events handled between two renders at most: a render is never more than this far behind.
BATCH = 5000
# A hole in a command's output is looked for in the journals from this long before the publish
# time of the chunk before it (the brokers stamp their own receive time: clocks may differ).
JOURNAL_MARGIN_S = 10.0


class Printer(Protocol):
    """What a tail prints to: the byte-exact log (render.LogPrinter) or progress (progress.py)."""

    def header(self, run: P.StageRun) -> None: ...
    def note(self, text: str) -> None: ...
    def write(self, cmd_id: str, stream: int, data: bytes) -> None: ...
    def tick(self) -> None: ...


class _Pump(threading.Thread):
    """Journal history then live events of one job into a queue; None marks its end."""

    def __init__(self, cfg: Config, security: auth.Security | None, prefixes: list[str]) -> None:
        super().__init__(name="tail-pump", daemon=True)
        self.ctx = zmq.Context()
        self.cfg = cfg
        self.security = security
        self.prefixes = prefixes
        self.events: queue.SimpleQueue[P.Delivered | None] = queue.SimpleQueue()
        self.error: Exception | None = None

    def run(self) -> None:
        stream = history_then_live(
            self.ctx,
            self.cfg.broker_xpubs(),
            self.cfg.broker_replays(),
            self.security,
            self.prefixes,
            on_down=_broker_down,
        )
        try:
            for got in stream:
                self.events.put(got)
        except zmq.ContextTerminated:
            pass  # stop() asked for it
        except Exception as exc:  # the broker is down or refused: the orchestrator still answers
            self.error = exc
        finally:
            stream.close()
            self.events.put(None)

    def stop(self) -> None:
        # Blocking calls of the pump return ETERM and it closes its sockets; term() returns
        # once they are closed. Bounded, so a stuck pump cannot hold the CLI.
        term = threading.Thread(target=self.ctx.term, name="tail-pump-term", daemon=True)
        term.start()
        term.join(timeout=5)
        self.join(timeout=5)


def _warn(text: str) -> None:
    """What the tail itself has to say goes to stderr: stdout is the job's output."""
    sys.stderr.write(f"p4bus: {text}\n")
    sys.stderr.flush()


def _broker_down(broker: str, why: str) -> None:
    _warn(f"broker {broker} does not answer ({why}); following the job through the others")


def _take(events: queue.SimpleQueue[P.Delivered | None], wait_s: float) -> list[P.Delivered | None]:
    """The items that have arrived (up to BATCH), waiting up to ``wait_s`` for the first."""
    out: list[P.Delivered | None] = []
    try:
        out.append(events.get(timeout=wait_s) if wait_s > 0 else events.get_nowait())
        while len(out) < BATCH:
            out.append(events.get_nowait())
    except queue.Empty:
        pass
    return out


class JobTail:
    def __init__(
        self,
        cfg: Config,
        job_id: str,
        printer: Printer,
        on_state: Callable[[P.JobChanged], None] | None = None,
        after: P.JobView | None = None,
    ) -> None:
        """``after``: show only what happens after this view of the job (a resume or retry just
        answered): the commands it had finished and the job events before it are history."""
        self.cfg = cfg
        self.job_id = job_id
        self.printer = printer
        self.on_state = on_state
        self.security = auth.for_client(cfg)
        self.orch = OrchestratorClient(cfg.client_orchestrators(), self.security, timeout=5.0)
        self.masters = MasterClient(cfg.client_masters(), self.security, timeout=5.0)
        self.outputs: dict[str, OutputAssembler] = {}
        self.finished: set[str] = set()
        self.runs: dict[str, P.StageRun] = {}
        self.broken: set[str] = set()  # commands whose spool could not fill a gap
        self.ignored: set[str] = set()  # keys whose events about this job's commands were ignored
        self.orch_silent = False  # said once that the orchestrator does not answer
        # Output read from the agents' spools because no broker delivered it: said at the end,
        # so a lossy bus (or a dead broker whose twin should have had it) shows.
        self.spool_bytes = 0
        self.since = after.updated_at if after else 0.0
        self.old = {r.cmd_id for r in after.timeline if r.state in _ENDED_RUNS} if after else set()
        # With several brokers, a command's events past a hole in its output wait a moment for
        # the other broker's copy before the spool is asked (p4bus/stream.py, HoldBack).
        grace = HOLE_GRACE_S if len(cfg.bus_brokers()) > 1 else 0.0
        self.hold: HoldBack[P.LogChunk | P.CmdStarted | P.CmdDone] = HoldBack(
            grace, self._gap, _fills, self._command_event, self._from_journals
        )
        self.journals = JournalChunks(cfg, self.security) if grace else None
        self.chunk_ts: dict[tuple[str, int], float] = {}  # (cmd, stream) -> publish time of its last chunk

    def close(self) -> None:
        self.orch.close()
        self.masters.close()
        if self.journals is not None:
            self.journals.close()

    def follow(self, until: tuple[str, ...] = END_STATES) -> P.JobView:
        """Print everything until the job reaches one of ``until``; returns its final view."""
        self.orch.job(self.job_id)  # fails early and clearly for an unknown job
        prefixes = [f"{topics.LOG}.{self.job_id}.", f"{topics.CMD}.{self.job_id}.", topics.job(self.job_id)]
        pump = _Pump(self.cfg, self.security, prefixes)
        pump.start()
        last_check = time.monotonic()
        try:
            while True:
                wait_s = QUIET_S if pump.is_alive() else CHECK_EVERY_S / 5
                held_s = self.hold.waiting_s()
                batch = _take(pump.events, wait_s if held_s is None else min(wait_s, held_s))
                if (ended := self._handle(pump, batch, until)) is not None:
                    return ended
                self.hold.expire()
                self.printer.tick()
                if batch and pump.is_alive() and time.monotonic() - last_check < CHECK_EVERY_S:
                    continue
                last_check = time.monotonic()
                view = self._ask()
                if view is not None and view.state in until:
                    # What has arrived meanwhile goes first, so the output stays in order.
                    while rest := _take(pump.events, 0):
                        if (ended := self._handle(pump, rest, until)) is not None:
                            return ended
                    self._complete(view, pump)
                    return view
        finally:
            pump.stop()
            if self.spool_bytes:
                _warn(f"{self.spool_bytes} bytes of output were read from the agents' spools (the bus lacked them)")

    def _handle(self, pump: _Pump, batch: list[P.Delivered | None], until: tuple[str, ...]) -> P.JobView | None:
        for got in batch:
            if got is None:
                self._pump_ended(pump)
            elif (ended := self._event(got, until, pump)) is not None:
                return ended
        return None

    def _ask(self) -> P.JobView | None:
        """The job as the orchestrator has it; None while it does not answer (restarting)."""
        try:
            return self.orch.job(self.job_id)
        except RequestError as exc:
            if exc.code != "timeout":
                raise
            if not self.orch_silent:
                self.orch_silent = True
                _warn(f"the orchestrator does not answer ({exc.message}); still waiting")
            return None

    def _pump_ended(self, pump: _Pump) -> None:
        if pump.error is not None:
            _warn(
                f"the broker's event stream is unavailable ({pump.error}); "
                "following the job through the orchestrator and the agents' spools"
            )

    def _event(self, got: P.Delivered, until: tuple[str, ...], pump: _Pump | None = None) -> P.JobView | None:
        """Handle one event; the job's final view if it ended."""
        ev, publisher = got
        if isinstance(ev, P.JobChanged):
            if ev.job_id != self.job_id or ev.ts < self.since or not self._from_an_orchestrator(publisher):
                return None
            if self.on_state:
                self.on_state(ev)
            if ev.state in until:
                view = self.orch.job(self.job_id)  # the event is a claim; the orchestrator knows
                if view.state in until:
                    self._complete(view, pump)
                    return view
        elif (
            isinstance(ev, P.LogChunk | P.CmdStarted | P.CmdDone)
            and ev.job_id == self.job_id
            and ev.cmd_id not in self.old
            and self._from_its_agent(ev.cmd_id, publisher)
        ):
            self.hold.offer(ev)
        return None

    def _from_an_orchestrator(self, publisher: str) -> bool:
        """True if the keyring gives ``publisher`` the orchestrator's role (any, on an insecure bus)."""
        if not publisher:
            return True
        if self.security is not None and self.security.role_of(publisher) == roles.ORCHESTRATOR:
            return True
        if publisher not in self.ignored:
            self.ignored.add(publisher)
            self.printer.note(f"ignoring job events published by key {publisher}: not an orchestrator's key")
        return False

    def _from_its_agent(self, cmd_id: str, publisher: str) -> bool:
        """True if ``publisher`` is the agent the orchestrator says runs ``cmd_id`` (any, on an
        insecure bus). A command not known or not placed yet is looked up again."""
        if not publisher:
            return True
        run = self.runs.get(cmd_id)
        if run is None or not run.agent:
            self._refresh_runs()
            run = self.runs.get(cmd_id)
        if run is not None and run.agent in (publisher, ""):
            return run.agent == publisher  # not placed yet: the spool fills in what is dropped
        if publisher not in self.ignored:
            # Once per key: someone is publishing about this job's commands who does not run them.
            self.ignored.add(publisher)
            why = f"it runs on {run.agent}" if run is not None else "no such command in this job"
            self.printer.note(f"ignoring events about {cmd_id} published by key {publisher}: {why}")
        return False

    def _gap(self, ev: P.LogChunk | P.CmdStarted | P.CmdDone) -> Gap | None:
        """The hole in its command's output that handling ``ev`` now would fill from the spool."""
        if ev.cmd_id in self.broken or ev.cmd_id in self.finished:
            return None
        out = self.outputs.get(ev.cmd_id)
        at = {s: (out.cursors[s].next if out else 0) for s in (P.STDOUT, P.STDERR)}
        if isinstance(ev, P.LogChunk):
            return (ev.cmd_id, ev.stream, at[ev.stream]) if ev.offset > at[ev.stream] else None
        if isinstance(ev, P.CmdDone):
            ends = {P.STDOUT: ev.status.stdout_bytes, P.STDERR: ev.status.stderr_bytes}
            return next(((ev.cmd_id, s, at[s]) for s in (P.STDOUT, P.STDERR) if ends[s] > at[s]), None)
        return None

    def _from_journals(self, gap: Gap) -> list[P.LogChunk | P.CmdStarted | P.CmdDone]:
        """The chunks of the gap's command and stream the brokers journalled since a little
        before the last one handled: the live stream may have dropped some (a subscriber queue
        full) that a journal has."""
        cmd_id, stream, _at = gap
        run = self.runs.get(cmd_id)
        if self.journals is None or run is None:
            return []
        since = self.chunk_ts.get((cmd_id, stream), 0.0)
        got = self.journals.chunks(self.job_id, cmd_id, stream, since and since - JOURNAL_MARGIN_S)
        return [c for c, publisher in got if not publisher or publisher == run.agent]

    def _command_event(self, ev: P.LogChunk | P.CmdStarted | P.CmdDone) -> None:
        if isinstance(ev, P.LogChunk):
            if self.journals is not None:
                self.chunk_ts[(ev.cmd_id, ev.stream)] = ev.ts
            self._guarded(ev.cmd_id, lambda out: out.chunk(ev.stream, ev.offset, ev.data))
        elif isinstance(ev, P.CmdStarted):
            self._guarded(ev.cmd_id, lambda _out: None)
        else:
            self._finish(ev.cmd_id, ev.status)

    def _guarded(self, cmd_id: str, step: Callable[[OutputAssembler], None]) -> None:
        """Feed a command's output; a gap its spool cannot fill is said once, not raised."""
        if cmd_id in self.broken:
            return
        try:
            step(self._output(cmd_id))
        except (MissingOutput, RequestError) as exc:
            # The job's outcome matters more than one command's bytes: say so and carry on.
            self.broken.add(cmd_id)
            self.printer.note(f"output of {cmd_id} is incomplete: {exc}")

    def _output(self, cmd_id: str) -> OutputAssembler:
        out = self.outputs.get(cmd_id)
        if out is None:
            self._close_earlier(cmd_id)
            run = self._run(cmd_id)
            if run is not None:
                self.printer.header(run)
            out = self.outputs[cmd_id] = OutputAssembler(
                lambda stream, offset, size: self._fetch(cmd_id, stream, offset, size),
                lambda stream, data: self.printer.write(cmd_id, stream, data),
            )
        return out

    def _close_earlier(self, cmd_id: str) -> None:
        """A new command's output begins: an earlier one whose end never arrived (its cmd_done
        lost in a cut) is finished from its spool first, so its output stays in its own section."""
        self._refresh_runs()
        for run in self.runs.values():
            if run.cmd_id == cmd_id:
                return
            if run.cmd_id not in self.finished | self.old and run.state == "DONE" and run.agent:
                self._finish_from_spool(run)

    def _finish_from_spool(self, run: P.StageRun) -> None:
        try:
            status = self.masters.query([run.cmd_id], agent=run.agent)[0]
        except RequestError:
            return  # the agent is gone; its spool will answer when it is back
        if status.state == "done":
            self._finish(run.cmd_id, status)

    def _run(self, cmd_id: str) -> P.StageRun | None:
        if cmd_id not in self.runs:
            self._refresh_runs()
        return self.runs.get(cmd_id)

    def _refresh_runs(self) -> None:
        for r in self.orch.job(self.job_id).timeline:
            self.runs[r.cmd_id] = r

    def _fetch(self, cmd_id: str, stream: int, offset: int, size: int) -> tuple[bytes, int]:
        run = self._run(cmd_id)
        r = self.masters.fetch(cmd_id, stream, offset, size, agent=run.agent if run and run.agent else None)
        self.spool_bytes += len(r.data)
        return r.data, r.total

    def _finish(self, cmd_id: str, status: P.CmdStatus) -> None:
        if cmd_id in self.finished:
            return
        self._guarded(cmd_id, lambda out: out.finish(status))
        self.finished.add(cmd_id)
        if status.spool_error:
            # Its agent could not keep all of it (a full disk): what is shown is all there is.
            self.printer.note(
                f"output of {cmd_id} is incomplete: the agent could not spool it all: {status.spool_error}"
            )

    def _complete(self, view: P.JobView, pump: _Pump | None) -> None:
        """The job has ended: print whatever output neither history nor live delivered (with
        several brokers, after waiting up to the hold's grace for what is still on its way)."""
        if pump is not None and pump.is_alive():
            self._settle(view, pump)
        self.hold.flush()
        for run in view.timeline:
            if run.cmd_id in self.finished | self.old or run.state in ("PENDING", "CANCELLED") or not run.agent:
                continue
            self.runs[run.cmd_id] = run
            self._finish_from_spool(run)

    def _settle(self, view: P.JobView, pump: _Pump) -> None:
        """Until nothing is held and every command that ran has had its end (or the hold's grace
        has passed): the job's end can overtake its last output on a broker that lags."""
        deadline = time.monotonic() + self.hold.grace_s
        while (left := deadline - time.monotonic()) > 0 and (self.hold.held or self._unfinished(view)):
            for got in _take(pump.events, min(left, 0.05)):
                if got is not None and not isinstance(got.event, P.JobChanged):
                    self._event(got, ())
            self.hold.expire()

    def _unfinished(self, view: P.JobView) -> bool:
        return any(
            r.agent and r.state not in ("PENDING", "CANCELLED") and r.cmd_id not in self.finished | self.old
            for r in view.timeline
        )


def _fills(ev: P.LogChunk | P.CmdStarted | P.CmdDone, gap: Gap) -> bool:
    """``ev`` brings the first byte missing in ``gap``."""
    cmd_id, stream, at = gap
    return (
        isinstance(ev, P.LogChunk)
        and (ev.cmd_id, ev.stream) == (cmd_id, stream)
        and ev.offset <= at < ev.offset + len(ev.data)
    )
