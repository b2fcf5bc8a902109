"""Jobs moving through their pipelines: every decision, persisted before anything is sent.

The engine owns the store and the pure pipeline logic; it performs no I/O on sockets. Each
public method runs one atomic step (a transaction of its own, or a savepoint of the loop's
batch: orchestrator/service.py) and returns the Effects to carry out after the commit
(dispatch a command, kill one, publish a job event). If the process dies between the commit
and the effects, start-up reconciliation redoes them: a PENDING command is dispatched again
(idempotent by cmd_id), an in-flight one is asked about.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypedDict

import msgspec

from common import logs
from common import protocol as P
from common.config import ConfigError, OrchestratorConf, WorkspaceConf, read_password_file
from orchestrator.clock import Clock, system_clock, utc_day, utc_time
from orchestrator.pipeline import (
    PASSWORD_SECRET,
    PIPELINES,
    TERMINAL,
    CommandResult,
    JobContext,
    JobParams,
    JobState,
    Outcome,
    Pipeline,
    RefusedTransition,
    SiteConfig,
    Transition,
    Workspace,
    approve_transition,
    resume_transition,
    retry_from,
    start,
    transition,
    validate_params,
    validate_site,
)
from orchestrator.pipeline.transition import CONFLICTS_KEY
from orchestrator.pipeline.validate import blocklist_errors
from orchestrator.store import IN_FLIGHT, OPEN, CmdKind, CmdState, CommandRow, JobRow, Store

log = logs.get("orchestrator.engine")


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


class Route(TypedDict):
    """Where a job's command may run: the Exec's routing fields."""

    job_id: str
    agent: str | None
    pool: str | None
    workspace: str


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
    def __init__(
        self,
        store: Store,
        conf: OrchestratorConf,
        environ: Mapping[str, str] | None = None,
        pipelines: Mapping[str, Pipeline] = PIPELINES,
        clock: Clock = system_clock,
    ) -> None:
        self.store = store
        self.conf = conf
        self.environ = os.environ if environ is None else environ
        self.pipelines = pipelines
        self.clock = clock
        try:
            self.site = msgspec.convert(conf.site, SiteConfig, strict=False)
        except msgspec.ValidationError as exc:
            raise JobError(f"orchestrator.site in the configuration is invalid: {exc}") from None
        problems = validate_site(self.site)
        if problems:
            raise JobError("orchestrator.site in the configuration: " + "; ".join(problems))
        blocklists = [
            problem
            for name, wc in conf.workspaces.items()
            for problem in blocklist_errors(f"orchestrator.workspaces.{name}.blocklist", wc.blocklist)
        ]
        if blocklists:
            raise JobError("; ".join(blocklists))
        for name, wc in conf.workspaces.items():
            if wc.password_file:
                try:
                    read_password_file(wc.password_file)
                except ConfigError as exc:
                    raise JobError(f"orchestrator.workspaces.{name}: {exc}") from None

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
            blocklist=list(wc.blocklist),
            review_before_submit=wc.review_before_submit,
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
        if wc.password_file:
            try:
                return {PASSWORD_SECRET: read_password_file(wc.password_file)}
            except ConfigError as exc:
                # Checked at start; changed since. The login step then fails for want of it.
                log.error("password refused", workspace=workspace, error=str(exc))
        return {}

    def ctx(self, job: JobRow) -> JobContext:
        return JobContext(
            params=job.params,
            site=self.site,
            stage=job.stage,
            step=job.step,
            attempt=job.attempt,
            vars=job.vars,
            job_id=job.id,
            secrets=self._secrets(job.workspace),
        )

    # ------------------------------------------------------------------ submit and schedule

    def submit(self, req: P.Submit) -> tuple[str, Effects]:
        if req.pipeline not in self.pipelines:
            raise JobError(f"unknown pipeline {req.pipeline!r} (known: {', '.join(self.pipelines)})")
        name = req.workspace or self._default_workspace()
        ws = self.workspace(name)
        params = JobParams(
            workspace=ws,
            source=req.source,
            target=req.target,
            branch_spec=req.branch_spec,
            change=req.change,
            desc=req.desc,
            submitted_by=req.by,
        )
        errors = validate_params(params, self.conf.workspaces.keys())
        if errors:
            raise JobError("; ".join(errors))
        agent, pool = self.submit_route(req)
        now = self.clock()
        day = utc_day(now)
        with self.store.tx():
            job_id = f"INT-{day}-{self.store.next_counter('job-' + day):04d}"
            self.store.add_job(
                job_id,
                req.pipeline,
                params,
                agent=agent,
                pool=pool,
                first_stage=self.pipelines[req.pipeline].first().name,
                now=now,
            )
            eff = Effects(publish=[job_id])
            eff.add(self._schedule_workspace(name))
        return job_id, eff

    def submit_route(self, req: P.Submit) -> tuple[str | None, str | None]:
        """The agent and pool a submitted job is bound to: the request's, else its workspace's."""
        wc = self._ws_conf(req.workspace or self._default_workspace())
        return req.agent or wc.agent, req.pool or wc.pool

    def _default_workspace(self) -> str:
        if not self.conf.workspaces:
            raise JobError(
                "no workspace given and none is configured: add an [orchestrator.workspaces.NAME] "
                "section to the orchestrator's config"
            )
        if len(self.conf.workspaces) == 1:
            return next(iter(self.conf.workspaces))
        raise JobError(
            "no workspace given and more than one is configured: pass --workspace "
            f"({', '.join(sorted(self.conf.workspaces))})"
        )

    def schedule(self) -> Effects:
        eff = Effects()
        with self.store.tx():
            for ws in self.store.queued_workspaces():
                eff.add(self._schedule_workspace(ws))
        return eff

    def _schedule_workspace(self, workspace: str) -> Effects:
        """Start the oldest queued job of a free workspace (inside the caller's transaction)."""
        if self.store.workspace_busy(workspace):
            return Effects()
        queued = self.store.queued(workspace, limit=1)
        if not queued:
            return Effects()
        job = queued[0]
        ctx = self.ctx(job)
        pipeline = self.pipelines[job.pipeline]
        if job.retry_from:
            tr = retry_from(pipeline, ctx, JobState.FAILED, job.retry_from)
        else:
            tr = start(pipeline, ctx)
        return self._apply(job, tr, None)

    # ------------------------------------------------------------------ command lifecycle

    def on_started(self, cmd_id: str, agent: str, started_at: float) -> Effects:
        with self.store.tx(durable=False):
            cmd = self.store.command(cmd_id)
            if cmd is None or cmd.state not in (CmdState.PENDING, CmdState.DISPATCHED):
                return Effects()
            self.store.mark_started(cmd_id, agent, started_at, self.clock())
            return self._running_on(cmd, agent)

    def on_dispatched(self, cmd_id: str, reply: P.ExecReply) -> Effects:
        """The agent accepted (or already knew) the command. Its STARTED event may have come
        first; its result may come with the reply (then it is applied in the same step, durable
        from its start: a batch it begins need not be flushed again at its end)."""
        with self.store.tx(durable=reply.status.state == "done"):
            cmd = self.store.command(cmd_id)
            if cmd is None or cmd.state not in OPEN:
                return Effects()
            state = cmd.state
            if cmd.state == CmdState.PENDING:
                state = CmdState.RUNNING if reply.status.state == "running" else CmdState.DISPATCHED
            self.store.record_dispatch(cmd_id, reply.agent, state, self.clock())
            eff = self._running_on(cmd, reply.agent)
            if reply.status.state == "done":
                # The row as just written: the result is applied without reading it again.
                eff.add(self._done(dataclasses.replace(cmd, state=state, agent=reply.agent), reply.status))
        return eff

    def _running_on(self, cmd: CommandRow, agent: str) -> Effects:
        """A job's command reached its agent: pin the job there (its workspace lives there, later
        stages follow) and leave RETRY_WAIT. Conditional updates: the job is not read to decide."""
        now = self.clock()
        pinned = self.store.pin_agent(cmd.job_id, agent, now)
        left_wait = cmd.kind == CmdKind.STAGE and self.store.move_state(
            cmd.job_id, JobState.RETRY_WAIT, JobState.RUNNING, now
        )
        return Effects(publish=[cmd.job_id]) if pinned or left_wait else Effects()

    def still_running(self, cmd_id: str) -> Effects:
        """Its agent's spool says it runs: heard from, and RUNNING again if it was UNKNOWN."""
        now = self.clock()
        with self.store.tx(durable=False):
            cmd = self.store.command(cmd_id)
            if cmd is None or cmd.state not in IN_FLIGHT:
                return Effects()
            self.store.touch(cmd_id, now)
            if cmd.state != CmdState.UNKNOWN:
                return Effects()
            self.store.mark_reached(cmd_id, now)
            log.info("cmd.reached", cmd_id=cmd_id, agent=cmd.agent, unknown_for_s=round(now - cmd.unknown_since, 1))
            if self.store.move_state(cmd.job_id, JobState.UNKNOWN, JobState.RUNNING, now):
                return Effects(publish=[cmd.job_id])
            return Effects()

    def unreachable(self, agent: str, since: float) -> Effects:
        """No master has reached ``agent`` since ``since``: its commands are UNKNOWN (they may
        still be running there) until it answers. Each is given up on -- LOST, and its stage's
        on_lost policy decides -- once its stage's unknown deadline has passed."""
        now = self.clock()
        eff = Effects()
        with self.store.tx():
            for cmd in self.store.in_flight_on(agent):
                if cmd.state != CmdState.UNKNOWN:
                    log.warning("cmd.unknown", cmd_id=cmd.cmd_id, agent=agent, stage=cmd.stage, since=since)
                    self.store.mark_unknown(cmd.cmd_id, since)
                    cmd = dataclasses.replace(cmd, state=CmdState.UNKNOWN, unknown_since=since)
                    if cmd.kind == CmdKind.STAGE and self.store.move_state(
                        cmd.job_id, JobState.RUNNING, JobState.UNKNOWN, now
                    ):
                        eff.publish.append(cmd.job_id)
                if now - cmd.unknown_since >= self.unknown_deadline(cmd):
                    eff.add(self._give_up(cmd, now))
        return eff

    def _give_up(self, cmd: CommandRow, now: float) -> Effects:
        """The deadline passed with the agent still silent: the command is LOST. A job the
        orchestrator pinned to that agent may run its next command on another one."""
        log.warning(
            "cmd.given_up", cmd_id=cmd.cmd_id, agent=cmd.agent, stage=cmd.stage, unknown_for_s=now - cmd.unknown_since
        )
        self.store.unpin_agent(cmd.job_id, cmd.agent, now)
        return self.on_done(cmd.cmd_id, P.CmdStatus(cmd_id=cmd.cmd_id, agent=cmd.agent, state="done"), lost=True)

    def unknown_deadline(self, cmd: CommandRow) -> float:
        """How long ``cmd`` may stay UNKNOWN: its stage's policy, else the orchestrator's."""
        job = self.store.job(cmd.job_id)
        if cmd.kind == CmdKind.STAGE and job is not None:
            stage = self.pipelines[job.pipeline].stage(cmd.stage)
            own = self.site.policy_for(cmd.stage, stage.retry).unknown_deadline_s
            if own is not None:
                return own
        return self.conf.unknown_deadline_s

    def on_dispatch_refused(self, cmd_id: str, why: str, refused: bool = True) -> Effects:
        """No agent took it: it stays PENDING and says why. ``refused``: an agent or master
        said no (none fits, busy, its spool failed) rather than nobody answering (a master
        down, a request timed out: it may have reached an agent). Refused again and again for
        dispatch_refused_deadline_s, the command fails its stage with the last reason. A job
        the orchestrator pinned to an agent that has refused it for the stage's unknown deadline
        (an agent gone between two commands) is unpinned first, and the clock starts again."""
        now = self.clock()
        with self.store.tx(durable=False):
            cmd = self.store.command(cmd_id)
            if cmd is None or cmd.state != CmdState.PENDING:
                return Effects()
            since = (cmd.refused_since or now) if refused else None
            job = self.store.job(cmd.job_id)
            gone = since is not None and now - since >= self.unknown_deadline(cmd)
            if gone and job is not None and job.agent_pinned:
                log.warning("job.unpinned", job_id=job.id, agent=job.agent, refused_for_s=now - (since or now), why=why)
                self.store.unpin_agent(job.id, job.agent or "", now)
                since = now
            if since is None or now - since < self.conf.dispatch_refused_deadline_s:
                self.store.defer_dispatch(cmd_id, why, not_before=now + 1.0, refused_since=since)
                return Effects()
        log.warning("dispatch.given_up", cmd_id=cmd_id, refused_for_s=now - since, why=why)
        error = f"no agent took it for {now - since:.0f}s (orchestrator.dispatch_refused_deadline_s): {why}"
        return self.on_done(cmd_id, P.CmdStatus(cmd_id=cmd_id, state="done", error=error))

    def newly_waiting(self, cmd_id: str, why: str) -> str | None:
        """The job whose command is about to wait for a new reason (no agent fits, the agent is
        offline), so a job event can tell people what it waits for; None when nothing changes."""
        cmd = self.store.command(cmd_id)
        if cmd is None or cmd.state != CmdState.PENDING or cmd.waiting_for == why:
            return None
        return cmd.job_id

    def on_done(
        self, cmd_id: str, status: P.CmdStatus, lost: bool = False, stamp: tuple[str, str, str, int] | None = None
    ) -> Effects:
        """A command finished (from its DONE event, a query, or the agent's loss): interpret it,
        move the job, and write the next command row -- with the event, in one transaction."""
        with self.store.tx():
            if stamp is not None and not self.store.record_event(*stamp, now=self.clock()):
                return Effects()
            cmd = self.store.command(cmd_id)
            if cmd is None or cmd.state not in OPEN:
                return Effects()  # unknown, or handled before: events are idempotent
            return self._done(cmd, status, lost)

    def _done(self, cmd: CommandRow, status: P.CmdStatus, lost: bool = False) -> Effects:
        """on_done for an open command's row (inside the caller's transaction)."""
        with self.store.tx():
            job = self.store.job(cmd.job_id)
            assert job is not None
            finish = partial(
                self.store.finish_command,
                cmd.cmd_id,
                CmdState.LOST if lost else CmdState.DONE,
                status,
                started_at=cmd.started_at or status.started_at,
                ended_at=status.ended_at or self.clock(),
                agent=status.agent or cmd.agent,
            )
            if cmd.kind == CmdKind.CLEANUP:
                finish()
                return Effects(dispatch=self._next_cleanup(job.id)).add(self._schedule_workspace(job.workspace))
            moving = job.state in (JobState.RUNNING, JobState.UNKNOWN, JobState.RETRY_WAIT)
            if not moving or (job.stage, job.step, job.attempt) != (cmd.stage, cmd.step, cmd.attempt):
                finish()
                return Effects()  # a command the job has moved past (cancelled, superseded)
            pipeline = self.pipelines[job.pipeline]
            ctx = self.ctx(job)
            outcome = pipeline.stage(job.stage).interpret(ctx, result_of(status, lost))
            finish(outcome=(str(outcome.kind), outcome.key_line, outcome.reason))
            return self._apply(job, transition(pipeline, ctx, outcome), outcome)

    def _apply(self, job: JobRow, tr: Transition, outcome: Outcome | None) -> Effects:
        """Persist a transition (and the next command row) inside the caller's transaction."""
        now = self.clock()
        # A reason explains a failure or a pending retry; a job that moves on has none.
        reason = tr.reason if tr.state in (JobState.FAILED, JobState.RETRY_WAIT) else ""
        if tr.state == JobState.FAILED:
            reason += self._blocking_job_hint(job, tr.vars)
        self.store.apply_transition(job.id, tr.state, tr.stage, tr.step, tr.attempt, tr.vars, reason, tr.key_line, now)
        eff = Effects(publish=[job.id])
        if tr.state == JobState.FAILED and self._ws_conf(job.workspace).cleanup_on_failure:
            eff.add(self._start_cleanup(job.id, now))
        if tr.command is not None:
            cmd_id = self.store.add_command(
                job.id, CmdKind.STAGE, tr.stage, tr.step, tr.attempt, tr.command, now + tr.delay_s, now
            )
            if tr.delay_s <= 0:
                eff.dispatch.append(cmd_id)
        if tr.terminal:
            eff.add(self._schedule_workspace(job.workspace))
        return eff

    def dispatch_spec(self, cmd: CommandRow) -> P.CmdSpec:
        """The spec to send: from the store, or rebuilt with its secret (never stored)."""
        spec = cmd.spec
        if cmd.secret:
            job = self.store.job(cmd.job_id)
            assert job is not None
            ctx = self.ctx(job).at(cmd.stage, cmd.step, cmd.attempt, job.vars)
            rebuilt = self.pipelines[job.pipeline].stage(cmd.stage).build(ctx)
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
        return self.store.due(now)

    def route(self, cmd: CommandRow) -> Route:
        job = self.store.job(cmd.job_id)
        assert job is not None
        return Route(job_id=job.id, agent=job.agent or None, pool=job.pool or None, workspace=job.workspace)

    def exec_of(self, cmd_id: str) -> tuple[CommandRow, Route, P.CmdSpec] | None:
        """What an Exec of a PENDING command carries (its route and spec), from one read of the
        store; None when it is not PENDING any more."""
        found = self.store.dispatchable(cmd_id)
        if found is None:
            return None
        cmd, agent, pool, workspace = found
        route = Route(job_id=cmd.job_id, agent=agent or None, pool=pool or None, workspace=workspace)
        return cmd, route, self.dispatch_spec(cmd)

    # ------------------------------------------------------------------ requests from people

    def resume(self, job_id: str) -> Effects:
        with self.store.tx():
            job = self._job(job_id)
            try:
                tr = resume_transition(self.pipelines[job.pipeline], self.ctx(job), job.state)
            except RefusedTransition as exc:
                raise JobError(str(exc)) from None
            return self._apply(job, tr, None)

    def retry(self, job_id: str, from_stage: str | None) -> Effects:
        with self.store.tx():
            job = self._job(job_id)
            try:
                # Validate now, so a bad --from is refused at once rather than when scheduled.
                retry_from(self.pipelines[job.pipeline], self.ctx(job), job.state, from_stage)
            except RefusedTransition as exc:
                raise JobError(str(exc)) from None
            self.store.requeue(job.id, from_stage or job.stage, self.clock())
            return Effects(publish=[job.id]).add(self._schedule_workspace(job.workspace))

    def cancel(self, job_id: str, revert: bool) -> Effects:
        with self.store.tx():
            job = self._job(job_id)
            if job.state in TERMINAL:
                left = (
                    f"; `p4bus cleanup {job_id}` reverts and deletes its pending change" if "change" in job.vars else ""
                )
                raise JobError(f"job {job_id} is already {job.state}: nothing to cancel{left}")
            now = self.clock()
            eff = Effects(publish=[job.id])
            for cmd in self.store.open_commands(job.id):
                if cmd.state in IN_FLIGHT:
                    eff.kill.append((cmd.cmd_id, cmd.agent))
                self.store.cancel_command(cmd.cmd_id, "cancelled by request", now)
            self.store.cancel_job(job.id, "cancelled by request", now)
            if revert:
                # A queued job that was retried still has the pending change of its first run.
                eff.add(self._start_cleanup(job.id, now))
            eff.add(self._schedule_workspace(job.workspace))
            return eff

    def cleanup(self, job_id: str) -> Effects:
        """`p4bus cleanup`: revert a FAILED or CANCELLED job's pending change and delete it and its
        shelf, through the agent, as the job's own commands."""
        with self.store.tx():
            job = self._job(job_id)
            if job.state not in (JobState.FAILED, JobState.CANCELLED):
                hint = f"`p4bus cancel --revert {job_id}` cancels it and cleans up" if job.state not in TERMINAL else ""
                raise JobError(
                    f"job {job_id} is {job.state}: only a FAILED or CANCELLED job is cleaned up"
                    + (f"; {hint}" if hint else "")
                )
            if self.store.open_commands(job.id):
                raise JobError(f"job {job_id} is being cleaned up already: `p4bus status {job_id}` shows its commands")
            if "change" not in job.vars:
                raise JobError(
                    f"job {job_id} has no pending change to clean up (it created none, or it was cleaned up already)"
                )
            return Effects(publish=[job.id]).add(self._start_cleanup(job.id, self.clock()))

    def _start_cleanup(self, job_id: str, now: float) -> Effects:
        """Write the pipeline's cleanup commands for the job's pending change (on_done runs them one
        after another) and forget the change: a retry creates a new one. The workspace's next job
        waits until they are done (an open command keeps the workspace busy)."""
        job = self.store.job(job_id)
        assert job is not None
        specs = self.pipelines[job.pipeline].cleanup(self.ctx(job))
        if not specs:
            return Effects()
        for spec in specs:
            self.store.add_command(job.id, CmdKind.CLEANUP, "CLEANUP", 0, 1, spec, now, now)
        self.store.set_vars(job.id, {k: v for k, v in job.vars.items() if k != "change"}, now)
        return Effects(dispatch=self._next_cleanup(job.id))

    def _blocking_job_hint(self, job: JobRow, vars: Mapping[str, Any]) -> str:
        """When another pending change holds the job's files and a p4bus job left it: which one,
        and how to clean it up."""
        held = vars.get("blocking_change")
        owner = self.store.job_with_change(job.workspace, held, other_than=job.id) if isinstance(held, int) else None
        if owner is None:
            return ""
        how = (
            f"`p4bus cleanup {owner.id}` cleans it up"
            if owner.state in (JobState.FAILED, JobState.CANCELLED)
            else f"`p4bus cancel --revert {owner.id}` cancels it and cleans up"
        )
        return f" (change {held} is the pending change of job {owner.id}, {owner.state}: {how})"

    def approve(self, job_id: str) -> Effects:
        """`p4bus approve`: a person reviewed the shelf of a job waiting for approval; submit it."""
        with self.store.tx():
            job = self._job(job_id)
            try:
                tr = approve_transition(self.pipelines[job.pipeline], self.ctx(job), job.state)
            except RefusedTransition as exc:
                raise JobError(str(exc)) from None
            return self._apply(job, tr, None)

    def _next_cleanup(self, job_id: str) -> list[str]:
        pending = self.store.open_commands(job_id)
        return [pending[0].cmd_id] if pending and pending[0].state == CmdState.PENDING else []

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
        for job in self.store.waiting_resolve_since(now - interval):
            eff.add(self.resume(job.id))
        return eff

    # ------------------------------------------------------------------ views

    def view(self, job_id: str) -> P.JobView:
        job = self._job(job_id)
        return self._view(job, self.store.job_commands(job.id))

    def summary(self, job_id: str) -> P.JobView:
        """What a job event says: the view without its timeline and parameters (no command row
        but the open ones read, the parameters not decoded)."""
        return self._view(self._job(job_id), [], full=False)

    def views(self, include_finished: bool, limit: int) -> list[P.JobView]:
        active: dict[str, JobRow | None] = {}  # by workspace: a deep queue lists many of each
        return [self._view(j, [], active) for j in self.store.list_jobs(include_finished, limit)]

    def _view(
        self, job: JobRow, cmds: list[CommandRow], active: dict[str, JobRow | None] | None = None, full: bool = True
    ) -> P.JobView:
        vars = job.vars
        params = msgspec.structs.asdict(job.params) if full else {}
        waiting = ""
        position = 0
        live = cmds or self.store.open_commands(job.id)
        open_cmds = [c for c in live if c.state == CmdState.PENDING]
        unknown = [c for c in live if c.state == CmdState.UNKNOWN]
        if job.state == JobState.WAITING_RESOLVE:
            waiting = "a person to resolve the conflicts, then `p4bus resume`" + self._what_to_resolve(job, cmds)
        elif job.state == JobState.WAITING_APPROVAL:
            shelf = f"shelved change {vars.get('change')}" if vars.get("change") else "the shelved change"
            waiting = f"a person to review {shelf}, then `p4bus approve {job.id}` (or `p4bus cancel --revert`)"
        elif unknown:
            waiting = self._awaiting(unknown[0])
        elif open_cmds and open_cmds[0].waiting_for:
            waiting = open_cmds[0].waiting_for
        elif job.state == JobState.RETRY_WAIT:
            waiting = "backoff before the next attempt"
        elif job.state == JobState.QUEUED:
            position = self.store.queue_position(job)
            if active is None:
                active = {}
            if job.workspace not in active:
                active[job.workspace] = self.store.active_job(job.workspace)
            holder = active[job.workspace]
            ahead = f"job {holder.id}" if holder else "the workspace"
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
            attempt=job.attempt,
        )

    def _what_to_resolve(self, job: JobRow, cmds: list[CommandRow]) -> str:
        """What the check that sent the job to WAITING_RESOLVE found (conflicts, or markers left
        in resolved files, with their lines), in brackets."""
        runs = cmds or self.store.job_commands(job.id)
        last = next((c for c in reversed(runs) if c.kind == CmdKind.STAGE and c.outcome), None)
        return f" ({last.reason})" if last is not None and last.reason else ""

    def _awaiting(self, cmd: CommandRow) -> str:
        give_up = cmd.unknown_since + self.unknown_deadline(cmd)
        return (
            f"agent {cmd.agent}, unreachable since {utc_time(cmd.unknown_since)}: {cmd.stage} may still be "
            f"running there; its result is awaited until {utc_time(give_up)}, then {cmd.stage} is given up on there"
        )

    @staticmethod
    def _run(c: CommandRow) -> P.StageRun:
        return P.StageRun(
            stage=c.stage,
            step=c.step,
            attempt=c.attempt,
            cmd_id=c.cmd_id,
            state=c.state,
            agent=c.agent,
            argv=c.spec.argv,
            created_at=c.created_at,
            started_at=c.started_at,
            ended_at=c.ended_at,
            exit_code=c.exit_code,
            signal=c.signal,
            key_line=c.key_line,
            outcome=c.outcome,
            reason=c.reason,
        )
