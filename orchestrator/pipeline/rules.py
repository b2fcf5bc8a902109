"""Rules every stage applies before reading its own command's output: what happened to the
process (lost, timed out, killed), and p4 failures that mean the same in every command
(no connection, no valid ticket)."""

from __future__ import annotations

from orchestrator.pipeline import p4parse
from orchestrator.pipeline.model import (
    CommandResult,
    Interpreter,
    JobContext,
    Outcome,
    OutcomeKind,
    RetryPolicy,
    fail,
    retry,
)

# Set by the transition on the first command after coming back from a `come_back` call.
RETURNED_KEY = "_returned_to"


# Set when a step's command was lost (it may or may not have had its effect): [stage, step].
# The step's effect check, if it has one, runs before the step is run again (steps.py).
EFFECT_UNKNOWN_KEY = "_effect_unknown"


def _process(ctx: JobContext, result: CommandResult, policy: RetryPolicy) -> Outcome | None:
    if result.lost:
        unsure = {EFFECT_UNKNOWN_KEY: [ctx.stage, ctx.step]}
        if policy.on_lost == "retry":
            return Outcome(kind=OutcomeKind.RETRY, reason="the agent was lost while the command ran", updates=unsure)
        return Outcome(
            kind=OutcomeKind.FAIL,
            reason=f"the agent was lost while {ctx.stage} ran; it may or may not have "
            f"completed, so it is not run again automatically (check, then retry)",
            updates=unsure,
        )
    if result.error:
        return fail(f"the command could not be started: {result.error}", result.error)
    if result.timed_out:
        return retry("the command timed out", p4parse.error_line(result.stderr, result.stdout))
    if result.killed:
        return fail("the command was killed", p4parse.error_line(result.stderr, result.stdout))
    if result.signal is not None:
        return retry(f"the command died of signal {result.signal}", p4parse.error_line(result.stderr, result.stdout))
    if result.exit_code is None:
        return fail("the command ended without an exit status")
    return None


def _session(ctx: JobContext, result: CommandResult, login_stage: str | None) -> Outcome | None:
    if line := p4parse.connection_error(result.stderr):
        return retry("cannot reach the Perforce server", line)
    line = p4parse.auth_error(result.stderr)
    if line is None:
        return None
    if login_stage is None:
        return fail("the Perforce server did not accept the credentials", line)
    if not ctx.params.workspace.password_set:
        return fail(
            "not logged in to Perforce and no password is configured for workspace "
            f"{ctx.params.workspace.name!r}: log in on the agent or configure one",
            line,
        )
    if ctx.vars.get(RETURNED_KEY) == ctx.stage:
        return fail("still not logged in right after logging in again", line)
    return Outcome(
        kind=OutcomeKind.NEXT,
        goto=login_stage,
        come_back=True,
        reason="ticket expired: logging in again",
        key_line=line,
    )


def guarded(interpret: Interpreter, default_policy: RetryPolicy, login_stage: str | None) -> Interpreter:
    """`interpret`, preceded by the common rules. `login_stage`: where to log in again when
    the ticket has expired (None in the login stage itself)."""

    def run(ctx: JobContext, result: CommandResult) -> Outcome:
        policy = ctx.site.policy_for(ctx.stage, default_policy)
        return _process(ctx, result, policy) or _session(ctx, result, login_stage) or interpret(ctx, result)

    return run
