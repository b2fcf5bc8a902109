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
"""

from __future__ import annotations

from collections.abc import Callable

import zmq

from broker.client import history_then_live
from common import auth, roles, topics
from common import protocol as P
from common.config import Config
from common.rpc import MasterClient, OrchestratorClient, RequestError
from p4bus.render import END_STATES, LogPrinter
from p4bus.stream import MissingOutput, OutputAssembler


class JobTail:
    def __init__(
        self, cfg: Config, job_id: str, printer: LogPrinter, on_state: Callable[[P.JobChanged], None] | None = None
    ) -> None:
        self.cfg = cfg
        self.job_id = job_id
        self.printer = printer
        self.on_state = on_state
        self.security = auth.for_client(cfg)
        self.orch = OrchestratorClient([cfg.endpoint("orchestrator_api")], self.security, timeout=5.0)
        self.masters = MasterClient(cfg.client_masters(), self.security, timeout=5.0)
        self.outputs: dict[str, OutputAssembler] = {}
        self.finished: set[str] = set()
        self.runs: dict[str, P.StageRun] = {}
        self.broken: set[str] = set()  # commands whose spool could not fill a gap
        self.ignored: set[str] = set()  # keys whose events about this job's commands were ignored

    def close(self) -> None:
        self.orch.close()
        self.masters.close()

    def follow(self, until: tuple[str, ...] = END_STATES) -> P.JobView:
        """Print everything until the job reaches one of ``until``; returns its final view."""
        view = self.orch.job(self.job_id)  # fails early and clearly for an unknown job
        prefixes = [f"{topics.LOG}.{self.job_id}.", f"{topics.CMD}.{self.job_id}.", topics.job(self.job_id)]
        stream = history_then_live(
            zmq.Context.instance(),
            self.cfg.endpoint("broker_xpub"),
            self.cfg.endpoint("broker_replay"),
            self.security,
            prefixes,
        )
        try:
            for ev, publisher in stream:
                if isinstance(ev, P.JobChanged):
                    if ev.job_id != self.job_id or not self._from_an_orchestrator(publisher):
                        continue
                    if self.on_state:
                        self.on_state(ev)
                    if ev.state in until:
                        view = self.orch.job(self.job_id)  # the event is a claim; the orchestrator knows
                        if view.state in until:
                            self._complete(view)
                            return view
                elif (
                    isinstance(ev, P.LogChunk | P.CmdStarted | P.CmdDone)
                    and ev.job_id == self.job_id
                    and self._from_its_agent(ev.cmd_id, publisher)
                ):
                    self._command_event(ev)
        finally:
            stream.close()
        return view

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

    def _command_event(self, ev: P.LogChunk | P.CmdStarted | P.CmdDone) -> None:
        if isinstance(ev, P.LogChunk):
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
                self.printer.header(run.stage, run.step, run.attempt, run.argv)
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
            if run.cmd_id not in self.finished and run.state == "DONE" and run.agent:
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

    def _complete(self, view: P.JobView) -> None:
        """The job has ended: print whatever output neither history nor live delivered."""
        for run in view.timeline:
            if run.cmd_id in self.finished or run.state in ("PENDING", "CANCELLED") or not run.agent:
                continue
            self.runs[run.cmd_id] = run
            self._finish_from_spool(run)
