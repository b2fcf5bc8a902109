"""The engine's part in jobs that leave no mess: cleanup of failed and cancelled jobs (on request
and by policy), the job that left a blocking change named, approval before submit, and a job
event when a command starts waiting for an agent. Real SQLite store, hand-moved clock."""

from __future__ import annotations

import pytest
from test_orchestrator_engine import TOY, Rig, _stage

from common import protocol as P
from orchestrator.engine import Engine, JobError
from orchestrator.pipeline import (
    CommandResult,
    CommandSpec,
    JobContext,
    JobState,
    Outcome,
    OutcomeKind,
    Pipeline,
    RetryPolicy,
    Stage,
)
from orchestrator.pipeline.rules import guarded
from orchestrator.store import CmdKind, Store
from p4bus.notify.rules import news

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def rig(store_at) -> Rig:
    return Rig(Store(store_at()))


def _fail(rig: Rig) -> str:
    """A job that made its pending change (7) and then failed."""
    job_id, _ = rig.submit()
    rig.step(job_id)
    rig.step(job_id, "FAIL")
    assert rig.job(job_id).state == JobState.FAILED
    return job_id


def _finish_cleanup(rig: Rig, job_id: str) -> None:
    for cmd in rig.store.open_commands(job_id):
        rig.run(cmd.cmd_id)
        rig.finish(cmd.cmd_id)


# ---------------------------------------------------------------------------- cleanup


def test_cleanup_of_a_failed_job_reverts_and_deletes_its_change_as_its_own_commands(rig):
    job_id = _fail(rig)
    with pytest.raises(JobError, match=f"already FAILED: nothing to cancel; `p4bus cleanup {job_id}`"):
        rig.engine.cancel(job_id, revert=True)
    eff = rig.engine.cleanup(job_id)
    revert, delete = rig.store.open_commands(job_id)
    assert (revert.kind, revert.stage, revert.spec.argv, delete.spec.argv) == (
        CmdKind.CLEANUP,
        "CLEANUP",
        ["revert", "7"],
        ["delete", "7"],
    )
    assert eff.dispatch == [revert.cmd_id] and eff.publish == [job_id]
    assert "change" not in rig.job(job_id).vars and rig.job(job_id).state == JobState.FAILED
    with pytest.raises(JobError, match="being cleaned up already"):
        rig.engine.cleanup(job_id)
    _finish_cleanup(rig, job_id)
    assert [r.stage for r in rig.engine.view(job_id).timeline][-2:] == ["CLEANUP", "CLEANUP"]
    with pytest.raises(JobError, match="has no pending change to clean up"):
        rig.engine.cleanup(job_id)


def test_cleanup_is_refused_for_a_job_that_is_not_failed_or_cancelled(rig):
    job_id, _ = rig.submit()
    with pytest.raises(JobError, match=f"is RUNNING: only a FAILED or CANCELLED job.*p4bus cancel --revert {job_id}"):
        rig.engine.cleanup(job_id)
    with pytest.raises(JobError, match="no job 'INT-nope'"):
        rig.engine.cleanup("INT-nope")
    assert rig.store.job_commands(job_id)[-1].kind == CmdKind.STAGE  # a refusal wrote nothing


def test_cancel_revert_of_a_queued_retried_job_cleans_up_its_first_runs_change(rig):
    first = _fail(rig)
    second, _ = rig.submit()  # started: the failed job freed the workspace
    assert rig.job(second).state == JobState.RUNNING
    rig.engine.retry(first, "SYNC")
    assert rig.job(first).state == JobState.QUEUED
    eff = rig.engine.cancel(first, revert=True)
    revert, _ = rig.store.open_commands(first)
    assert revert.spec.argv == ["revert", "7"] and eff.dispatch == [revert.cmd_id]


def test_cleanup_on_failure_cleans_before_the_next_job_starts(rig):
    rig.engine.conf.workspaces["ws"].cleanup_on_failure = True
    job_id, _ = rig.submit()
    waiting, _ = rig.submit()
    rig.step(job_id)
    eff = rig.step(job_id, "FAIL")
    revert, _ = rig.store.open_commands(job_id)
    assert revert.kind == CmdKind.CLEANUP and eff.dispatch == [revert.cmd_id]
    assert rig.job(job_id).state == JobState.FAILED and rig.job(waiting).state == JobState.QUEUED
    _finish_cleanup(rig, job_id)
    assert rig.job(waiting).state == JobState.RUNNING
    # Another workspace's policy is its own: ws2 keeps a failed job's change for a person.
    other, _ = rig.submit("ws2")
    rig.step(other)
    rig.step(other, "FAIL")
    assert rig.store.open_commands(other) == [] and rig.job(other).vars["change"] == 7


# ---------------------------------------------------------------------------- a change held by another job


def _holder_interpret(ctx: JobContext, result: CommandResult) -> Outcome:
    if result.stdout.startswith("HELD "):
        held = int(result.stdout.split()[1])
        return Outcome(
            kind=OutcomeKind.FAIL, reason="files opened in another change", updates={"blocking_change": held}
        )
    return Outcome(kind=OutcomeKind.NEXT, updates={"change": int(result.stdout or 0)})


HOLD = Pipeline(
    name="toy",
    stages=(
        Stage(
            name="INTEGRATE",
            build=lambda ctx: CommandSpec(argv=["integrate"]),
            interpret=guarded(_holder_interpret, RetryPolicy(), login_stage=None),
            retry=RetryPolicy(),
            timeout=60.0,
        ),
        _stage("CHECK", RetryPolicy()),
    ),
)


def test_a_failure_on_a_change_another_job_left_names_that_job_and_how_to_clean_it(store_at):
    rig = Rig(Store(store_at()))
    rig.engine = Engine(rig.store, rig.engine.conf, environ={}, pipelines={"toy": HOLD}, clock=rig.clock)
    left, _ = rig.submit()
    rig.step(left, "5")
    rig.step(left, "FAIL")
    job_id, _ = rig.submit()
    rig.step(job_id, "HELD 5")
    reason = rig.job(job_id).reason
    assert reason == (
        f"files opened in another change (change 5 is the pending change of job {left}, FAILED: "
        f"`p4bus cleanup {left}` cleans it up)"
    )
    # A change no p4bus job knows gets no hint beyond the interpreter's own words.
    other, _ = rig.submit()
    rig.step(other, "HELD 99")
    assert rig.job(other).reason == "files opened in another change"


# ---------------------------------------------------------------------------- approval


def _gated(ctx: JobContext) -> bool:
    return ctx.params.workspace.review_before_submit


REVIEW = Pipeline(
    name="toy",
    stages=(TOY.stages[0], TOY.stages[1], Stage(**{**TOY.stages[2].__dict__, "gate": _gated})),
    resume_stage="CHECK",
)


def test_a_reviewed_workspace_waits_for_approval_before_submit_holding_the_workspace(store_at):
    rig = Rig(Store(store_at()))
    rig.engine.conf.workspaces["ws"].review_before_submit = True
    rig.engine = Engine(rig.store, rig.engine.conf, environ={}, pipelines={"toy": REVIEW}, clock=rig.clock)
    job_id, _ = rig.submit()
    waiting, _ = rig.submit()
    rig.step(job_id)
    rig.step(job_id)
    job, view = rig.job(job_id), rig.engine.view(job_id)
    assert (job.state, job.stage) == (JobState.WAITING_APPROVAL, "SUBMIT")
    assert rig.store.open_commands(job_id) == []
    assert f"`p4bus approve {job_id}`" in view.waiting_for and "shelved change 7" in view.waiting_for
    assert rig.job(waiting).state == JobState.QUEUED
    with pytest.raises(JobError, match="the job is QUEUED, not WAITING_APPROVAL"):
        rig.engine.approve(waiting)
    eff = rig.engine.approve(job_id)
    (submit,) = eff.dispatch
    assert rig.cmd(submit).stage == "SUBMIT" and rig.job(job_id).state == JobState.RUNNING
    rig.run(submit)
    rig.finish(submit)
    assert rig.job(job_id).state == JobState.DONE and rig.job(waiting).state == JobState.RUNNING


def test_a_job_waiting_for_approval_is_news_for_those_told_of_waiting_jobs():
    assert news("RUNNING", "WAITING_APPROVAL") == "waiting"
    assert news("WAITING_APPROVAL", "WAITING_APPROVAL") is None


# ---------------------------------------------------------------------------- waiting for an agent


def test_a_command_that_starts_waiting_names_its_job_once_per_reason(rig):
    job_id, eff = rig.submit()
    (sync,) = eff.dispatch
    why = "agent 'a1' is not connected to this master (connected: none)"
    assert rig.engine.newly_waiting(sync, why) == job_id
    rig.engine.on_dispatch_refused(sync, why)
    assert rig.engine.newly_waiting(sync, why) is None
    assert rig.engine.view(job_id).waiting_for == why
    assert rig.engine.newly_waiting(sync, "no live agent with workspace 'ws'") == job_id
    rig.run(sync)
    assert rig.engine.newly_waiting(sync, why) is None  # accepted: nothing waits


def test_submit_route_is_the_requests_else_the_workspaces(rig):
    rig.engine.conf.workspaces["ws"].pool = "linux"
    req = P.Submit(req_id="r", workspace="ws", source="//a/...", target="//b/...", pipeline="toy")
    assert rig.engine.submit_route(req) == (None, "linux")
    with_agent = P.Submit(req_id="r", workspace="ws", source="//a/...", target="//b/...", agent="a9", pool="mac")
    assert rig.engine.submit_route(with_agent) == ("a9", "mac")
