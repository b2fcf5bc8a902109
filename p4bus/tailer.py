"""Following a job: its whole output so far from the journal, then live, to its end.

Every command's output goes through an OutputAssembler, so a byte range the journal or the
live stream lacks is fetched from the agent's spool: no gap, no duplicate.
"""

from __future__ import annotations

from collections.abc import Callable

import zmq

from broker.client import history_then_live
from common import auth, topics
from common import protocol as P
from common.config import Config
from common.rpc import MasterClient, OrchestratorClient, RequestError
from p4bus.render import END_STATES, LogPrinter
from p4bus.stream import OutputAssembler


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
        self.agents: dict[str, str] = {}

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
            for ev in stream:
                if isinstance(ev, P.JobChanged):
                    if ev.job_id != self.job_id:
                        continue
                    if self.on_state:
                        self.on_state(ev)
                    if ev.state in until:
                        view = self.orch.job(self.job_id)
                        if view.state in until:
                            self._complete(view)
                            return view
                elif isinstance(ev, P.LogChunk) and ev.job_id == self.job_id:
                    self._output(ev.cmd_id).chunk(ev.stream, ev.offset, ev.data)
                elif isinstance(ev, P.CmdStarted) and ev.job_id == self.job_id:
                    self.agents[ev.cmd_id] = ev.agent
                    self._output(ev.cmd_id)
                elif isinstance(ev, P.CmdDone) and ev.job_id == self.job_id:
                    self.agents[ev.cmd_id] = ev.status.agent
                    self._finish(ev.cmd_id, ev.status)
        finally:
            stream.close()
        return view

    def _output(self, cmd_id: str) -> OutputAssembler:
        out = self.outputs.get(cmd_id)
        if out is None:
            run = self._run(cmd_id)
            if run is not None:
                self.printer.header(run.stage, run.step, run.attempt, run.argv)
            out = self.outputs[cmd_id] = OutputAssembler(
                lambda stream, offset, size: self._fetch(cmd_id, stream, offset, size),
                lambda stream, data: self.printer.write(cmd_id, stream, data),
            )
        return out

    def _run(self, cmd_id: str) -> P.StageRun | None:
        if cmd_id not in self.runs:
            for r in self.orch.job(self.job_id).timeline:
                self.runs[r.cmd_id] = r
        return self.runs.get(cmd_id)

    def _fetch(self, cmd_id: str, stream: int, offset: int, size: int) -> tuple[bytes, int]:
        agent = self.agents.get(cmd_id)
        if not agent:
            run = self._run(cmd_id)
            agent = run.agent if run else None
        r = self.masters.fetch(cmd_id, stream, offset, size, agent=agent or None)
        return r.data, r.total

    def _finish(self, cmd_id: str, status: P.CmdStatus) -> None:
        if cmd_id in self.finished:
            return
        self._output(cmd_id).finish(status)
        self.finished.add(cmd_id)

    def _complete(self, view: P.JobView) -> None:
        """The job has ended: print whatever output neither history nor live delivered."""
        for run in view.timeline:
            if run.cmd_id in self.finished or run.state in ("PENDING", "CANCELLED") or not run.agent:
                continue
            self.runs[run.cmd_id] = run
            self.agents.setdefault(run.cmd_id, run.agent)
            try:
                status = self.masters.query([run.cmd_id], agent=run.agent)[0]
            except RequestError:
                continue  # the agent is gone; its spool will answer when it is back
            if status.state == "done":
                self._finish(run.cmd_id, status)
