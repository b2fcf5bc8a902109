"""The job state machine: every outcome kind from the states it can arrive in, skips,
retry backoff and exhaustion, the LOGIN call and return, resume and retry --from."""

from __future__ import annotations

import dataclasses

import pytest
from test_pipeline_helpers import CONNECTION_REFUSED, PASSWORD, PIPELINE, ctx, err, ok

from orchestrator.pipeline import (
    JobState,
    Outcome,
    OutcomeKind,
    RefusedTransition,
    RetryPolicy,
    SiteConfig,
    resume_transition,
    retry_from,
    start,
    transition,
)
from orchestrator.pipeline.model import fail, next_, repeat, retry

pytestmark = pytest.mark.timeout(10)

S = JobState


def step(stage: str, outcome: Outcome, **ctx_kw):
    return transition(PIPELINE, ctx(stage, **ctx_kw), outcome)


# ---------------------------------------------------------------------------- start and skips


def test_start_skips_login_without_a_password():
    t = start(PIPELINE, ctx("", vars={}))
    assert (t.state, t.stage, t.step, t.attempt) == (S.RUNNING, "GET_LATEST_CL", 0, 1)
    assert t.skipped == ("LOGIN",)
    assert t.command.argv[1:] == ["-ztag", "changes", "-m1", "-s", "submitted", "//depot/main/..."]


def test_start_with_a_source_change_checks_it_first():
    t = start(PIPELINE, ctx("", vars={}, change=42))
    assert (t.stage, t.skipped) == ("GET_LATEST_CL", ("LOGIN",))
    assert t.command.argv[1:] == ["-ztag", "change", "-o", "42"]


def test_start_with_password_logs_in_first_and_keeps_the_secret_out_of_vars():
    t = start(PIPELINE, ctx("", vars={}, password=True))
    assert t.stage == "LOGIN"
    assert t.command.stdin == PASSWORD.encode() + b"\n" and t.command.stdin_secret
    assert PASSWORD not in repr(t)
    assert PASSWORD not in repr(t.vars)


def test_password_set_but_not_supplied_fails_the_job_with_a_reason():
    t = start(PIPELINE, dataclasses.replace(ctx("", vars={}, password=True), secrets={}))
    assert (t.state, t.stage) == (S.FAILED, "LOGIN")
    assert "supplied none" in t.reason


def test_timeout_comes_from_the_stage():
    t = start(PIPELINE, ctx("", vars={}))
    assert t.command.timeout == PIPELINE.stage("GET_LATEST_CL").timeout


# ---------------------------------------------------------------------------- NEXT / REPEAT


def test_next_advances_resets_step_and_attempt_and_merges_updates():
    t = step("CREATE_CHANGE", next_("Change 123 created.", change=123), vars={"source_change": 7}, attempt=2)
    assert (t.state, t.stage, t.step, t.attempt) == (S.RUNNING, "INTEGRATE", 0, 1)
    assert t.vars == {"source_change": 7, "change": 123}
    assert t.key_line == "Change 123 created."
    assert t.command.argv[1:] == ["integrate", "-c", "123", "//depot/main/...@7", "//depot/rel/..."]


def test_next_from_needs_resolve_passes_the_resume_only_check():
    t = step("NEEDS_RESOLVE", next_(conflicts=[]))
    assert t.stage == "PRE_SUBMIT"
    assert t.skipped == ()


def test_repeat_runs_the_next_step():
    t = step("INTEGRATE", repeat(integrate_followup="delete_change"))
    assert (t.stage, t.step) == ("INTEGRATE", 1)
    assert t.command.argv[1:] == ["change", "-d", "123"]


def test_repeat_after_the_last_step_finishes_the_stage():
    t = step("PRE_SUBMIT", repeat(opened_count=2))  # no hooks configured
    assert (t.stage, t.step) == ("SHELVE", 0)


def test_pre_submit_hooks_run_one_per_step():
    site = SiteConfig(pre_submit=[["make", "lint"], ["make", "test", "{change}"]])
    t1 = step("PRE_SUBMIT", repeat(), site=site)
    t2 = step("PRE_SUBMIT", repeat(), step=1, site=site)
    t3 = step("PRE_SUBMIT", repeat(), step=2, site=site)
    assert t1.command.argv == ["make", "lint"]
    assert t2.command.argv == ["make", "test", "123"]
    assert t3.stage == "SHELVE"


def test_name_check_without_offenders_skips_the_fix_steps():
    t = step("NC_FIX", next_(name_check_offenders=[]))
    assert (t.stage, t.step) == ("P4PUSH", 0)
    assert t.command.argv[1:] == ["shelve", "-d", "-c", "123"]


def test_name_check_offenders_are_reverted_then_reshelved():
    offenders = [{"path": "//depot/rel/aux.c", "reason": "reserved name"}]
    t = step("NC_FIX", repeat(name_check_offenders=offenders))
    assert t.command.argv[1:] == ["revert", "-c", "123", "//depot/rel/aux.c"]
    t = step("NC_FIX", repeat(), step=1, vars=t.vars)
    assert t.command.argv[1:] == ["shelve", "-r", "-c", "123"]


def test_site_push_has_no_shelf_deletion_step():
    t = step("NC_FIX", next_(), site=SiteConfig(push=["p4push", "-c", "{change}"]))
    assert t.command.argv == ["p4push", "-c", "123"]


# ---------------------------------------------------------------------------- terminal outcomes


@pytest.mark.parametrize(
    "kind, state",
    [(OutcomeKind.DONE, S.DONE), (OutcomeKind.NOTHING_TO_DO, S.NOTHING_TO_DO), (OutcomeKind.FAIL, S.FAILED)],
)
def test_terminal_outcomes(kind, state):
    t = step("P4PUSH", Outcome(kind=kind, reason="why", key_line="the line"), step=1)
    assert (t.state, t.stage, t.terminal, t.command) == (state, "P4PUSH", True, None)
    assert (t.reason, t.key_line) == ("why", "the line")


def test_already_integrated_deletes_the_empty_change_then_ends_nothing_to_do():
    t = step(
        "INTEGRATE",
        PIPELINE.stage("INTEGRATE").interpret(ctx("INTEGRATE"), ok("", "All revision(s) already integrated.\n")),
    )
    assert t.command.argv[1:] == ["change", "-d", "123"]
    c = ctx(t.stage, step=t.step, vars=t.vars)
    t = transition(PIPELINE, c, PIPELINE.stage("INTEGRATE").interpret(c, ok("Change 123 deleted.\n")))
    assert (t.state, t.terminal) == (S.NOTHING_TO_DO, True)


# ---------------------------------------------------------------------------- WAIT_RESOLVE and resume

CONFLICTS = ["/work/ws1/rel/b.txt"]


@pytest.mark.parametrize("stage, at_step", [("NEEDS_RESOLVE", 0), ("RESOLVE_CHECK", 0), ("P4PUSH", 1)])
def test_wait_resolve_parks_the_job_with_the_files(stage, at_step):
    t = step(stage, Outcome(kind=OutcomeKind.WAIT_RESOLVE, conflicts=CONFLICTS), step=at_step)
    assert (t.state, t.stage, t.command, t.terminal) == (S.WAITING_RESOLVE, stage, None, False)
    assert t.vars["conflicts"] == CONFLICTS


def test_resume_rechecks():
    t = resume_transition(
        PIPELINE, ctx("NEEDS_RESOLVE", vars={"change": 123, "conflicts": CONFLICTS}), S.WAITING_RESOLVE
    )
    assert (t.state, t.stage, t.step, t.attempt) == (S.RUNNING, "RESOLVE_CHECK", 0, 1)
    assert t.command.argv[1:] == ["-ztag", "resolve", "-n", "-c", "123"]


def test_resume_check_clean_goes_to_pre_submit():
    t = step("RESOLVE_CHECK", next_(conflicts=[]))
    assert t.stage == "PRE_SUBMIT"
    assert t.vars["conflicts"] == []


@pytest.mark.parametrize("state", [S.RUNNING, S.FAILED, S.DONE, S.QUEUED])
def test_resume_refused_unless_waiting(state):
    with pytest.raises(RefusedTransition, match="only a job waiting"):
        resume_transition(PIPELINE, ctx("SYNC"), state)


# ---------------------------------------------------------------------------- RETRY


def test_retry_waits_with_backoff_and_the_same_command():
    first = step("SYNC", retry("cannot reach the server"))
    second = step("SYNC", retry("cannot reach the server"), attempt=2)
    assert (first.state, first.stage, first.attempt, first.delay_s) == (S.RETRY_WAIT, "SYNC", 2, 10.0)
    assert (second.attempt, second.delay_s) == (3, 20.0)
    assert first.command == transition(PIPELINE, ctx("GET_LATEST_CL", change=42, vars={}), next_()).command  # SYNC's


def test_retry_keeps_the_sub_step():
    t = step("P4PUSH", retry("timed out"), step=1)
    assert (t.stage, t.step) == ("P4PUSH", 1)
    assert t.command.argv[1:] == ["submit", "-c", "123"]


def test_retry_exhausted_fails_with_the_reason_and_line():
    t = step("SYNC", retry("cannot reach the Perforce server", "Perforce client error: ..."), attempt=3)
    assert (t.state, t.terminal) == (S.FAILED, True)
    assert t.reason == "cannot reach the Perforce server (gave up after 3 attempts)"
    assert t.key_line == "Perforce client error: ..."


def test_site_retry_policy_overrides_the_stage():
    site = SiteConfig(retry={"SYNC": RetryPolicy(max_attempts=1)})
    assert step("SYNC", retry("x"), site=site).state is S.FAILED
    site = SiteConfig(retry={"SYNC": RetryPolicy(max_attempts=5, backoff_s=1, factor=3)})
    assert step("SYNC", retry("x"), attempt=3, site=site).delay_s == 9


def test_refused_connection_end_to_end_retries_then_fails():
    for attempt in (1, 2, 3):
        c = ctx("SYNC", attempt=attempt)
        t = transition(PIPELINE, c, PIPELINE.stage("SYNC").interpret(c, err(CONNECTION_REFUSED)))
    assert t.state is S.FAILED
    assert t.key_line.startswith("Perforce client error: Connect to server failed")


# ---------------------------------------------------------------------------- LOGIN call and return

EXPIRED = err("Your session has expired, please login again.\n")


def run(stage, result, **ctx_kw):
    c = ctx(stage, **ctx_kw)
    return transition(PIPELINE, c, PIPELINE.stage(stage).interpret(c, result))


def test_expired_ticket_logs_in_and_comes_back_to_the_stage():
    to_login = run(
        "NC_FIX",
        EXPIRED,
        step=1,
        password=True,
        vars={"change": 123, "name_check_offenders": [{"path": "//d/x", "reason": "r"}]},
    )
    assert (to_login.stage, to_login.step) == ("LOGIN", 0)
    assert to_login.command.stdin_secret
    back = run("LOGIN", ok("User bob logged in.\n"), password=True, vars=to_login.vars)
    assert (back.state, back.stage, back.step) == (S.RUNNING, "NC_FIX", 0)  # the stage from its start
    assert "_return" not in back.vars
    assert back.vars["_returned_to"] == "NC_FIX"


def test_still_expired_right_after_login_fails():
    back_vars = {"change": 123, "_returned_to": "SYNC"}
    t = run("SYNC", EXPIRED, password=True, vars=back_vars)
    assert t.state is S.FAILED
    assert "right after logging in" in t.reason


def test_a_later_expiry_may_log_in_again():
    t = run("SYNC", ok("", "File(s) up-to-date.\n"), password=True, vars={"change": 1, "_returned_to": "SYNC"})
    assert "_returned_to" not in t.vars
    t = run("RESOLVE_CHECK", EXPIRED, password=True, vars=t.vars)
    assert t.stage == "LOGIN"


def test_login_fails_during_the_call_fails_the_job():
    t = run("LOGIN", err("Password invalid.\n"), password=True, vars={"_return": "SYNC"})
    assert t.state is S.FAILED


# ---------------------------------------------------------------------------- retry --from


def test_retry_restarts_the_failed_stage_by_default():
    t = retry_from(PIPELINE, ctx("SHELVE", step=0, attempt=3), S.FAILED)
    assert (t.state, t.stage, t.step, t.attempt) == (S.RUNNING, "SHELVE", 0, 1)


def test_retry_from_an_earlier_stage():
    t = retry_from(PIPELINE, ctx("P4PUSH", vars={"change": 123, "_return": "X"}), S.CANCELLED, "RESOLVE_PASS_1")
    assert t.stage == "RESOLVE_PASS_1"
    assert "_return" not in t.vars


def test_retry_from_a_later_stage_is_refused():
    with pytest.raises(RefusedTransition, match="would skip SHELVE, NC_FIX; retry from SHELVE or an earlier"):
        retry_from(PIPELINE, ctx("SHELVE"), S.FAILED, "P4PUSH")


def test_retry_from_an_unknown_stage_lists_the_stages():
    with pytest.raises(RefusedTransition, match=r"unknown stage 'SUBMIT'.*LOGIN, GET_LATEST_CL"):
        retry_from(PIPELINE, ctx("SHELVE"), S.FAILED, "SUBMIT")


def test_retry_from_a_stage_whose_input_was_never_made_names_the_producer():
    with pytest.raises(RefusedTransition, match="needs the change that CREATE_CHANGE records"):
        retry_from(PIPELINE, ctx("INTEGRATE", vars={"source_change": 7}), S.FAILED)


@pytest.mark.parametrize("state", [S.RUNNING, S.DONE, S.NOTHING_TO_DO, S.WAITING_RESOLVE, S.QUEUED])
def test_retry_refused_unless_failed_or_cancelled(state):
    with pytest.raises(RefusedTransition, match="only FAILED or CANCELLED"):
        retry_from(PIPELINE, ctx("SYNC"), state)


# ---------------------------------------------------------------------------- a whole clean job


def test_clean_job_walks_every_stage_in_order():
    outputs = {
        ("GET_LATEST_CL", 0): ok("... change 7\n... user alice\n... client a\n\n"),
        ("SYNC", 0): ok("//depot/rel/a.txt#3 - updating /work/ws1/rel/a.txt\n"),
        ("CREATE_CHANGE", 0): ok("Change 123 created.\n"),
        ("INTEGRATE", 0): ok("//depot/rel/a.txt#3 - integrate from //depot/main/a.txt#4,#5\n"),
        ("RESOLVE_PASS_1", 0): ok("//bob-rel/rel/a.txt - merge from //depot/main/a.txt\n"),
        ("RESOLVE_PASS_2", 0): ok("", "No file(s) to resolve.\n"),
        ("NEEDS_RESOLVE", 0): ok("", "No file(s) to resolve.\n"),
        ("PRE_SUBMIT", 0): ok("... depotFile //depot/rel/a.txt\n... change 123\n\n"),
        ("SHELVE", 0): ok("Change 123 files shelved.\n"),
        ("NC_FIX", 0): ok("... depotFile //depot/rel/a.txt\n... change 123\n\n"),
        ("P4PUSH", 0): ok("Shelved change 123 deleted.\n"),
        ("P4PUSH", 1): ok("Change 123 renamed change 125 and submitted.\n"),
    }
    t = start(PIPELINE, ctx("", vars={}))
    visited = []
    while not t.terminal:
        visited.append((t.stage, t.step))
        c = ctx(t.stage, step=t.step, attempt=t.attempt, vars=t.vars)
        t = transition(PIPELINE, c, PIPELINE.stage(t.stage).interpret(c, outputs[t.stage, t.step]))
    assert visited == list(outputs)
    assert (t.state, t.vars["submitted_change"], t.vars["change"]) == (S.DONE, 125, 123)


def test_fail_outcome_helper_is_terminal_at_any_stage():
    for name in PIPELINE.names():
        assert step(name, fail("no")).state is S.FAILED
