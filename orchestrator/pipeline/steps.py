"""Stages made of sub-steps.

A stage's steps are planned from the job context each time (a plan may depend on what earlier
steps recorded in vars, e.g. a cleanup step that only exists after "already integrated").
The stage's builder builds step `ctx.step` of the plan, or returns None when the plan has no
such step — at step 0 that skips the stage, later it ends it. Step interpreters return
REPEAT to continue with the next step (if any), NEXT to end the stage early.

A step whose effect must not happen twice (creating a change, submitting it) has a `check`:
after its command was lost (rules.py marks the step), the check runs in its place and either
finds the effect (its outcome moves the job on as the step's own would have) or returns RERUN,
and the step itself runs. The mark is cleared by the first result of that step interpreted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import msgspec

from orchestrator.pipeline.model import (
    Builder,
    CommandResult,
    CommandSpec,
    Interpreter,
    JobContext,
    Outcome,
    RetryPolicy,
    Stage,
    fail,
)
from orchestrator.pipeline.rules import EFFECT_UNKNOWN_KEY, guarded


@dataclasses.dataclass(frozen=True)
class Step:
    build: Callable[[JobContext], CommandSpec]
    interpret: Interpreter
    # Finds out whether this step's effect already happened; see the module's doc.
    check: Step | None = None


Plan = Callable[[JobContext], Sequence[Step]]


def stepwise(plan: Plan) -> tuple[Builder, Interpreter]:
    def build(ctx: JobContext) -> CommandSpec | None:
        steps = plan(ctx)
        return _current(ctx, steps[ctx.step]).build(ctx) if ctx.step < len(steps) else None

    def interpret(ctx: JobContext, result: CommandResult) -> Outcome:
        steps = plan(ctx)
        if ctx.step >= len(steps):
            return fail(f"{ctx.stage} has no step {ctx.step} for this job")
        outcome = _current(ctx, steps[ctx.step]).interpret(ctx, result)
        if _marked(ctx):
            outcome = msgspec.structs.replace(outcome, updates={**outcome.updates, EFFECT_UNKNOWN_KEY: None})
        return outcome

    return build, interpret


def _marked(ctx: JobContext) -> bool:
    return ctx.vars.get(EFFECT_UNKNOWN_KEY) == [ctx.stage, ctx.step]


def _current(ctx: JobContext, step: Step) -> Step:
    """The step, or its effect check when its last command was lost."""
    return step.check if step.check is not None and _marked(ctx) else step


def make_stage(
    name: str,
    plan: Plan,
    *,
    retry: RetryPolicy,
    timeout: float,
    login_stage: str | None,
    needs: tuple[str, ...] = (),
    provides: tuple[str, ...] = (),
    resume_only: bool = False,
    gate: Callable[[JobContext], bool] | None = None,
) -> Stage:
    build, interpret = stepwise(plan)
    return Stage(
        name=name,
        build=build,
        interpret=guarded(interpret, retry, login_stage),
        retry=retry,
        timeout=timeout,
        needs=needs,
        provides=provides,
        resume_only=resume_only,
        gate=gate,
    )
