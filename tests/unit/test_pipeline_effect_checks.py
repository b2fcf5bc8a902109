"""Effect checks: a step whose command was lost looks for its effect before it runs again.

Driven through the real p4-integrate pipeline with pure calls: the lost result, the transition
to the next attempt, the check's command and what its p4 output means (transcripts as
docs/p4-behaviour.md records `p4 changes -l`).
"""

from __future__ import annotations

import pytest
from test_pipeline_helpers import PIPELINE, ctx, err, ok

from orchestrator.pipeline import (
    CommandResult,
    JobState,
    OutcomeKind,
    RetryPolicy,
    SiteConfig,
    Transition,
    retry_from,
    transition,
)
from orchestrator.pipeline.rules import EFFECT_UNKNOWN_KEY

pytestmark = pytest.mark.timeout(10)

K = OutcomeKind
JOB = "INT-20261128-0007"
LOST = CommandResult(lost=True)


def _changes(*entries: tuple[int, bool, str]) -> str:
    """`p4 changes -l` output: (number, pending, description) newest first."""
    out = []
    for number, pending, desc in entries:
        out.append(f"Change {number} on 2026/11/28 by bob@bob-rel{' *pending*' if pending else ''}\n\n")
        out.append("".join(f"\t{line}\n" for line in desc.split("\n")) + "\n")
    return "".join(out)


def _after(t: Transition, stage: str, result: CommandResult, **kw) -> Transition:
    """Interpret ``result`` as the command ``t`` dispatched, and move on."""
    c = ctx(stage, step=t.step, attempt=t.attempt, vars=t.vars, **kw)
    return transition(PIPELINE, c, PIPELINE.stage(stage).interpret(c, result))


def _lost(stage: str, step: int = 0, vars: dict | None = None, **kw) -> Transition:
    c = ctx(stage, step=step, vars=vars, **kw)
    return transition(PIPELINE, c, PIPELINE.stage(stage).interpret(c, LOST))


# ---------------------------------------------------------------------------- CREATE_CHANGE


def test_a_lost_create_change_first_looks_for_the_change_it_may_have_made():
    t = _lost("CREATE_CHANGE", vars={"source_change": 7})
    assert (t.state, t.stage, t.step, t.attempt) == (JobState.RETRY_WAIT, "CREATE_CHANGE", 0, 2)
    assert t.vars[EFFECT_UNKNOWN_KEY] == ["CREATE_CHANGE", 0]
    assert t.command is not None
    assert t.command.argv[1:] == ["changes", "-l", "-s", "pending", "-c", "bob-rel"]
    assert t.command.stdin is None


def test_the_change_found_by_its_job_mark_is_used_and_nothing_is_created():
    t = _lost("CREATE_CHANGE", vars={"source_change": 7})
    listing = _changes(
        (44, True, "someone else's work"),
        (43, True, f"Integrate //depot/main/... to //depot/rel/... at change 7 (p4bus job {JOB})"),
        (42, True, "Integrate x (p4bus job INT-20261128-00071)"),  # another job, a longer id
    )
    t = _after(t, "CREATE_CHANGE", ok(listing))
    assert (t.state, t.stage, t.step) == (JobState.RUNNING, "INTEGRATE", 0)
    assert t.vars["change"] == 43 and t.vars[EFFECT_UNKNOWN_KEY] is None
    assert t.key_line == "Change 43 on 2026/11/28 by bob@bob-rel *pending* (created before the agent was lost)"
    assert t.command is not None and t.command.argv[1:4] == ["integrate", "-c", "43"]


def test_no_change_with_the_mark_runs_the_create_itself_at_the_same_attempt():
    t = _lost("CREATE_CHANGE", vars={"source_change": 7})
    t = _after(t, "CREATE_CHANGE", ok(_changes((42, True, "Integrate x (p4bus job INT-20261128-00071)"))))
    assert (t.state, t.stage, t.step, t.attempt) == (JobState.RUNNING, "CREATE_CHANGE", 0, 2)
    assert t.vars[EFFECT_UNKNOWN_KEY] is None
    assert t.command is not None and t.command.argv[1:] == ["change", "-i"]
    assert f"(p4bus job {JOB})" in t.command.stdin.decode()
    t = _after(t, "CREATE_CHANGE", ok("Change 45 created.\n"))
    assert (t.stage, t.vars["change"]) == ("INTEGRATE", 45)


def test_a_person_s_description_carries_the_job_mark_too():
    t = _lost("CREATE_CHANGE", vars={"source_change": 7}, desc="Merge main for the release")
    t = _after(t, "CREATE_CHANGE", ok(""), desc="Merge main for the release")
    assert t.command is not None
    assert t.command.stdin.decode().endswith(f"\tMerge main for the release\n\t\n\t(p4bus job {JOB})\n")
    found = _changes((50, True, f"Merge main for the release\n\n(p4bus job {JOB})"))
    t = _lost("CREATE_CHANGE", vars={"source_change": 7}, desc="Merge main for the release")
    assert _after(t, "CREATE_CHANGE", ok(found), desc="Merge main for the release").vars["change"] == 50


def test_a_check_that_cannot_list_fails_and_a_cut_listing_without_the_mark_fails():
    t = _lost("CREATE_CHANGE", vars={"source_change": 7})
    failed = _after(t, "CREATE_CHANGE", err("Client 'bob-rel' unknown - use 'client' command to create it.\n"))
    assert failed.state == JobState.FAILED and "p4 changes failed" in failed.reason
    cut = _after(t, "CREATE_CHANGE", ok(_changes((42, True, "other")), truncated=True))
    assert cut.state == JobState.FAILED and "too long to search whole" in cut.reason


def test_a_lost_check_is_checked_again():
    t = _lost("CREATE_CHANGE", vars={"source_change": 7})
    t = _after(t, "CREATE_CHANGE", LOST)
    assert (t.state, t.attempt) == (JobState.RETRY_WAIT, 3)
    assert t.command is not None and t.command.argv[1] == "changes"


def test_a_stage_that_must_not_rerun_fails_but_a_retry_checks_first():
    site = SiteConfig(retry={"CREATE_CHANGE": RetryPolicy(on_lost="fail")})
    t = _lost("CREATE_CHANGE", vars={"source_change": 7}, site=site)
    assert t.state == JobState.FAILED and "not run again automatically" in t.reason
    again = retry_from(PIPELINE, ctx("CREATE_CHANGE", vars=t.vars), JobState.FAILED)
    assert again.command is not None and again.command.argv[1:3] == ["changes", "-l"]


# ---------------------------------------------------------------------------- P4PUSH


def test_a_lost_submit_looks_for_the_submitted_change_and_is_done_when_found():
    t = _lost("P4PUSH", step=1)  # step 0 deleted the shelf
    assert (t.state, t.step, t.attempt) == (JobState.RETRY_WAIT, 1, 2)
    assert t.command is not None
    assert t.command.argv[1:] == ["changes", "-l", "-s", "submitted", "-c", "bob-rel", "-m", "20"]
    # The server renumbered it when it was submitted: found by its mark, not its number.
    t = _after(t, "P4PUSH", ok(_changes((130, False, f"Integrate ... (p4bus job {JOB})"), (99, False, "older"))))
    assert (t.state, t.vars["submitted_change"]) == (JobState.DONE, 130)
    assert t.key_line == "Change 130 on 2026/11/28 by bob@bob-rel (submitted before the agent was lost)"


def test_a_lost_submit_not_found_submitted_is_submitted_now():
    t = _lost("P4PUSH", step=1)
    t = _after(t, "P4PUSH", ok(_changes((99, False, "older"))))
    assert (t.state, t.step, t.attempt) == (JobState.RUNNING, 1, 2)
    assert t.key_line == "change 123 is not submitted: submitting it"
    assert t.command is not None and t.command.argv[1:] == ["submit", "-c", "123"]
    t = _after(t, "P4PUSH", ok("Submitting change 123.\nChange 123 submitted.\n"))
    assert (t.state, t.vars["submitted_change"]) == (JobState.DONE, 123)


def test_a_site_push_command_is_checked_the_same_way():
    site = SiteConfig(push=["p4push", "-c", "{change}"])
    t = _lost("P4PUSH", step=0, site=site)
    assert t.command is not None and t.command.argv[1:3] == ["changes", "-l"]
    t = _after(t, "P4PUSH", ok(""), site=site)
    assert t.command is not None and t.command.argv == ["p4push", "-c", "123"]


# ---------------------------------------------------------------------------- safe to repeat


@pytest.mark.parametrize("stage", ["SYNC", "RESOLVE_PASS_1", "RESOLVE_PASS_2"])
def test_steps_safe_to_repeat_just_run_again(stage):
    t = _lost(stage)
    assert (t.state, t.stage, t.attempt) == (JobState.RETRY_WAIT, stage, 2)
    first = PIPELINE.stage(stage).build(ctx(stage))
    assert t.command is not None and first is not None and t.command.argv == first.argv
    t = _after(t, stage, ok("done\n"))
    assert t.vars[EFFECT_UNKNOWN_KEY] is None and t.stage != stage


def test_the_delete_shelf_step_of_p4push_just_runs_again():
    t = _lost("P4PUSH", step=0)
    assert t.command is not None and t.command.argv[1:] == ["shelve", "-d", "-c", "123"]
