"""Jobs that fail fast and leave no mess: the given source change is checked, conflict markers
left in resolved files send the job back, a person's approval gates the submit."""

from __future__ import annotations

import pytest
from test_pipeline_helpers import PIPELINE, build, ctx, err, interpret, ok, workspace

from orchestrator.pipeline import (
    JobState,
    RefusedTransition,
    approve_transition,
    p4parse,
    resume_transition,
    retry_from,
    transition,
)
from orchestrator.pipeline import OutcomeKind as K
from orchestrator.pipeline.model import next_

pytestmark = pytest.mark.timeout(10)

# ---------------------------------------------------------------------------- --change N

SUBMITTED = "... Change 42\n... Date 2026/12/01 16:34:46\n... Client ws\n... User bob\n... Status submitted\n"


def test_given_submitted_change_goes_on():
    outcome = interpret("GET_LATEST_CL", ok(SUBMITTED), vars={}, change=42)
    assert outcome.kind is K.NEXT
    assert outcome.key_line == "Change 42 by bob@ws (submitted)"
    assert outcome.updates == {}


def test_unknown_change_fails_with_p4s_line():
    outcome = interpret("GET_LATEST_CL", err("Change 999 unknown.\n"), vars={}, change=999)
    assert outcome.kind is K.FAIL
    assert outcome.reason == "source change 999 cannot be used"
    assert outcome.key_line == "Change 999 unknown."


def test_pending_change_fails_naming_its_status():
    outcome = interpret("GET_LATEST_CL", ok(SUBMITTED.replace("submitted", "pending")), vars={}, change=42)
    assert outcome.kind is K.FAIL
    assert "source change 42 is pending, not submitted" in outcome.reason
    assert outcome.key_line == "Change 42 by bob@ws (pending)"


def test_a_spec_for_another_number_is_not_taken_for_the_given_change():
    # `change -o` of a new change prints a template ("Change new"): never a submitted change.
    outcome = interpret("GET_LATEST_CL", ok("... Change new\n... Status new\n"), vars={}, change=42)
    assert outcome.kind is K.FAIL


# ---------------------------------------------------------------------------- files another change holds


def test_files_opened_in_another_change_name_it_and_how_to_clean_it():
    stdout = "... depotFile //depot/rel/a.txt\n... change 5\n\n"
    outcome = interpret("INTEGRATE", ok(stdout), step=1, vars={"change": 123, "integrate_followup": "check_opened"})
    assert outcome.kind is K.FAIL
    assert outcome.reason == (
        "//depot/rel/a.txt is already opened on this client in change 5: revert its files and delete it in "
        "workspace ws1 (`p4 revert -c 5 //...` then `p4 change -d 5`), then retry"
    )
    assert outcome.updates["blocking_change"] == 5  # the orchestrator names the job that left it


def test_files_opened_in_the_default_change_say_how_to_revert_them():
    stdout = "... depotFile //depot/rel/b.txt\n... change default\n\n"
    outcome = interpret("INTEGRATE", ok(stdout), step=1, vars={"change": 123, "integrate_followup": "check_opened"})
    assert "`p4 revert -c default //...`" in outcome.reason
    assert outcome.updates["blocking_change"] is None


# ---------------------------------------------------------------------------- conflict markers

# `p4 diff -du` of a file resolved with `resolve -af` (p4sim's output; docs/p4-behaviour.md).
MARKED = """==== //depot/main/src/conflict.c#2 - /ws/main/src/conflict.c ====
@@ -1,7 +1,13 @@
 conflict line 1
-conflict line 2
 conflict line 3
+>>>> ORIGINAL //depot/dev/src/conflict.c#1
+conflict line 4
+==== THEIRS //depot/dev/src/conflict.c#2
+conflict line 4 as dev wants it
+==== YOURS //ws/main/src/conflict.c
 conflict line 4 as main wants it
+<<<<
 conflict line 5
@@ -20,3 +20,4 @@
 context
+<<<< tail
==== //depot/main/src/clean.c#3 - /ws/main/src/clean.c ====
@@ -1,2 +1,2 @@
-old
+new
"""


def test_conflict_markers_are_found_with_their_file_and_line():
    found = p4parse.conflict_markers(MARKED)
    assert [(m.file, m.line) for m in found] == [
        ("/ws/main/src/conflict.c", 3),
        ("/ws/main/src/conflict.c", 5),
        ("/ws/main/src/conflict.c", 7),
        ("/ws/main/src/conflict.c", 9),
        ("/ws/main/src/conflict.c", 21),
    ]
    assert found[0].text == ">>>> ORIGINAL //depot/dev/src/conflict.c#1"


def test_markers_already_in_the_depot_revision_are_context_not_reported():
    diff = "==== //d/f.c#2 - /ws/f.c ====\n@@ -1,2 +1,3 @@\n <<<<\n==== YOURS kept\n+new line\n"
    # Only an added line counts; an unprefixed line is a file header or noise, never a marker.
    assert p4parse.conflict_markers(diff) == []


def test_a_unified_diff_with_file_lines_names_the_new_file():
    diff = "--- a/f.c\t2026-01-01\n+++ /ws/f.c\t2026-01-02\n@@ -1 +1,2 @@\n x\n+==== THEIRS //d/f.c#2\n"
    assert p4parse.conflict_markers(diff) == [p4parse.Marker("/ws/f.c", 2, "==== THEIRS //d/f.c#2")]


RESOLVED = {"change": 123, "conflicts": ["/ws/main/src/conflict.c"]}


def test_recheck_with_nothing_left_to_resolve_checks_the_resolved_files_for_markers():
    outcome = interpret("RESOLVE_CHECK", ok("", "No file(s) to resolve.\n"), vars=RESOLVED)
    assert outcome.kind is K.REPEAT
    assert outcome.updates == {"conflicts": [], "resolved_files": ["/ws/main/src/conflict.c"]}
    vars = {"change": 123, "resolved_files": ["/ws/main/src/conflict.c"]}
    assert build("RESOLVE_CHECK", step=1, vars=vars).argv[1:] == ["diff", "-du", "/ws/main/src/conflict.c"]


def test_markers_send_the_job_back_naming_files_and_lines():
    vars = {"change": 123, "resolved_files": ["/ws/main/src/conflict.c", "/ws/main/src/clean.c"]}
    outcome = interpret("RESOLVE_CHECK", ok(MARKED), step=1, vars=vars)
    assert outcome.kind is K.WAIT_RESOLVE
    assert outcome.conflicts == ["/ws/main/src/conflict.c"]
    assert outcome.reason.startswith("conflict markers left in 1 resolved file(s) at /ws/main/src/conflict.c:3, ")
    assert "(+0 more)" not in outcome.reason and outcome.reason.endswith("edit them out or resolve again")
    assert outcome.key_line == "/ws/main/src/conflict.c:3: >>>> ORIGINAL //depot/dev/src/conflict.c#1"


def test_no_markers_goes_on_and_a_cut_diff_is_not_guessed_at():
    vars = {"change": 123, "resolved_files": ["/ws/main/src/clean.c"]}
    clean = MARKED.split("==== //depot/main/src/clean.c")[1]
    outcome = interpret("RESOLVE_CHECK", ok("==== //depot/main/src/clean.c" + clean), step=1, vars=vars)
    assert (outcome.kind, outcome.key_line) == (K.NEXT, "no conflict markers in 1 resolved file(s)")
    assert interpret("RESOLVE_CHECK", ok(MARKED, truncated=True), step=1, vars=vars).kind is K.FAIL
    assert interpret("RESOLVE_CHECK", err("p4 diff: broken\n"), step=1, vars=vars).kind is K.FAIL


def test_a_recheck_without_a_resolved_list_has_no_marker_step():
    assert build("RESOLVE_CHECK", step=1, vars={"change": 123}) is None
    assert interpret("RESOLVE_CHECK", ok("", "No file(s) to resolve.\n"), vars={"change": 123}).kind is K.NEXT


# ---------------------------------------------------------------------------- review before submit

REVIEWED = workspace(review_before_submit=True)


def test_a_reviewed_workspace_waits_for_approval_after_the_final_shelf():
    t = transition(PIPELINE, ctx("NC_FIX", vars={"change": 123}, workspace=REVIEWED), next_("name check: 3 pass"))
    assert (t.state, t.stage, t.command) == (JobState.WAITING_APPROVAL, "P4PUSH", None)
    # Without the policy the same outcome goes straight on to submit.
    t = transition(PIPELINE, ctx("NC_FIX", vars={"change": 123}), next_("name check: 3 pass"))
    assert (t.state, t.stage) == (JobState.RUNNING, "P4PUSH")


def test_approve_runs_the_gated_stage_once_and_only_from_waiting_approval():
    waiting = ctx("P4PUSH", vars={"change": 123}, workspace=REVIEWED)
    t = approve_transition(PIPELINE, waiting, JobState.WAITING_APPROVAL)
    assert (t.state, t.stage, t.vars["approved"]) == (JobState.RUNNING, "P4PUSH", True)
    assert t.command.argv[1:] == ["shelve", "-d", "-c", "123"]
    with pytest.raises(RefusedTransition, match="the job is RUNNING, not WAITING_APPROVAL"):
        approve_transition(PIPELINE, waiting, JobState.RUNNING)


def test_an_approval_covers_the_reviewed_shelf_only():
    approved = {"change": 123, "approved": True}
    # A retry of the submit itself keeps it: the shelf was reviewed and is gone with shelve -d.
    t = retry_from(PIPELINE, ctx("P4PUSH", vars=approved, workspace=REVIEWED), JobState.FAILED, "P4PUSH")
    assert (t.state, t.vars["approved"]) == (JobState.RUNNING, True)
    # Re-running earlier stages makes another shelf; a resume re-checks: approve again.
    t = retry_from(PIPELINE, ctx("P4PUSH", vars=approved, workspace=REVIEWED), JobState.FAILED, "SHELVE")
    assert "approved" not in t.vars
    t = resume_transition(PIPELINE, ctx("P4PUSH", vars=approved, workspace=REVIEWED), JobState.WAITING_RESOLVE)
    assert "approved" not in t.vars
