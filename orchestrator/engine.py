"""Jobs moving through their pipelines: every decision, persisted before anything is sent.

The engine owns the store and the pure pipeline logic; it performs no I/O on sockets. Each
public method runs one transaction and returns the Effects to carry out after the commit
(dispatch a command, kill one, publish a job event). If the process dies between the commit
and the effects, start-up reconciliation redoes them: a PENDING command is dispatched again
(idempotent by cmd_id), an in-flight one is asked about.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from common import ids
from common import protocol as P
from common.config import OrchestratorConf, WorkspaceConf
from orchestrator.pipeline import (
    PASSWORD_SECRET,
    PIPELINES,
    TERMINAL,
    CommandResult,
    CommandSpec,
    JobContext,
    JobParams,
    JobState,
    Outcome,
    RefusedTransition,
    SiteConfig,
    Transition,
    Workspace,
    resume_transition,
    retry_from,
    start,
    transition,
    validate_params,
    validate_site,
)
from orchestrator.pipeline.transition import CONFLICTS_KEY
from orchestrator.store import CommandRow, JobRow, Store


class JobError(Exception):
    """A request a person made that cannot be done; the message says why and what to do."""

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Effects:
    dispatch: list[str] = field(default_factory=list)  # cmd ids, in order
    kill: list[tuple[str, str]] = field(default_factory=list)  # (cmd_id, agent)
    publish: list[str] = field(default_factory=list)  # job ids whose state changed

    def add(self, other: Effects) -> Effects:
        self.dispatch += other.dispatch
        self.kill += other.kill
        self.publish += [j for j in other.publish if j not in self.publish]
        return self


def result_of(status: P.CmdStatus, lost: bool = False) -> CommandResult:
    return CommandResult(
        exit_code=status.exit_code,
        signal=status.signal,
        timed_out=status.timed_out,
        killed=status.killed,
        lost=lost,
        stdout=status.stdout.decode("utf-8", "replace"),
        stderr=status.stderr.decode("utf-8", "replace"),
        truncated=status.truncated,
        error=status.error,
    )


class Engine:
    def __init__(self, store: Store, conf: OrchestratorConf, environ: dict[str, str] | None = None) -> None:
        self.store = store
        self.conf = conf
        self.environ = os.environ if environ is None else environ
        try:
            self.site = msgspec.convert(conf.site, SiteConfig, strict=False)
        except msgspec.ValidationError as exc:
            raise JobError(f"orchestrator.site in the configuration is invalid: {exc}") from None
        problems = validate_site(self.site)
        if problems:
            raise JobError("orchestrator.site in the configuration: " + "; ".join(problems))

    # ------------------------------------------------------------------ context

    def workspace(self, name: str) -> Workspace:
        wc = self._ws_conf(name)
        return Workspace(
            name=name,
            p4port=wc.p4port,
            p4user=wc.p4user,
            p4client=wc.p4client,
            root=wc.root,
            p4=wc.p4,
            password_set=bool(wc.password_env or wc.password_file),
            tickets_file=wc.tickets_file,
            env=dict(wc.env),
        )

    def _ws_conf(self, name: str) -> WorkspaceConf:
        wc = self.conf.workspaces.get(name)
        if wc is None:
            known = ", ".join(sorted(self.conf.workspaces)) or "none"
            raise JobError(
                f"workspace {name!r} is not configured (known: {known}): add "
                f"[orchestrator.workspaces.{name}] to the config",
                "bad_request",
            )
        return wc

    def _secrets(self, workspace: str) -> dict[str, str]:
        """Read at call time, never stored: the password is in the orchestrator's environment or a file."""
        wc = self.conf.workspaces.get(workspace)
        if wc is None:
            return {}
        if wc.password_env and wc.password_env in self.environ:
            return {PASSWORD_SECRET: self.environ[wc.password_env]}
        if wc.password_file and Path(wc.password_file).is_file():
            return {PASSWORD_SECRET: Path(wc.password_file).read_text().rstrip("\n")}
        return {}

    def ctx(self, job: JobRow) -> JobContext:
        return JobContext(
            params=msgspec.json.decode(job.params, type=JobParams),
            site=self.site,
            stage=job.stage,
            step=job.step,
            attempt=job.attempt,
            vars=job.vars_dict(),
            job_id=job.id,
            secrets=self._secrets(job.workspace),
        )

    # ------------------------------------------------------------------ submit and schedule

    def submit(self, req: P.Submit) -> tuple[str, Effects]:
        if req.pipeline not in PIPELINES:
            raise JobError(f"unknown pipeline {req.pipeline!r} (known: {', '.join(PIPELINES)})")
        name = req.workspace or self._default_workspace()
        ws = self.workspace(name)
        params = JobParams(
            workspace=ws,
            source=req.source,
            target=req.target,
            branch_spec=req.branch_spec,
            change=req.change,
            desc=req.desc,
        )
        errors = validate_params(params, self.conf.workspaces.keys())
        if errors:
            raise JobError("; ".join(errors))
        wc = self._ws_conf(name)
        day = datetime.now(UTC).strftime("%Y%m%d")
        now = time.time()
        with self.store.tx():
            job_id = f"INT-{day}-{self.store.next_counter('job-' + day):04d}"
            first = PIPELINES[req.pipeline].first().name
            self.store.insert_job(
                JobRow(
                    id=job_id,
                    n=self.store.next_job_number(),
                    pipeline=req.pipeline,
                    workspace=name,
                    agent=req.agent or wc.agent,
                    pool=req.pool or wc.pool,
                    params=msgspec.json.encode(params),
                    state=JobState.QUEUED,
                    stage=first,
                    step=0,
                    attempt=1,
                    vars=b"{}",
                    reason="",
                    key_line="",
                    retry_from=None,
                    created_at=now,
                    updated_at=now,
                )
            )
            eff = Effects(publish=[job_id])
            eff.add(self._schedule_workspace(name))
        return job_id, eff

    def _default_workspace(self) -> str:
        if len(self.conf.workspaces) == 1:
            return next(iter(self.conf.workspaces))
        raise JobError(
            "no workspace given and more than one is configured: pass --workspace "
            f"({', '.join(sorted(self.conf.workspaces)) or 'none configured'})"
        )

    def schedule(self) -> Effects:
        eff = Effects()
        with self.store.tx():
            for ws in sorted({j.workspace for j in self.store.queued()}):
                eff.add(self._schedule_workspace(ws))
        return eff

    def _schedule_workspace(self, workspace: str) -> Effects:
        """Start the oldest queued job of a free workspace (inside the caller's transaction)."""
        if self.store.workspace_busy(workspace):
            return Effects()
        queued = self.store.queued(workspace)
        if not queued:
            return Effects()
        job = queued[0]
        ctx = self.ctx(job)
        pipeline = PIPELINES[job.pipeline]
        if job.retry_from:
            tr = retry_from(pipeline, ctx, JobState.FAILED, job.retry_from)
        else:
            tr = start(pipeline, ctx)
        return self._apply(job, tr, None)

    # ------------------------------------------------------------------ command lifecycle

    def on_started(self, cmd_id: str, agent: str, started_at: float) -> Effects:
        with self.store.tx(durable=False):
            cmd = self.store.command(cmd_id)
            if cmd is None or cmd.state not in ("PENDING", "DISPATCHED"):
                return Effects()
            self.store.update_command(
                cmd_id, state="RUNNING", agent=agent, started_at=started_at, last_contact=time.time(), waiting_for=""
            )
            return self._running_on(cmd, agent)

    def on_dispatched(self, cmd_id: str, reply: P.ExecReply) -> Effects:
        """The agent accepted (or already knew) the command. Its STARTED event may have come first."""
        with self.store.tx(durable=False):
            cmd = self.store.command(cmd_id)
            if cmd is None or cmd.state not in ("PENDING", "DISPATCHED", "RUNNING"):
                return Effects()
            now = time.time()
            changes: dict = {"dispatched_at": now, "last_contact": now, "waiting_for": "", "agent": reply.agent}
            if cmd.state == "PENDING":
                changes["state"] = "RUNNING" if reply.status.state == "running" else "DISPATCHED"
            self.store.update_command(cmd_id, **changes)
            eff = self._running_on(cmd, reply.agent)
        if reply.status.state == "done":
            eff.add(self.on_done(cmd_id, reply.status))
        return eff

    def _running_on(self, cmd: CommandRow, agent: str) -> Effects:
        """A job's command reached its agent: pin the job there (its workspace lives there, later
        stages follow) and leave RETRY_WAIT."""
        job = self.store.job(cmd.job_id)
        assert job is not None
        changes: dict = {}
        if not job.agent:
            changes["agent"] = agent
        if job.state == JobState.RETRY_WAIT and cmd.kind == "stage":
            changes["state"] = JobState.RUNNING
        if changes:
            self.store.update_job(job.id, **changes)
            return Effects(publish=[job.id])
        return Effects()

    def touch(self, cmd_id: str) -> None:
        with self.store.tx(durable=False):
            self.store.update_command(cmd_id, last_contact=time.time())

    def on_dispatch_refused(self, cmd_id: str, why: str) -> None:
        """No agent took it (none fits, all busy, masters down): stay PENDING and say why."""
        with self.store.tx(durable=False):
            self.store.update_command(cmd_id, waiting_for=why, not_before=time.time() + 1.0)

    def on_done(
        self, cmd_id: str, status: P.CmdStatus, lost: bool = False, stamp: tuple[str, str, str, int] | None = None
    ) -> Effects:
        """A command finished (from its DONE event, a query, or the agent's loss): interpret it,
        move the job, and write the next command row -- with the event, in one transaction."""
        with self.store.tx():
            if stamp is not None and not self.store.record_event(*stamp):
                return Effects()
            cmd = self.store.command(cmd_id)
            if cmd is None or cmd.state not in ("PENDING", "DISPATCHED", "RUNNING"):
                return Effects()  # unknown, or handled before: events are idempotent
            self.store.update_command(
                cmd_id,
                state="LOST" if lost else "DONE",
                ended_at=status.ended_at or time.time(),
                started_at=cmd.started_at or status.started_at,
                exit_code=status.exit_code,
                signal=status.signal,
                status=msgspec.msgpack.encode(msgspec.structs.replace(status, stdout=b"", stderr=b"")),
                agent=status.agent or cmd.agent,
            )
            job = self.store.job(cmd.job_id)
            assert job is not None
            if cmd.kind == "cleanup":
                return Effects(dispatch=self._next_cleanup(job.id)).add(self._schedule_workspace(job.workspace))
            if job.state not in (JobState.RUNNING, JobState.RETRY_WAIT) or (job.stage, job.step, job.attempt) != (
                cmd.stage,
                cmd.step,
                cmd.attempt,
            ):
                return Effects()  # a command the job has moved past (cancelled, superseded)
            pipeline = PIPELINES[job.pipeline]
            ctx = self.ctx(job)
            outcome = pipeline.stage(job.stage).interpret(ctx, result_of(status, lost))
            self.store.update_command(
                cmd_id, outcome=str(outcome.kind), key_line=outcome.key_line, reason=outcome.reason
            )
            return self._apply(job, transition(pipeline, ctx, outcome), outcome)

    def lost(self, agent: str) -> Effects:
        """Every in-flight command on an agent that no master can reach any more."""
        eff = Effects()
        for cmd in self.store.in_flight_on(agent):
            eff.add(self.on_done(cmd.cmd_id, P.CmdStatus(cmd_id=cmd.cmd_id, agent=agent, state="done"), lost=True))
        return eff

    def _apply(self, job: JobRow, tr: Transition, outcome: Outcome | None) -> Effects:
        """Persist a transition (and the next command row) inside the caller's transaction."""
        changes = {
            "state": tr.state,
            "stage": tr.stage,
            "step": tr.step,
            "attempt": tr.attempt,
            "vars": msgspec.json.encode(tr.vars),
            "retry_from": None,
        }
        # A reason explains a failure or a pending retry; a job that moves on has none.
        changes["reason"] = tr.reason if tr.state in (JobState.FAILED, JobState.RETRY_WAIT) else ""
        if tr.key_line:
            changes["key_line"] = tr.key_line
        self.store.update_job(job.id, **changes)
        eff = Effects(publish=[job.id])
        if tr.command is not None:
            cmd_id = self._insert_command(job.id, "stage", tr.stage, tr.step, tr.attempt, tr.command, tr.delay_s)
            if tr.delay_s <= 0:
                eff.dispatch.append(cmd_id)
        if tr.terminal:
            eff.add(self._schedule_workspace(job.workspace))
        return eff

    def _insert_command(
        self, job_id: str, kind: str, stage: str, step: int, attempt: int, spec: CommandSpec, delay_s: float = 0.0
    ) -> str:
        cmd_id = ids.new_id("c")
        now = time.time()
        self.store.insert_command(
            CommandRow(
                cmd_id=cmd_id,
                job_id=job_id,
                kind=kind,
                stage=stage,
                step=step,
                attempt=attempt,
                spec=msgspec.json.encode(spec.for_storage()),
                secret=int(spec.stdin_secret),
                state="PENDING",
                agent="",
                not_before=now + delay_s,
                created_at=now,
                dispatched_at=0,
                started_at=0,
                ended_at=0,
                last_contact=0,
                exit_code=None,
                signal=None,
                status=None,
                key_line="",
                outcome="",
                reason="",
                waiting_for="",
            )
        )
        return cmd_id

    def dispatch_spec(self, cmd: CommandRow) -> P.CmdSpec:
        """The spec to send: from the store, or rebuilt with its secret (never stored)."""
        spec = msgspec.json.decode(cmd.spec, type=CommandSpec)
        if cmd.secret:
            job = self.store.job(cmd.job_id)
            assert job is not None
            ctx = self.ctx(job).at(cmd.stage, cmd.step, cmd.attempt, job.vars_dict())
            rebuilt = PIPELINES[job.pipeline].stage(cmd.stage).build(ctx)
            if rebuilt is not None:
                spec = rebuilt
        return P.CmdSpec(
            argv=spec.argv,
            cwd=spec.cwd,
            env=dict(spec.env),
            stdin=spec.stdin,
            stdin_secret=spec.stdin_secret,
            timeout=spec.timeout,
        )

    def due_pending(self, now: float) -> list[CommandRow]:
        """PENDING commands that may go now: at most one open command per job, oldest first."""
        out, seen_jobs = [], set()
        for cmd in self.store.open_commands():
            if cmd.job_id in seen_jobs:
                continue
            seen_jobs.add(cmd.job_id)
            if cmd.state == "PENDING" and cmd.not_before <= now:
                out.append(cmd)
        return out

    def route(self, cmd: CommandRow) -> dict:
        job = self.store.job(cmd.job_id)
        assert job is not None
        return {"job_id": job.id, "agent": job.agent or None, "pool": job.pool or None, "workspace": job.workspace}

    # ------------------------------------------------------------------ requests from people

    def resume(self, job_id: str) -> Effects:
        with self.store.tx():
            job = self._job(job_id)
            try:
                tr = resume_transition(PIPELINES[job.pipeline], self.ctx(job), JobState(job.state))
            except RefusedTransition as exc:
                raise JobError(str(exc)) from None
            return self._apply(job, tr, None)

    def retry(self, job_id: str, from_stage: str | None) -> Effects:
        with self.store.tx():
            job = self._job(job_id)
            try:
                # Validate now, so a bad --from is refused at once rather than when scheduled.
                retry_from(PIPELINES[job.pipeline], self.ctx(job), JobState(job.state), from_stage)
            except RefusedTransition as exc:
                raise JobError(str(exc)) from None
            self.store.update_job(job.id, state=JobState.QUEUED, retry_from=from_stage or job.stage, reason="")
            return Effects(publish=[job.id]).add(self._schedule_workspace(job.workspace))

    def cancel(self, job_id: str, revert: bool) -> Effects:
        with self.store.tx():
            job = self._job(job_id)
            if job.state in TERMINAL:
                raise JobError(f"job {job_id} is already {job.state}: nothing to cancel")
            eff = Effects(publish=[job.id])
            for cmd in self.store.open_commands(job.id):
                if cmd.state in ("DISPATCHED", "RUNNING"):
                    eff.kill.append((cmd.cmd_id, cmd.agent))
                self.store.update_command(
                    cmd.cmd_id, state="CANCELLED", ended_at=time.time(), reason="cancelled by request"
                )
            self.store.update_job(job.id, state=JobState.CANCELLED, reason="cancelled by request")
            if revert and job.state != JobState.QUEUED:
                pipeline = PIPELINES[job.pipeline]
                for spec in pipeline.cleanup(self.ctx(job)):
                    self._insert_command(job.id, "cleanup", "CLEANUP", 0, 1, spec)
                # The pending change is gone after the cleanup: a retry must create a new one.
                vars = {k: v for k, v in job.vars_dict().items() if k != "change"}
                self.store.update_job(job.id, vars=msgspec.json.encode(vars))
                eff.dispatch += self._next_cleanup(job.id)
            eff.add(self._schedule_workspace(job.workspace))
            return eff

    def _next_cleanup(self, job_id: str) -> list[str]:
        pending = self.store.open_commands(job_id)
        return [pending[0].cmd_id] if pending and pending[0].state == "PENDING" else []

    def _job(self, job_id: str) -> JobRow:
        job = self.store.job(job_id)
        if job is None:
            raise JobError(f"no job {job_id!r} (list jobs with `p4bus status --all`)", "unknown_job")
        return job

    def auto_recheck(self, now: float) -> Effects:
        """Re-check WAITING_RESOLVE jobs every recheck_interval_s, if configured."""
        interval = self.conf.recheck_interval_s
        eff = Effects()
        if interval <= 0:
            return eff
        for job in self.store.jobs("state='WAITING_RESOLVE' AND updated_at < ?", (now - interval,)):
            eff.add(self.resume(job.id))
        return eff

    # ------------------------------------------------------------------ views

    def view(self, job_id: str) -> P.JobView:
        job = self._job(job_id)
        return self._view(job, self.store.job_commands(job.id))

    def views(self, include_finished: bool, limit: int) -> list[P.JobView]:
        where = "1" if include_finished else f"state NOT IN ({','.join('?' * len(TERMINAL))})"
        args = () if include_finished else tuple(str(s) for s in TERMINAL)
        jobs = self.store.jobs(where, args, limit, newest=True)
        return [self._view(j, []) for j in jobs]

    def _view(self, job: JobRow, cmds: list[CommandRow]) -> P.JobView:
        vars = job.vars_dict()
        params = msgspec.json.decode(job.params)
        waiting = ""
        position = 0
        open_cmds = [c for c in (cmds or self.store.open_commands(job.id)) if c.state == "PENDING"]
        if job.state == JobState.WAITING_RESOLVE:
            waiting = "a person to resolve the conflicts, then `p4bus resume`"
        elif open_cmds and open_cmds[0].waiting_for:
            waiting = open_cmds[0].waiting_for
        elif job.state == JobState.RETRY_WAIT:
            waiting = "backoff before the next attempt"
        elif job.state == JobState.QUEUED:
            position = [q.id for q in self.store.queued(job.workspace)].index(job.id) + 1
            active = self.store.active_job(job.workspace)
            ahead = f"job {active.id}" if active else "the workspace"
            waiting = f"{ahead} on workspace {job.workspace} (number {position} in its queue)"
        return P.JobView(
            job_id=job.id,
            state=job.state,
            stage=job.stage,
            pipeline=job.pipeline,
            workspace=job.workspace,
            created_at=job.created_at,
            updated_at=job.updated_at,
            agent=job.agent or "",
            params={k: v for k, v in params.items() if k != "workspace" and v not in (None, "")},
            reason=job.reason,
            key_line=job.key_line,
            conflicts=list(vars.get(CONFLICTS_KEY, [])),
            change=vars.get("change"),
            submitted_change=vars.get("submitted_change"),
            waiting_for=waiting,
            queue_position=position,
            timeline=[self._run(c) for c in cmds],
        )

    @staticmethod
    def _run(c: CommandRow) -> P.StageRun:
        spec = msgspec.json.decode(c.spec)
        return P.StageRun(
            stage=c.stage,
            step=c.step,
            attempt=c.attempt,
            cmd_id=c.cmd_id,
            state=c.state,
            agent=c.agent,
            argv=spec.get("argv", []),
            created_at=c.created_at,
            started_at=c.started_at,
            ended_at=c.ended_at,
            exit_code=c.exit_code,
            signal=c.signal,
            key_line=c.key_line,
            outcome=c.outcome,
            reason=c.reason,
        )
