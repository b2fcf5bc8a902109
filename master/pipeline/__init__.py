"""Pure pipeline logic for the orchestrator: what each stage runs, what its output means,
and where a job goes next. No I/O here: the orchestrator persists and dispatches.

Typical use by the orchestrator:
    pipeline = PIPELINES[job.pipeline]
    t = start(pipeline, ctx)                                   # QUEUED -> first stage
    outcome = pipeline.stage(ctx.stage).interpret(ctx, result) # a command finished
    t = transition(pipeline, ctx, outcome)                     # persist t, then dispatch t.command
"""

from master.pipeline.model import (
    PASSWORD_SECRET, BuildError, CommandResult, CommandSpec, JobContext, JobParams,
    NameCheckPolicy, Outcome, OutcomeKind, Pipeline, RetryPolicy, SiteConfig, Stage, Workspace,
)
from master.pipeline.p4_integrate import P4_INTEGRATE
from master.pipeline.transition import (
    TERMINAL, JobState, RefusedTransition, Transition, resume_transition, retry_from, start,
    transition,
)
from master.pipeline.validate import validate_params, validate_site

PIPELINES: dict[str, Pipeline] = {P4_INTEGRATE.name: P4_INTEGRATE}

__all__ = [
    "PASSWORD_SECRET", "PIPELINES", "TERMINAL", "BuildError", "CommandResult", "CommandSpec",
    "JobContext", "JobParams", "JobState", "NameCheckPolicy", "Outcome", "OutcomeKind",
    "Pipeline", "RefusedTransition", "RetryPolicy", "SiteConfig", "Stage", "Transition",
    "Workspace", "resume_transition", "retry_from", "start", "transition", "validate_params",
    "validate_site",
]
