"""The job state machine as pure functions: given where a job is and what its last command
meant, where it goes next and which command (if any) to dispatch.

The orchestrator persists the returned Transition (state, stage, step, attempt, vars and the
command row) in one transaction, then dispatches `command` after `delay_s`. Stages whose
builder returns None are passed over here, so the orchestrator never sees a skip.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import msgspec

from orchestrator.pipeline.model import (
    BuildError,
    CommandSpec,
    JobContext,
    Outcome,
    OutcomeKind,
    Pipeline,
    Stage,
)
from orchestrator.pipeline.rules import RETURNED_KEY

# Where a `come_back` call returns to; lives in vars while the called stage runs.
RETURN_KEY = "_return"
CONFLICTS_KEY = "conflicts"
# A person approved the job's gated stage (review_before_submit); dropped when the job goes
# back to re-check or re-run earlier stages, since what was reviewed may change.
APPROVED_KEY = "approved"


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    WAITING_RESOLVE = "WAITING_RESOLVE"
    WAITING_APPROVAL = "WAITING_APPROVAL"  # before a gated stage, until `p4bus approve`
    RETRY_WAIT = "RETRY_WAIT"  # RUNNING, with the next command held back for delay_s
    # RUNNING, with its command's agent unreachable: the command may still be running there.
    # Set and cleared by the orchestrator (never by a transition).
    UNKNOWN = "UNKNOWN"
    DONE = "DONE"
    NOTHING_TO_DO = "NOTHING_TO_DO"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL = frozenset({JobState.DONE, JobState.NOTHING_TO_DO, JobState.FAILED, JobState.CANCELLED})


@dataclasses.dataclass(frozen=True)
class Transition:
    state: JobState
    stage: str  # the stage to run next, waiting in, or where the job ended
    step: int
    attempt: int
    vars: dict[str, Any]  # the job's complete vars to persist (never holds secrets)
    command: CommandSpec | None = None  # to dispatch for (stage, step, attempt)
    delay_s: float = 0.0
    # About the command just interpreted, for the stage timeline and the failure reason.
    reason: str = ""
    key_line: str = ""
    skipped: tuple[str, ...] = ()  # stages passed over on the way to `stage`

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


class RefusedTransition(ValueError):
    """A person asked for something the job's state does not allow; the message says why
    and what to do instead."""


def _transient_free(vars: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in vars.items() if k not in (RETURN_KEY, RETURNED_KEY)}


class _Walk:
    """One transition's walk over the pipeline, collecting skipped stages on the way."""

    def __init__(self, pipeline: Pipeline, ctx: JobContext, vars: dict[str, Any], outcome: Outcome | None):
        self.pipeline, self.ctx, self.vars = pipeline, ctx, vars
        self.reason = outcome.reason if outcome else ""
        self.key_line = outcome.key_line if outcome else ""
        self.skipped: list[str] = []

    def result(self, state: JobState, stage: str, step: int = 0, attempt: int = 1, **kw: Any) -> Transition:
        kw.setdefault("reason", self.reason)
        return Transition(
            state=state,
            stage=stage,
            step=step,
            attempt=attempt,
            vars=self.vars,
            key_line=self.key_line,
            skipped=tuple(self.skipped),
            **kw,
        )

    def dispatch(
        self, stage: str, step: int = 0, attempt: int = 1, state: JobState = JobState.RUNNING, delay_s: float = 0.0
    ) -> Transition:
        """Run (stage, step) if it builds a command; otherwise that stage is over. A gated
        stage waits for a person's approval first."""
        definition = self.pipeline.stage(stage)
        if step == 0 and self._needs_approval(definition):
            return self.result(JobState.WAITING_APPROVAL, stage, reason="")
        try:
            spec = definition.build(self.ctx.at(stage, step, attempt, self.vars))
        except BuildError as exc:
            return self.result(JobState.FAILED, stage, step, attempt, reason=str(exc))
        if spec is None:
            if step == 0:
                self.skipped.append(stage)
            return self.finish(stage)
        if spec.timeout is None:
            spec = msgspec.structs.replace(spec, timeout=definition.timeout)
        return self.result(state, stage, step, attempt, command=spec, delay_s=delay_s)

    def _needs_approval(self, definition: Stage) -> bool:
        gated = definition.gate is not None and definition.gate(self.ctx.at(definition.name, 0, 1, self.vars))
        return gated and not self.vars.get(APPROVED_KEY)

    def finish(self, stage: str) -> Transition:
        """`stage` is over: return from a call, or go to the next stage, or the job is done."""
        if RETURN_KEY in self.vars:
            back = self.vars.pop(RETURN_KEY)
            self.vars[RETURNED_KEY] = back
            return self.dispatch(back)
        following = self.pipeline.next_after(stage)
        if following is None:
            return self.result(JobState.DONE, stage)
        return self.dispatch(following.name)


def start(pipeline: Pipeline, ctx: JobContext) -> Transition:
    """QUEUED -> the first stage that has something to run."""
    return _Walk(pipeline, ctx, _transient_free(dict(ctx.vars)), None).dispatch(pipeline.first().name)


def transition(pipeline: Pipeline, ctx: JobContext, outcome: Outcome) -> Transition:
    """Where a RUNNING job goes after its command for (ctx.stage, ctx.step) was interpreted."""
    # The came-back marker is for exactly one command: the first after the return.
    vars = {k: v for k, v in ctx.vars.items() if k != RETURNED_KEY}
    vars.update(outcome.updates)
    walk = _Walk(pipeline, ctx, vars, outcome)
    match outcome.kind:
        case OutcomeKind.NEXT if outcome.goto:
            if outcome.come_back:
                vars[RETURN_KEY] = ctx.stage
            return walk.dispatch(outcome.goto)
        case OutcomeKind.NEXT:
            return walk.finish(ctx.stage)
        case OutcomeKind.REPEAT:
            return walk.dispatch(ctx.stage, ctx.step + 1)
        case OutcomeKind.RERUN:
            return walk.dispatch(ctx.stage, ctx.step, ctx.attempt)
        case OutcomeKind.RETRY:
            policy = ctx.site.policy_for(ctx.stage, pipeline.stage(ctx.stage).retry)
            if ctx.attempt >= policy.max_attempts:
                return walk.result(
                    JobState.FAILED,
                    ctx.stage,
                    ctx.step,
                    ctx.attempt,
                    reason=f"{outcome.reason} (gave up after {ctx.attempt} attempts)",
                )
            return walk.dispatch(ctx.stage, ctx.step, ctx.attempt + 1, JobState.RETRY_WAIT, policy.delay(ctx.attempt))
        case OutcomeKind.WAIT_RESOLVE:
            vars[CONFLICTS_KEY] = list(outcome.conflicts)
            return walk.result(JobState.WAITING_RESOLVE, ctx.stage, ctx.step, ctx.attempt)
        case OutcomeKind.DONE | OutcomeKind.NOTHING_TO_DO | OutcomeKind.FAIL:
            state = {
                OutcomeKind.DONE: JobState.DONE,
                OutcomeKind.NOTHING_TO_DO: JobState.NOTHING_TO_DO,
                OutcomeKind.FAIL: JobState.FAILED,
            }[outcome.kind]
            return walk.result(state, ctx.stage, ctx.step, ctx.attempt)
    raise ValueError(f"unknown outcome kind {outcome.kind!r}")


def resume_transition(pipeline: Pipeline, ctx: JobContext, state: JobState) -> Transition:
    """WAITING_RESOLVE -> the pipeline's re-check stage (after a person resolved)."""
    if state is not JobState.WAITING_RESOLVE:
        raise RefusedTransition(
            f"the job is {state}, not WAITING_RESOLVE: only a job waiting for a resolve can be resumed"
        )
    if pipeline.resume_stage is None:
        raise RefusedTransition(f"pipeline {pipeline.name} has no stage to resume at")
    walk = _Walk(pipeline, ctx, _unapproved(_transient_free(dict(ctx.vars))), None)
    return walk.dispatch(pipeline.resume_stage)


def approve_transition(pipeline: Pipeline, ctx: JobContext, state: JobState) -> Transition:
    """WAITING_APPROVAL -> the gated stage, approved (`p4bus approve`)."""
    if state is not JobState.WAITING_APPROVAL:
        raise RefusedTransition(
            f"the job is {state}, not WAITING_APPROVAL: only a job waiting for approval can be approved"
        )
    vars = _transient_free(dict(ctx.vars))
    vars[APPROVED_KEY] = True
    return _Walk(pipeline, ctx, vars, None).dispatch(ctx.stage)


def _unapproved(vars: dict[str, Any]) -> dict[str, Any]:
    vars.pop(APPROVED_KEY, None)
    return vars


def retry_from(pipeline: Pipeline, ctx: JobContext, state: JobState, stage: str | None = None) -> Transition:
    """FAILED/CANCELLED -> run again from `stage` (default: where the job stopped).

    Only the stopping stage or an earlier one: starting later would skip checks (name
    check, pre-submit hooks) the job never passed."""
    if state not in (JobState.FAILED, JobState.CANCELLED):
        hint = "; use resume for a job waiting for a resolve" if state is JobState.WAITING_RESOLVE else ""
        raise RefusedTransition(f"the job is {state}: only FAILED or CANCELLED jobs can be retried{hint}")
    target = stage or ctx.stage
    names = pipeline.names()
    if target not in names:
        raise RefusedTransition(f"unknown stage {target!r}: the stages of {pipeline.name} are {', '.join(names)}")
    stopped = names.index(ctx.stage)
    if names.index(target) > stopped:
        skipped = ", ".join(names[stopped : names.index(target)])
        raise RefusedTransition(
            f"cannot retry from {target}: the job stopped at {ctx.stage} and "
            f"would skip {skipped}; retry from {ctx.stage} or an earlier stage"
        )
    for key in pipeline.stage(target).needs:
        if key not in ctx.vars:
            producer = next((s.name for s in pipeline.stages if key in s.provides), "an earlier stage")
            raise RefusedTransition(
                f"cannot retry from {target}: it needs the {key} that {producer} "
                f"records, and this job has none; retry from {producer} or earlier"
            )
    vars = _transient_free(dict(ctx.vars))
    # An approval covers the shelf a person reviewed: re-running an earlier stage makes another.
    if pipeline.stage(target).gate is None:
        _unapproved(vars)
    return _Walk(pipeline, ctx, vars, None).dispatch(target)
