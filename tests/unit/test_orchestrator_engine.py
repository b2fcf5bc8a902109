"""The engine alone: a real SQLite store, a toy pipeline and a clock the test moves by hand.

No sockets: each call returns the Effects the service would carry out, and the tests play the
agents' part by feeding results back in.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from common import protocol as P
from common.config import OrchestratorConf, WorkspaceConf
from orchestrator.engine import Effects, Engine, JobError
from orchestrator.pipeline import (
    CommandResult,
    CommandSpec,
    JobContext,
    JobParams,
    JobState,
    Outcome,
    OutcomeKind,
    Pipeline,
    RetryPolicy,
    Stage,
)
from orchestrator.pipeline.model import fail, next_, retry
from orchestrator.pipeline.rules import guarded
from orchestrator.store import CmdKind, CmdState, Store

pytestmark = pytest.mark.timeout(10)

# 2026-03-14 23:59:00 UTC: a minute before the job ids' day changes.
START = 1_773_532_740.0


class ManualClock:
    def __init__(self, t: float = START) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


# ---------------------------------------------------------------------------- a toy pipeline
# SYNC records the change, CHECK may find conflicts (a person resolves them, then resume
# re-checks), SUBMIT must not run twice. A command's stdout says what it "did".


def _interpreter(**updates: object) -> Callable[[JobContext, CommandResult], Outcome]:
    def interpret(ctx: JobContext, result: CommandResult) -> Outcome:
        if "RETRY" in result.stdout:
            return retry("server busy", "busy line")
        if "FAIL" in result.stdout:
            return fail("broken", "broken line")
        if "CONFLICT" in result.stdout:
            return Outcome(
                kind=OutcomeKind.WAIT_RESOLVE,
                conflicts=["//depot/main/f.c"],
                reason="1 file needs a resolve",
                key_line="must resolve",
            )
        return next_(f"{ctx.stage} ok", **updates)

    return interpret


def _stage(name: str, policy: RetryPolicy, needs: tuple[str, ...] = (), **updates: object) -> Stage:
    return Stage(
        name=name,
        build=lambda ctx: CommandSpec(argv=[ctx.stage.lower(), f"try{ctx.attempt}"]),
        # The common rules (a lost agent, a timeout) come first, as in the real pipelines.
        interpret=guarded(_interpreter(**updates), policy, login_stage=None),
        retry=policy,
        timeout=60.0,
        needs=needs,
        provides=tuple(updates),
    )


def _cleanup(ctx: JobContext) -> list[CommandSpec]:
    if "change" not in ctx.vars:
        return []
    change = str(ctx.vars["change"])
    return [CommandSpec(argv=["revert", change]), CommandSpec(argv=["delete", change])]


TOY = Pipeline(
    name="toy",
    stages=(
        _stage("SYNC", RetryPolicy(max_attempts=3, backoff_s=10.0, factor=2.0), change=7),
        _stage("CHECK", RetryPolicy(), needs=("change",)),
        _stage(
            "SUBMIT",
            RetryPolicy(max_attempts=2, on_lost="fail", unknown_deadline_s=30.0),
            needs=("change",),
            submitted_change=8,
        ),
    ),
    resume_stage="CHECK",
    cleanup=_cleanup,
)


def _workspace(name: str) -> WorkspaceConf:
    return WorkspaceConf(p4port="sim:1666", p4user="bot", p4client=name, root=f"/ws/{name}")


class Rig:
    def __init__(self, store: Store, workspaces: tuple[str, ...] = ("ws", "ws2"), **conf: float):
        self.clock = ManualClock()
        self.store = store
        conf = OrchestratorConf(workspaces={name: _workspace(name) for name in workspaces}, **conf)
        self.engine = Engine(store, conf, environ={}, pipelines={"toy": TOY}, clock=self.clock)

    def submit(self, workspace: str | None = "ws") -> tuple[str, Effects]:
        return self.engine.submit(
            P.Submit(
                req_id="r", workspace=workspace, source="//depot/dev/...", target="//depot/main/...", pipeline="toy"
            )
        )

    def job(self, job_id: str):
        job = self.store.job(job_id)
        assert job is not None
        return job

    def cmd(self, cmd_id: str):
        cmd = self.store.command(cmd_id)
        assert cmd is not None
        return cmd

    def open_cmd(self, job_id: str) -> str:
        (cmd,) = self.store.open_commands(job_id)
        return cmd.cmd_id

    def run(self, cmd_id: str, agent: str = "a1") -> Effects:
        """The agent accepted the command and it is running."""
        status = P.CmdStatus(cmd_id=cmd_id, agent=agent, state="running")
        return self.engine.on_dispatched(cmd_id, P.ExecReply(req_id="r", cmd_id=cmd_id, agent=agent, status=status))

    def finish(self, cmd_id: str, stdout: str = "", stamp: tuple[str, str, str, int] | None = None) -> Effects:
        status = P.CmdStatus(cmd_id=cmd_id, agent="a1", state="done", exit_code=0, stdout=stdout.encode())
        return self.engine.on_done(cmd_id, status, stamp=stamp)

    def step(self, job_id: str, stdout: str = "") -> Effects:
        """Run the job's one open command to the end."""
        cmd_id = self.open_cmd(job_id)
        self.run(cmd_id)
        return self.finish(cmd_id, stdout)


@pytest.fixture
def rig(store_at) -> Rig:
    return Rig(Store(store_at()))


# ---------------------------------------------------------------------------- submit and queue


def test_submit_starts_the_first_stage_and_numbers_jobs_by_the_clocks_day(rig):
    job_id, eff = rig.submit()
    assert job_id == "INT-20260314-0001"
    (cmd_id,) = eff.dispatch
    assert eff.publish == [job_id] and eff.kill == []
    job, cmd = rig.job(job_id), rig.cmd(cmd_id)
    assert (job.state, job.stage, job.created_at, job.updated_at) == (JobState.RUNNING, "SYNC", START, START)
    assert (cmd.kind, cmd.state, cmd.stage, cmd.attempt) == (CmdKind.STAGE, CmdState.PENDING, "SYNC", 1)
    assert cmd.spec.argv == ["sync", "try1"] and cmd.spec.timeout == 60.0
    assert (cmd.created_at, cmd.not_before) == (START, START)
    assert [c.cmd_id for c in rig.engine.due_pending(START)] == [cmd_id]
    assert rig.engine.route(cmd) == {"job_id": job_id, "agent": None, "pool": None, "workspace": "ws"}
    rig.clock.advance(120)  # past midnight UTC: a new day, numbered from 1 again
    assert rig.submit("ws2")[0] == "INT-20260315-0001"
    assert rig.submit("ws2")[0] == "INT-20260315-0002"


def test_a_second_job_on_a_workspace_waits_its_turn(rig):
    first, _ = rig.submit()
    second, eff = rig.submit()
    third, _ = rig.submit()
    other, other_eff = rig.submit("ws2")
    assert eff.dispatch == [] and rig.job(second).state == JobState.QUEUED
    assert other_eff.dispatch and rig.job(other).state == JobState.RUNNING  # another workspace is free
    views = {v.job_id: v for v in rig.engine.views(include_finished=False, limit=10)}
    assert [views[j].queue_position for j in (first, second, third, other)] == [0, 1, 2, 0]
    assert views[second].waiting_for == f"job {first} on workspace ws (number 1 in its queue)"
    rig.step(first)
    rig.step(first)
    eff = rig.step(first)  # SUBMIT: the first job is done and the next one starts
    assert rig.job(first).state == JobState.DONE and rig.job(first).vars["submitted_change"] == 8
    assert eff.dispatch == [rig.open_cmd(second)] and rig.job(second).state == JobState.RUNNING
    assert rig.job(third).state == JobState.QUEUED
    assert rig.engine.view(third).queue_position == 1


def test_schedule_starts_queued_jobs_whose_workspace_is_free(rig):
    params = JobParams(workspace=rig.engine.workspace("ws"), source="//depot/dev/...", target="//depot/main/...")
    with rig.store.tx():
        # As a crash between a job's commit and its scheduling leaves it: QUEUED on a free workspace.
        rig.store.add_job("J1", "toy", params, agent=None, pool=None, first_stage="SYNC", now=START)
    eff = rig.engine.schedule()
    assert eff.dispatch == [rig.open_cmd("J1")] and eff.publish == ["J1"]
    assert rig.job("J1").state == JobState.RUNNING
    assert rig.engine.schedule() == Effects()  # the workspace is taken now


# ---------------------------------------------------------------------------- command lifecycle


def test_dispatch_reply_and_started_event_mark_the_command_and_pin_the_job(rig):
    job_id, eff = rig.submit()
    (cmd_id,) = eff.dispatch
    rig.clock.advance(1)
    rig.engine.on_dispatch_refused(cmd_id, "no agent serves workspace ws")
    cmd = rig.cmd(cmd_id)
    assert (cmd.state, cmd.not_before) == (CmdState.PENDING, START + 2)
    assert rig.engine.view(job_id).waiting_for == "no agent serves workspace ws"
    assert rig.engine.due_pending(START + 1.5) == []
    rig.clock.advance(2)
    eff = rig.engine.on_started(cmd_id, "a1", started_at=START + 2.5)
    cmd = rig.cmd(cmd_id)
    assert (cmd.state, cmd.agent, cmd.started_at, cmd.last_contact, cmd.waiting_for) == (
        CmdState.RUNNING,
        "a1",
        START + 2.5,
        START + 3,
        "",
    )
    assert eff.publish == [job_id] and rig.job(job_id).agent == "a1"
    # The reply to the Exec comes after the STARTED event: the command stays RUNNING.
    rig.clock.advance(1)
    assert rig.run(cmd_id).publish == []  # already pinned: nothing for people to see
    assert (rig.cmd(cmd_id).state, rig.cmd(cmd_id).dispatched_at) == (CmdState.RUNNING, START + 4)
    assert rig.engine.on_started(cmd_id, "a1", START + 4) == Effects()  # a late STARTED changes nothing
    rig.clock.advance(1)
    assert rig.engine.still_running(cmd_id) == Effects()  # heard from: nothing for people to see
    assert rig.cmd(cmd_id).last_contact == START + 5


def test_an_accepted_command_is_dispatched_until_it_starts_and_a_done_reply_moves_the_job(rig):
    job_id, eff = rig.submit()
    (cmd_id,) = eff.dispatch
    queued = P.CmdStatus(cmd_id=cmd_id, agent="a1", state="unknown")
    rig.engine.on_dispatched(cmd_id, P.ExecReply(req_id="r", cmd_id=cmd_id, agent="a1", status=queued))
    assert rig.cmd(cmd_id).state == CmdState.DISPATCHED
    # A duplicate Exec of a command that already ended answers with its final status.
    done = P.CmdStatus(cmd_id=cmd_id, agent="a1", state="done", exit_code=0)
    eff = rig.engine.on_dispatched(cmd_id, P.ExecReply(req_id="r", cmd_id=cmd_id, agent="a1", status=done))
    assert rig.cmd(cmd_id).state == CmdState.DONE
    assert rig.job(job_id).stage == "CHECK" and eff.dispatch == [rig.open_cmd(job_id)]


def test_a_result_moves_the_job_on_and_is_recorded_with_the_command(rig):
    job_id, eff = rig.submit()
    (sync,) = eff.dispatch
    rig.run(sync)
    rig.clock.advance(5)
    eff = rig.finish(sync)
    cmd = rig.cmd(sync)
    assert (cmd.state, cmd.outcome, cmd.key_line, cmd.exit_code, cmd.ended_at) == (
        CmdState.DONE,
        "NEXT",
        "SYNC ok",
        0,
        START + 5,
    )
    job = rig.job(job_id)
    assert (job.state, job.stage, job.vars, job.key_line, job.updated_at) == (
        JobState.RUNNING,
        "CHECK",
        {"change": 7},
        "SYNC ok",
        START + 5,
    )
    (check,) = eff.dispatch
    assert rig.cmd(check).spec.argv == ["check", "try1"] and eff.publish == [job_id]
    assert rig.finish(sync) == Effects()  # a second report of the same command: handled once
    assert rig.engine.on_started(sync, "a1", START + 9) == Effects()  # a STARTED that arrives last
    assert rig.cmd(sync) == cmd


def test_retry_waits_out_the_backoff_on_the_clock_then_gives_up(rig):
    job_id, eff = rig.submit()
    eff = rig.step(job_id, "RETRY")
    job = rig.job(job_id)
    assert (job.state, job.attempt, job.reason, job.key_line) == (JobState.RETRY_WAIT, 2, "server busy", "busy line")
    assert eff.dispatch == []  # held back: the service's tick dispatches it when due
    retry_cmd = rig.cmd(rig.open_cmd(job_id))
    assert (retry_cmd.attempt, retry_cmd.not_before, retry_cmd.spec.argv) == (2, START + 10, ["sync", "try2"])
    assert rig.engine.view(job_id).waiting_for == "backoff before the next attempt"
    assert rig.engine.due_pending(START + 9.9) == []
    assert rig.engine.due_pending(rig.clock.advance(10)) == [retry_cmd]
    assert rig.run(retry_cmd.cmd_id).publish == [job_id]
    assert rig.job(job_id).state == JobState.RUNNING  # the command reached an agent: no longer waiting
    rig.finish(retry_cmd.cmd_id, "RETRY")
    assert rig.cmd(rig.open_cmd(job_id)).not_before == START + 10 + 20  # backoff 10 s, factor 2
    rig.clock.advance(20)
    rig.step(job_id, "RETRY")
    job = rig.job(job_id)
    assert (job.state, job.reason) == (JobState.FAILED, "server busy (gave up after 3 attempts)")
    assert rig.store.open_commands(job_id) == []


def test_results_of_an_earlier_try_are_ignored(rig):
    job_id, eff = rig.submit()
    (first_try,) = eff.dispatch
    rig.run(first_try)
    rig.finish(first_try, "RETRY")
    second_try = rig.open_cmd(job_id)
    # The first try reported again (a query after a reconnect): it ended once, already.
    assert rig.finish(first_try) == Effects()
    assert rig.job(job_id).state == JobState.RETRY_WAIT and rig.cmd(second_try).state == CmdState.PENDING
    # Cancelled while running, then retried: the killed command's late DONE is about the old
    # try, although the new one runs the same (stage, step, attempt).
    rig.run(second_try)
    rig.engine.cancel(job_id, revert=False)
    rig.engine.retry(job_id, None)
    third_try = rig.open_cmd(job_id)
    assert (rig.cmd(third_try).stage, rig.cmd(third_try).attempt) == ("SYNC", 1)
    assert rig.finish(second_try) == Effects()
    assert rig.cmd(second_try).state == CmdState.CANCELLED
    assert (rig.job(job_id).state, rig.job(job_id).stage) == (JobState.RUNNING, "SYNC")
    assert rig.cmd(third_try).state == CmdState.PENDING


def test_a_stage_command_the_job_has_moved_past_does_not_drive_it(rig):
    job_id, _ = rig.submit()
    rig.step(job_id, "RETRY")
    # Nothing the engine does leaves an earlier try open; should a row ever be (an older
    # release, a hand-edited store), its result must not move the job.
    with rig.store.tx():
        stale = rig.store.add_command(job_id, CmdKind.STAGE, "SYNC", 0, 1, CommandSpec(argv=["sync"]), START, START)
    assert rig.finish(stale) == Effects()
    job = rig.job(job_id)
    assert (job.state, job.stage, job.attempt) == (JobState.RETRY_WAIT, "SYNC", 2)


def test_an_event_already_handled_is_ignored(rig):
    job_id, eff = rig.submit()
    (sync,) = eff.dispatch
    rig.run(sync)
    stamp = ("a1", "epoch-1", "cmd", 41)
    assert rig.finish(sync, stamp=stamp).dispatch
    check = rig.open_cmd(job_id)
    rig.run(check)
    # The journal replays an event with the same identity: its stamp alone says it was handled.
    assert rig.finish(check, stamp=stamp) == Effects()
    assert rig.cmd(check).state == CmdState.RUNNING and rig.job(job_id).stage == "CHECK"
    assert rig.finish(check, stamp=("a1", "epoch-1", "cmd", 42)).dispatch
    assert rig.job(job_id).stage == "SUBMIT"


# ---------------------------------------------------------------------------- unreachable agents


def test_an_unreachable_agents_command_is_unknown_until_it_answers_and_its_result_is_used(rig):
    job_id, eff = rig.submit()
    other, other_eff = rig.submit("ws2")
    cmd_id = eff.dispatch[0]
    rig.run(cmd_id, agent="a1")
    rig.run(other_eff.dispatch[0], agent="a2")
    rig.clock.advance(7)
    eff = rig.engine.unreachable("a1", since=START + 2)
    assert eff == Effects(publish=[job_id])  # nothing is dispatched: it may still be running
    assert (rig.cmd(cmd_id).state, rig.cmd(cmd_id).unknown_since) == (CmdState.UNKNOWN, START + 2)
    assert rig.job(job_id).state == JobState.UNKNOWN
    assert rig.cmd(rig.open_cmd(other)).state == CmdState.RUNNING  # on another agent: untouched
    view = rig.engine.view(job_id)
    assert (view.state, [r.state for r in view.timeline]) == ("UNKNOWN", ["UNKNOWN"])
    assert view.waiting_for == (
        "agent a1, unreachable since 2026-03-14 23:59:02 UTC: SYNC may still be running there; its "
        "result is awaited until 2026-03-15 00:09:02 UTC, then SYNC is given up on there"
    )
    assert rig.engine.views(include_finished=False, limit=10)[0].waiting_for == view.waiting_for
    rig.clock.advance(590)  # just short of the default 600 s
    assert rig.engine.unreachable("a1", since=START + 2) == Effects()
    assert rig.cmd(cmd_id).state == CmdState.UNKNOWN
    # Back: its spool says the command still runs.
    assert rig.engine.still_running(cmd_id) == Effects(publish=[job_id])
    assert (rig.cmd(cmd_id).state, rig.cmd(cmd_id).unknown_since) == (CmdState.RUNNING, 0)
    assert rig.job(job_id).state == JobState.RUNNING and rig.engine.view(job_id).waiting_for == ""
    # Gone again, and then its result comes from the spool: that result moves the job.
    rig.engine.unreachable("a1", since=rig.clock.advance(5))
    eff = rig.finish(cmd_id, "synced")
    assert rig.cmd(cmd_id).state == CmdState.DONE and rig.job(job_id).state == JobState.RUNNING
    assert [(c.stage, c.attempt) for c in rig.store.job_commands(job_id)] == [("SYNC", 1), ("CHECK", 1)]
    assert eff.dispatch == [rig.open_cmd(job_id)]


def test_past_its_deadline_an_unknown_command_is_lost_and_retried_off_its_agent(rig):
    job_id, eff = rig.submit()
    cmd_id = eff.dispatch[0]
    rig.run(cmd_id, agent="a1")
    assert rig.job(job_id).agent == "a1"  # pinned where its first command ran
    rig.clock.advance(599)
    rig.engine.unreachable("a1", since=START)
    assert rig.cmd(cmd_id).state == CmdState.UNKNOWN
    rig.clock.advance(1)
    eff = rig.engine.unreachable("a1", since=START)
    assert eff.publish == [job_id] and eff.dispatch == []  # after the backoff
    assert rig.cmd(cmd_id).state == CmdState.LOST
    job = rig.job(job_id)
    assert (job.state, job.attempt, job.reason) == (JobState.RETRY_WAIT, 2, "the agent was lost while the command ran")
    assert job.vars["_effect_unknown"] == ["SYNC", 0]  # the stage's effect check (if any) goes first
    retry = rig.cmd(rig.open_cmd(job_id))
    assert retry.not_before == START + 600 + 10
    # The orchestrator's pin is gone: the retry may run on any agent with the workspace.
    assert (job.agent, rig.engine.route(retry)["agent"]) == (None, None)
    assert rig.engine.unreachable("a1", since=START) == Effects()  # nothing in flight there any more
    # The agent comes back after all and reports the old command: it is past, nothing changes.
    assert rig.finish(cmd_id, "synced") == Effects()
    assert rig.job(job_id).attempt == 2 and rig.cmd(cmd_id).state == CmdState.LOST


def test_a_pin_that_was_asked_for_stays_when_the_agent_is_given_up_on(rig):
    job_id, eff = rig.engine.submit(
        P.Submit(
            req_id="r", workspace="ws", source="//depot/dev/...", target="//depot/main/...", pipeline="toy", agent="a1"
        )
    )
    rig.run(eff.dispatch[0], agent="a1")
    rig.clock.advance(600)
    rig.engine.unreachable("a1", since=START)
    assert rig.job(job_id).agent == "a1"
    assert rig.engine.route(rig.cmd(rig.open_cmd(job_id)))["agent"] == "a1"


def test_a_stage_may_set_its_own_deadline_and_fail_rather_than_run_twice(store_at):
    rig = Rig(Store(store_at()), unknown_deadline_s=10_000.0)
    job_id, _ = rig.submit()
    waiting, _ = rig.submit()
    rig.step(job_id)
    rig.step(job_id)
    submit = rig.open_cmd(job_id)
    rig.run(submit)
    rig.clock.advance(29)
    rig.engine.unreachable("a1", since=START)
    assert rig.job(job_id).state == JobState.UNKNOWN  # SUBMIT's own deadline is 30 s
    rig.clock.advance(1)
    eff = rig.engine.unreachable("a1", since=START)
    job = rig.job(job_id)
    assert job.state == JobState.FAILED and "may or may not have completed" in job.reason
    assert rig.cmd(submit).state == CmdState.LOST
    assert eff.dispatch == [rig.open_cmd(waiting)]  # the workspace is free for the next job


def test_cancel_of_an_unknown_job_frees_its_workspace(rig):
    job_id, eff = rig.submit()
    waiting, _ = rig.submit()
    rig.run(eff.dispatch[0], agent="a1")
    rig.engine.unreachable("a1", since=START)
    eff = rig.engine.cancel(job_id, revert=False)
    assert eff.kill == [(rig.store.job_commands(job_id)[0].cmd_id, "a1")]
    assert rig.job(job_id).state == JobState.CANCELLED and eff.dispatch == [rig.open_cmd(waiting)]


# ---------------------------------------------------------------------------- refused dispatch


def test_a_dispatch_refused_again_and_again_fails_its_stage_after_the_deadline(store_at):
    rig = Rig(Store(store_at()), dispatch_refused_deadline_s=60.0)
    job_id, eff = rig.submit()
    waiting, _ = rig.submit()
    cmd_id = eff.dispatch[0]
    why = "no live agent with workspace 'ws' (connected: none)"
    assert rig.engine.on_dispatch_refused(cmd_id, why) == Effects()
    cmd = rig.cmd(cmd_id)
    assert (cmd.state, cmd.waiting_for, cmd.not_before, cmd.refused_since) == (CmdState.PENDING, why, START + 1, START)
    assert rig.engine.view(job_id).waiting_for == why
    rig.clock.advance(59)
    assert rig.engine.on_dispatch_refused(cmd_id, why) == Effects()
    assert rig.cmd(cmd_id).refused_since == START
    rig.clock.advance(1)
    eff = rig.engine.on_dispatch_refused(cmd_id, "every agent that fits is busy (tried a1)")
    job = rig.job(job_id)
    assert job.state == JobState.FAILED and rig.cmd(cmd_id).state == CmdState.DONE
    assert job.reason == (
        "the command could not be started: no agent took it for 60s (orchestrator.dispatch_refused_deadline_s): "
        "every agent that fits is busy (tried a1)"
    )
    assert eff.dispatch == [rig.open_cmd(waiting)]


def test_a_job_whose_agent_is_gone_between_commands_is_unpinned_then_fails_if_nothing_takes_it(store_at):
    rig = Rig(Store(store_at()), dispatch_refused_deadline_s=100.0, unknown_deadline_s=50.0)
    job_id, _ = rig.submit()
    rig.step(job_id)  # SYNC ran on a1, which pinned the job there
    check = rig.open_cmd(job_id)
    assert rig.engine.route(rig.cmd(check))["agent"] == "a1"
    why = "agent 'a1' is not connected to this master (connected: a2)"
    rig.engine.on_dispatch_refused(check, why)
    rig.clock.advance(49)
    rig.engine.on_dispatch_refused(check, why)
    assert rig.job(job_id).agent == "a1"
    rig.clock.advance(1)
    assert rig.engine.on_dispatch_refused(check, why) == Effects()
    # Gone for the stage's unknown deadline: any agent with the workspace may take it now.
    assert (rig.job(job_id).agent, rig.engine.route(rig.cmd(check))["agent"]) == (None, None)
    assert rig.cmd(check).refused_since == START + 50  # the refusal clock starts again
    rig.clock.advance(99)
    rig.engine.on_dispatch_refused(check, "no live agent with workspace 'ws' (connected: none)")
    assert rig.job(job_id).state == JobState.RUNNING
    rig.clock.advance(1)
    rig.engine.on_dispatch_refused(check, "no live agent with workspace 'ws' (connected: none)")
    assert rig.job(job_id).state == JobState.FAILED


def test_a_pin_that_was_asked_for_is_refused_until_the_stage_fails(store_at):
    rig = Rig(Store(store_at()), dispatch_refused_deadline_s=100.0, unknown_deadline_s=50.0)
    job_id, eff = rig.engine.submit(
        P.Submit(
            req_id="r", workspace="ws", source="//depot/dev/...", target="//depot/main/...", pipeline="toy", agent="a1"
        )
    )
    cmd_id = eff.dispatch[0]
    rig.engine.on_dispatch_refused(cmd_id, "agent 'a1' is not connected to this master")
    rig.clock.advance(60)
    rig.engine.on_dispatch_refused(cmd_id, "agent 'a1' is not connected to this master")
    assert rig.job(job_id).agent == "a1" and rig.cmd(cmd_id).refused_since == START
    rig.clock.advance(40)
    rig.engine.on_dispatch_refused(cmd_id, "agent 'a1' is not connected to this master")
    assert rig.job(job_id).state == JobState.FAILED and rig.job(job_id).agent == "a1"


def test_nobody_answering_a_dispatch_is_not_a_refusal(store_at):
    rig = Rig(Store(store_at()), dispatch_refused_deadline_s=60.0)
    job_id, eff = rig.submit()
    cmd_id = eff.dispatch[0]
    for _ in range(3):
        rig.clock.advance(100)
        assert rig.engine.on_dispatch_refused(cmd_id, "no master answered within 5s", refused=False) == Effects()
    cmd = rig.cmd(cmd_id)
    assert (cmd.state, cmd.refused_since, cmd.waiting_for) == (CmdState.PENDING, 0, "no master answered within 5s")
    assert rig.job(job_id).state == JobState.RUNNING
    # A refusal starts the clock only now.
    rig.engine.on_dispatch_refused(cmd_id, "no live agent")
    assert rig.cmd(cmd_id).refused_since == rig.clock()


# ---------------------------------------------------------------------------- resolve and resume


def test_waiting_for_a_resolve_holds_the_workspace_until_resume_finishes(rig):
    job_id, _ = rig.submit()
    waiting, _ = rig.submit()
    rig.step(job_id)
    eff = rig.step(job_id, "CONFLICT")
    assert eff.dispatch == [] and rig.store.open_commands(job_id) == []
    view = rig.engine.view(job_id)
    assert (view.state, view.stage, view.conflicts) == ("WAITING_RESOLVE", "CHECK", ["//depot/main/f.c"])
    assert view.waiting_for == "a person to resolve the conflicts, then `p4bus resume` (1 file needs a resolve)"
    assert (view.reason, view.key_line) == ("", "must resolve")  # waiting is not a failure
    assert rig.job(waiting).state == JobState.QUEUED
    with pytest.raises(JobError, match="only FAILED or CANCELLED jobs can be retried; use resume"):
        rig.engine.retry(job_id, None)
    eff = rig.engine.resume(job_id)
    (check,) = eff.dispatch
    assert rig.cmd(check).stage == "CHECK" and rig.job(job_id).state == JobState.RUNNING
    assert rig.job(job_id).key_line == "must resolve"  # resume ran nothing yet: the last line stays
    with pytest.raises(JobError, match="not WAITING_RESOLVE"):
        rig.engine.resume(job_id)
    rig.finish(check)
    rig.step(job_id)
    assert rig.job(job_id).state == JobState.DONE and rig.job(waiting).state == JobState.RUNNING


def test_waiting_jobs_are_rechecked_once_the_interval_has_passed(store_at):
    rig = Rig(Store(store_at()), recheck_interval_s=30.0)
    job_id, _ = rig.submit()
    rig.step(job_id)
    rig.step(job_id, "CONFLICT")
    assert rig.engine.auto_recheck(rig.clock.advance(30)) == Effects()  # not yet: it waited exactly 30 s
    eff = rig.engine.auto_recheck(rig.clock.advance(1))
    assert eff.dispatch == [rig.open_cmd(job_id)] and rig.job(job_id).stage == "CHECK"
    rig.finish(rig.open_cmd(job_id), "CONFLICT")  # still conflicted: wait again, re-check later
    assert rig.engine.auto_recheck(rig.clock.advance(10)) == Effects()
    assert rig.engine.auto_recheck(rig.clock.advance(21)).dispatch


def test_no_automatic_recheck_when_it_is_off(rig):
    job_id, _ = rig.submit()
    rig.step(job_id)
    rig.step(job_id, "CONFLICT")
    assert rig.engine.auto_recheck(rig.clock.advance(86400)) == Effects()
    assert rig.job(job_id).state == JobState.WAITING_RESOLVE


# ---------------------------------------------------------------------------- cancel


def test_cancel_kills_what_runs_and_hands_the_workspace_on(rig):
    job_id, eff = rig.submit()
    waiting, _ = rig.submit()
    queued, _ = rig.submit()
    (sync,) = eff.dispatch
    rig.run(sync, agent="a7")
    rig.clock.advance(3)
    eff = rig.engine.cancel(job_id, revert=False)
    assert eff.kill == [(sync, "a7")]
    cmd, job = rig.cmd(sync), rig.job(job_id)
    assert (cmd.state, cmd.ended_at, cmd.reason) == (CmdState.CANCELLED, START + 3, "cancelled by request")
    assert (job.state, job.reason) == (JobState.CANCELLED, "cancelled by request")
    assert eff.dispatch == [rig.open_cmd(waiting)] and set(eff.publish) == {job_id, waiting}
    with pytest.raises(JobError, match="already CANCELLED: nothing to cancel"):
        rig.engine.cancel(job_id, revert=False)
    # A queued job has nothing running and nothing to revert.
    eff = rig.engine.cancel(queued, revert=True)
    assert (eff.kill, eff.dispatch) == ([], []) and rig.job(queued).state == JobState.CANCELLED
    assert rig.store.job_commands(queued) == []


def test_cancel_with_revert_cleans_up_step_by_step_before_the_next_job(rig):
    job_id, _ = rig.submit()
    waiting, _ = rig.submit()
    rig.step(job_id)
    check = rig.open_cmd(job_id)
    rig.run(check)
    eff = rig.engine.cancel(job_id, revert=True)
    assert eff.kill == [(check, "a1")]
    revert, delete = rig.store.open_commands(job_id)
    assert (revert.kind, revert.spec.argv, delete.spec.argv) == (CmdKind.CLEANUP, ["revert", "7"], ["delete", "7"])
    assert eff.dispatch == [revert.cmd_id]  # one after another: delete waits for revert
    assert [c.cmd_id for c in rig.engine.due_pending(rig.clock())] == [revert.cmd_id]
    assert "change" not in rig.job(job_id).vars  # a retry must create a new change
    assert rig.job(waiting).state == JobState.QUEUED  # the workspace is still being cleaned
    rig.run(revert.cmd_id)
    assert rig.finish(revert.cmd_id).dispatch == [delete.cmd_id]
    assert rig.job(waiting).state == JobState.QUEUED
    rig.run(delete.cmd_id)
    eff = rig.finish(delete.cmd_id)
    assert rig.job(job_id).state == JobState.CANCELLED
    assert eff.dispatch == [rig.open_cmd(waiting)] and rig.job(waiting).state == JobState.RUNNING


# ---------------------------------------------------------------------------- retry


def test_retry_from_a_stage_and_what_it_refuses(rig):
    job_id, _ = rig.submit()
    rig.step(job_id)
    with pytest.raises(JobError, match="the job is RUNNING: only FAILED or CANCELLED"):
        rig.engine.retry(job_id, None)
    rig.step(job_id, "FAIL")
    job = rig.job(job_id)
    assert (job.state, job.stage, job.reason) == (JobState.FAILED, "CHECK", "broken")
    with pytest.raises(JobError, match="unknown stage 'NOPE': the stages of toy are SYNC, CHECK, SUBMIT"):
        rig.engine.retry(job_id, "NOPE")
    with pytest.raises(JobError, match="cannot retry from SUBMIT: the job stopped at CHECK and would skip CHECK"):
        rig.engine.retry(job_id, "SUBMIT")
    with pytest.raises(JobError, match="no job 'INT-nope'"):
        rig.engine.retry("INT-nope", None)
    assert rig.job(job_id).state == JobState.FAILED  # a refusal changes nothing
    eff = rig.engine.retry(job_id, None)  # from where it stopped
    (check,) = eff.dispatch
    job = rig.job(job_id)
    assert (job.state, job.stage, job.reason, job.retry_from, job.vars) == (
        JobState.RUNNING,
        "CHECK",
        "",
        None,
        {"change": 7},
    )
    assert rig.cmd(check).stage == "CHECK"


def test_retry_from_a_stage_whose_input_a_revert_removed_is_refused(rig):
    job_id, _ = rig.submit()
    rig.step(job_id)
    rig.engine.cancel(job_id, revert=True)
    for cmd in rig.store.open_commands(job_id):
        rig.finish(cmd.cmd_id)
    with pytest.raises(JobError, match="needs the change that SYNC records, and this job has none; retry from SYNC"):
        rig.engine.retry(job_id, "CHECK")
    rig.engine.retry(job_id, "SYNC")
    assert rig.job(job_id).stage == "SYNC" and rig.cmd(rig.open_cmd(job_id)).stage == "SYNC"


def test_a_retried_job_queues_behind_the_job_holding_its_workspace(rig):
    job_id, _ = rig.submit()
    rig.step(job_id, "FAIL")
    holder, _ = rig.submit()
    rig.step(holder)
    rig.step(holder, "CONFLICT")
    eff = rig.engine.retry(job_id, "SYNC")
    assert eff.dispatch == [] and eff.publish == [job_id]
    job = rig.job(job_id)
    assert (job.state, job.retry_from) == (JobState.QUEUED, "SYNC")
    assert rig.engine.view(job_id).waiting_for == f"job {holder} on workspace ws (number 1 in its queue)"
    rig.engine.cancel(holder, revert=False)
    job = rig.job(job_id)
    assert (job.state, job.stage, job.retry_from) == (JobState.RUNNING, "SYNC", None)


# ---------------------------------------------------------------------------- views and refusals


def test_views_list_unfinished_jobs_and_a_jobs_timeline(rig):
    done, _ = rig.submit("ws2")
    for _ in range(3):
        rig.step(done)
    running, _ = rig.submit()
    queued, _ = rig.submit()
    assert [v.job_id for v in rig.engine.views(include_finished=False, limit=10)] == [running, queued]
    assert [v.job_id for v in rig.engine.views(include_finished=True, limit=2)] == [running, queued]
    assert [v.job_id for v in rig.engine.views(include_finished=True, limit=10)] == [done, running, queued]
    view = rig.engine.view(done)
    assert (view.state, view.submitted_change, view.change, view.workspace) == ("DONE", 8, 7, "ws2")
    assert view.params == {"source": "//depot/dev/...", "target": "//depot/main/..."}
    assert [(r.stage, r.state, r.argv, r.outcome) for r in view.timeline] == [
        ("SYNC", "DONE", ["sync", "try1"], "NEXT"),
        ("CHECK", "DONE", ["check", "try1"], "NEXT"),
        ("SUBMIT", "DONE", ["submit", "try1"], "NEXT"),
    ]
    with pytest.raises(JobError, match="no job 'INT-nope'") as err:
        rig.engine.view("INT-nope")
    assert err.value.code == "unknown_job"


def test_submit_without_a_workspace(store_at):
    one = Rig(Store(store_at("one")), workspaces=("only",))
    job_id, _ = one.submit(workspace=None)
    assert one.job(job_id).workspace == "only"
    with pytest.raises(JobError) as err:
        Rig(Store(store_at("two"))).submit(workspace=None)
    assert str(err.value) == "no workspace given and more than one is configured: pass --workspace (ws, ws2)"
    with pytest.raises(JobError) as err:
        Rig(Store(store_at("none")), workspaces=()).submit(workspace=None)
    message = str(err.value)
    assert "none is configured" in message and "[orchestrator.workspaces.NAME]" in message
    assert "more than one" not in message


def test_submit_refuses_an_unknown_pipeline_or_workspace(rig):
    with pytest.raises(JobError, match="unknown pipeline 'p4-integrate' \\(known: toy\\)"):
        rig.engine.submit(P.Submit(req_id="r", workspace="ws", source="//depot/dev/...", target="//depot/main/..."))
    with pytest.raises(JobError, match="workspace 'nope' is not configured"):
        rig.submit("nope")
    assert rig.engine.views(include_finished=True, limit=10) == []
