"""Pure pipeline logic for the orchestrator: what each stage runs, what its output means,
and where a job goes next. No I/O here: the orchestrator persists and dispatches.

Driving a job (every call is pure; persist the Transition, then dispatch t.command):

    pipeline = PIPELINES["p4-integrate"]
    ctx = JobContext(params=..., site=..., stage=row.stage, step=row.step, attempt=row.attempt,
                     vars=row.vars, job_id=row.id, secrets={PASSWORD_SECRET: pw} or {})
    t = start(pipeline, ctx)                                   # QUEUED -> first stage to run
    outcome = pipeline.stage(ctx.stage).interpret(ctx, result) # its command finished
    t = transition(pipeline, ctx, outcome)                     # what to do next
    t = resume_transition(pipeline, ctx, state)                # `p4bus resume`
    t = approve_transition(pipeline, ctx, state)               # `p4bus approve`
    t = retry_from(pipeline, ctx, state, stage_or_None)        # `p4bus retry [--from]`

A Transition gives the new state, (stage, step, attempt), the complete vars to store, the
command to dispatch after delay_s (None when waiting or terminal), the reason / key_line of
the command just interpreted, and the stages skipped on the way. Store
`t.command.for_storage()`: a login's password never reaches the store; to re-dispatch a
stored login command after a restart, call `pipeline.stage(stage).build(ctx)` again.

Secrets: the password is passed per call in `JobContext.secrets`, never in vars, so nothing
a Transition returns for storing can contain it. `RefusedTransition` carries a message for
the person who asked; `validate_params` / `validate_site` return messages to show as they are.
"""

from orchestrator.pipeline.model import (
    PASSWORD_SECRET,
    BuildError,
    CommandResult,
    CommandSpec,
    JobContext,
    JobParams,
    NameCheckPolicy,
    Outcome,
    OutcomeKind,
    Pipeline,
    RetryPolicy,
    SiteConfig,
    Stage,
    Workspace,
)
from orchestrator.pipeline.p4_integrate import P4_INTEGRATE
from orchestrator.pipeline.transition import (
    TERMINAL,
    JobState,
    RefusedTransition,
    Transition,
    approve_transition,
    resume_transition,
    retry_from,
    start,
    transition,
)
from orchestrator.pipeline.validate import validate_params, validate_site

PIPELINES: dict[str, Pipeline] = {P4_INTEGRATE.name: P4_INTEGRATE}

__all__ = [
    "PASSWORD_SECRET",
    "PIPELINES",
    "TERMINAL",
    "BuildError",
    "CommandResult",
    "CommandSpec",
    "JobContext",
    "JobParams",
    "JobState",
    "NameCheckPolicy",
    "Outcome",
    "OutcomeKind",
    "Pipeline",
    "RefusedTransition",
    "RetryPolicy",
    "SiteConfig",
    "Stage",
    "Transition",
    "Workspace",
    "approve_transition",
    "resume_transition",
    "retry_from",
    "start",
    "transition",
    "validate_params",
    "validate_site",
]
