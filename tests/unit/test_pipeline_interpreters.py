"""Stage interpreters on p4 transcripts as docs/p4-behaviour.md records them: every warning / exit-0
case and every error case there, plus the process-level rules shared by all stages."""

from __future__ import annotations

import pytest
from test_pipeline_helpers import CONNECTION_REFUSED, err, interpret, ok

from orchestrator.pipeline import CommandResult, OutcomeKind, SiteConfig

pytestmark = pytest.mark.timeout(10)

K = OutcomeKind


# ---------------------------------------------------------------------------- SYNC


@pytest.mark.parametrize(
    "stdout, stderr",
    [
        (
            "//depot/rel/a.txt#1 - added as /work/ws1/rel/a.txt\n"
            "//depot/rel/b.txt#3 - updating /work/ws1/rel/b.txt\n"
            "//depot/rel/c.txt#2 - deleted as /work/ws1/rel/c.txt\n",
            "",
        ),
        ("//depot/rel/a.txt#1 - refreshing /work/ws1/rel/a.txt\n", ""),
        ("", "//depot/rel/... - file(s) up-to-date.\n"),
        ("", "File(s) up-to-date.\n"),
        ("", "//depot/rel/... - no such file(s).\n"),
        (
            "//depot/rel/a.txt#2 - is opened and not being changed\n"
            "... //depot/rel/a.txt - must resolve #2 before submitting\n",
            "",
        ),
    ],
)
def test_sync_warnings_and_info_exit_0_advance(stdout, stderr):
    outcome = interpret("SYNC", ok(stdout, stderr))
    assert outcome.kind is K.NEXT
    assert outcome.key_line  # shown in the timeline


def test_sync_key_line_is_the_warning_when_up_to_date():
    assert (
        interpret("SYNC", ok("", "//depot/rel/... - file(s) up-to-date.\n")).key_line
        == "//depot/rel/... - file(s) up-to-date."
    )


def test_sync_cannot_clobber_fails_with_that_line():
    outcome = interpret(
        "SYNC",
        err(
            "Can't clobber writable file /work/ws1/rel/a.txt\n", "//depot/rel/b.txt#3 - updating /work/ws1/rel/b.txt\n"
        ),
    )
    assert outcome.kind is K.FAIL
    assert outcome.key_line == "Can't clobber writable file /work/ws1/rel/a.txt"
    assert "exit 1" in outcome.reason


def test_sync_truncated_output_still_reads_the_tail():
    outcome = interpret("SYNC", ok("//depot/rel/z.txt#1 - added as /work/ws1/rel/z.txt\n", truncated=True))
    assert outcome.kind is K.NEXT


# ---------------------------------------------------------------------------- GET_LATEST_CL


def test_latest_change_from_ztag_record():
    stdout = (
        "... change 4711\n... time 1793606400\n... user alice\n... client alice-main\n"
        "... status submitted\n... changeType public\n... desc fix the frobnicator\n\n"
    )
    outcome = interpret("GET_LATEST_CL", ok(stdout), vars={})
    assert outcome.kind is K.NEXT
    assert outcome.updates == {"source_change": 4711}
    assert outcome.key_line == "Change 4711 by alice@alice-main"


def test_latest_change_none_submitted_fails():
    outcome = interpret("GET_LATEST_CL", ok("", "//depot/main/... - no such file(s).\n"), vars={})
    assert outcome.kind is K.FAIL
    assert outcome.key_line == "//depot/main/... - no such file(s)."


def test_branch_view_records_sources_and_targets():
    # The Description value ends with a newline: -ztag prints a blank line inside the spec.
    stdout = (
        "... Branch main-to-rel\n... Update 2026/11/01 10:00:00\n... Access 2026/11/01 10:00:00\n"
        "... Owner bob\n... Description Created by bob.\n\n"
        "... Options unlocked\n... View0 //depot/main/... //depot/rel/...\n"
        "... View1 -//depot/main/tmp/... //depot/rel/tmp/...\n"
        '... View2 "//depot/main/my docs/..." "//depot/rel/my docs/..."\n'
    )
    outcome = interpret("GET_LATEST_CL", ok(stdout), vars={}, source=None, target=None, branch_spec="main-to-rel")
    assert outcome.kind is K.REPEAT  # the changes step follows
    assert outcome.updates == {
        "branch_sources": ["//depot/main/...", "//depot/main/my docs/..."],
        "branch_targets": ["//depot/rel/...", "//depot/rel/my docs/..."],
    }


def test_unknown_branch_spec_fails():
    template = "... Branch nope\n... Owner bob\n... View0 //depot/... //depot/...\n"
    outcome = interpret("GET_LATEST_CL", ok(template), vars={}, source=None, target=None, branch_spec="nope")
    assert outcome.kind is K.FAIL
    assert "does not exist" in outcome.reason


# ---------------------------------------------------------------------------- CREATE_CHANGE


@pytest.mark.parametrize(
    "stdout, number",
    [
        ("Change 123 created.\n", 123),
        ("Change 123 created with 2 open file(s).\n", 123),
    ],
)
def test_change_created(stdout, number):
    outcome = interpret("CREATE_CHANGE", ok(stdout), vars={})
    assert outcome.kind is K.NEXT
    assert outcome.updates == {"change": number}
    assert outcome.key_line == stdout.strip()


def test_change_updated_is_not_a_new_change():
    assert interpret("CREATE_CHANGE", ok("Change 123 updated.\n"), vars={}).kind is K.FAIL


# ---------------------------------------------------------------------------- INTEGRATE


@pytest.mark.parametrize(
    "stdout",
    [
        "//depot/rel/a.txt#3 - integrate from //depot/main/a.txt#4,#5\n",
        "//depot/rel/a.txt#3 - integrate from //depot/main/a.txt#5\n",
        "//depot/rel/b.txt#1 - branch/sync from //depot/main/b.txt#1\n",
        "//depot/rel/c.txt#2 - delete from //depot/main/c.txt#3\n",
    ],
)
def test_integrate_opened_files_advance(stdout):
    outcome = interpret("INTEGRATE", ok(stdout))
    assert outcome.kind is K.NEXT
    assert outcome.key_line == stdout.strip()


@pytest.mark.parametrize(
    "stdout, stderr",
    [
        ("", "All revision(s) already integrated.\n"),
        ("", "//depot/main/...@7 - all revision(s) already integrated.\n"),
        ("//depot/main/...@7 - all revision(s) already integrated.\n", ""),
    ],
)
def test_already_integrated_requests_the_empty_change_deletion(stdout, stderr):
    outcome = interpret("INTEGRATE", ok(stdout, stderr))
    assert outcome.kind is K.REPEAT
    assert outcome.updates == {"integrate_followup": "delete_change"}
    assert "already integrated" in outcome.key_line


def test_partly_already_integrated_branch_is_not_nothing_to_do():
    outcome = interpret(
        "INTEGRATE",
        ok(
            "//depot/rel/a.txt#3 - integrate from //depot/main/a.txt#5\n",
            "//depot/rel2/...@7 - all revision(s) already integrated.\n",
        ),
    )
    assert outcome.kind is K.NEXT


@pytest.mark.parametrize(
    "stderr, reason",
    [
        ("No such file(s).\n", "no files"),
        ("//depot/main/...@7 - no such file(s).\n", "no files"),
        ("No target file(s) in branch view.\n", "no target"),
    ],
)
def test_integrate_warnings_that_mean_a_wrong_job_fail(stderr, reason):
    outcome = interpret("INTEGRATE", ok("", stderr))
    assert outcome.kind is K.FAIL
    assert reason in outcome.reason
    assert outcome.key_line == stderr.strip()


def test_integrate_already_opened_checks_whose_change_holds_the_files():
    outcome = interpret("INTEGRATE", ok("//depot/rel/a.txt - can't integrate (already opened on this client)\n"))
    assert outcome.kind is K.REPEAT
    assert outcome.updates == {"integrate_followup": "check_opened"}


def test_check_opened_in_our_change_goes_on():
    stdout = "... depotFile //depot/rel/a.txt\n... change 123\n... action integrate\n\n"
    outcome = interpret("INTEGRATE", ok(stdout), step=1, vars={"change": 123, "integrate_followup": "check_opened"})
    assert outcome.kind is K.NEXT


def test_check_opened_in_another_change_fails_naming_the_file():
    stdout = (
        "... depotFile //depot/rel/a.txt\n... change 123\n\n... depotFile //depot/rel/b.txt\n... change default\n\n"
    )
    outcome = interpret("INTEGRATE", ok(stdout), step=1, vars={"change": 123, "integrate_followup": "check_opened"})
    assert outcome.kind is K.FAIL
    assert outcome.key_line == "//depot/rel/b.txt"
    assert "change default" in outcome.reason


@pytest.mark.parametrize(
    "result, kind",
    [
        (ok("Change 123 deleted.\n"), K.NOTHING_TO_DO),
        (err("Change 123 unknown.\n"), K.NOTHING_TO_DO),  # deleted by an earlier attempt
        (err("Change 123 has 2 open file(s) associated with it and can't be deleted.\n"), K.NEXT),
    ],
)
def test_delete_empty_change_step(result, kind):
    outcome = interpret("INTEGRATE", result, step=1, vars={"change": 123, "integrate_followup": "delete_change"})
    assert outcome.kind is kind


# ---------------------------------------------------------------------------- RESOLVE passes

CLEAN_MERGE = (
    "/work/ws1/rel/a.txt - merging //depot/main/a.txt#4,#5\n"
    "Diff chunks: 1 yours + 1 theirs + 0 both + 0 conflicting\n"
    "//bob-rel/rel/a.txt - merge from //depot/main/a.txt\n"
)
CONFLICT_SKIPPED = (
    "/work/ws1/rel/b.txt - merging //depot/main/b.txt#2,#3\n"
    "Diff chunks: 0 yours + 0 theirs + 0 both + 1 conflicting\n"
    "//bob-rel/rel/b.txt - resolve skipped.\n"
)


def test_resolve_as_records_what_happened():
    outcome = interpret("RESOLVE_PASS_1", ok(CLEAN_MERGE + CONFLICT_SKIPPED))
    assert outcome.kind is K.NEXT
    assert outcome.updates["resolve_as"]["merged"] == 1
    assert outcome.updates["resolve_as"]["skipped"] == 1
    assert outcome.key_line == "1 merged, 1 skipped, 1 conflicting"


def test_resolve_am_exit_0_while_skipping_conflicts_advances_to_the_check():
    outcome = interpret("RESOLVE_PASS_2", ok(CONFLICT_SKIPPED))
    assert outcome.kind is K.NEXT
    assert outcome.updates["resolve_am"]["skipped"] == 1


@pytest.mark.parametrize("stdout, stderr", [("", "No file(s) to resolve.\n"), ("No file(s) to resolve.\n", "")])
def test_resolve_pass_nothing_to_resolve(stdout, stderr):
    outcome = interpret("RESOLVE_PASS_1", ok(stdout, stderr))
    assert outcome.kind is K.NEXT
    assert outcome.key_line == "No file(s) to resolve."


# ---------------------------------------------------------------------------- NEEDS_RESOLVE / RESOLVE_CHECK

ZTAG_PENDING = (
    "... clientFile /work/ws1/rel/b.txt\n... fromFile //depot/main/b.txt\n"
    "... startFromRev 2\n... endFromRev 3\n... resolveType content\n"
    "... contentResolveType 3waytext\n\n"
    "... clientFile /work/ws1/rel/c.txt\n... fromFile //depot/main/c.txt\n"
    "... startFromRev 0\n... endFromRev 1\n... resolveType content\n\n"
)


@pytest.mark.parametrize("stage", ["NEEDS_RESOLVE", "RESOLVE_CHECK"])
def test_pending_resolves_wait_with_the_files(stage):
    outcome = interpret(stage, ok(ZTAG_PENDING))
    assert outcome.kind is K.WAIT_RESOLVE
    assert outcome.conflicts == ["/work/ws1/rel/b.txt", "/work/ws1/rel/c.txt"]
    assert "2 file(s)" in outcome.reason


def test_pending_resolves_plain_headers_when_ztag_was_ignored():
    outcome = interpret(
        "NEEDS_RESOLVE",
        ok("/work/ws1/rel/b.txt - merging //depot/main/b.txt#2,#3\n/work/ws1/rel/d.txt - vs //depot/main/d.txt#5\n"),
    )
    assert outcome.conflicts == ["/work/ws1/rel/b.txt", "/work/ws1/rel/d.txt"]


@pytest.mark.parametrize("stage", ["NEEDS_RESOLVE", "RESOLVE_CHECK"])
@pytest.mark.parametrize(
    "stdout, stderr",
    [
        ("", "No file(s) to resolve.\n"),
        ("No file(s) to resolve.\n", ""),  # one real server printed it on stdout
        ("", "//bob-rel/rel/... - no file(s) to resolve.\n"),
    ],
)
def test_no_file_to_resolve_on_either_stream_advances(stage, stdout, stderr):
    outcome = interpret(stage, ok(stdout, stderr))
    assert outcome.kind is K.NEXT
    assert outcome.updates == {"conflicts": []}
    assert "to resolve" in outcome.key_line


# ---------------------------------------------------------------------------- PRE_SUBMIT

OPENED = (
    "... depotFile //depot/rel/a.txt\n... clientFile //bob-rel/rel/a.txt\n... rev 3\n"
    "... action integrate\n... change 123\n... type text\n\n"
    "... depotFile //depot/rel/secrets/key.pem\n... clientFile //bob-rel/rel/secrets/key.pem\n"
    "... rev 1\n... action branch\n... change 123\n... type text\n\n"
)


def test_blocklist_names_the_offending_depot_path():
    site = SiteConfig(blocklist=["//depot/*/secrets/..."])
    outcome = interpret("PRE_SUBMIT", ok(OPENED), site=site)
    assert outcome.kind is K.FAIL
    assert outcome.key_line == "//depot/rel/secrets/key.pem"
    assert "//depot/*/secrets/..." in outcome.reason


def test_blocklist_pass_continues_with_the_hooks():
    outcome = interpret("PRE_SUBMIT", ok(OPENED), site=SiteConfig(blocklist=["//depot/main/..."]))
    assert outcome.kind is K.REPEAT
    assert outcome.updates == {"opened_count": 2}


def test_opened_nothing_fails():
    outcome = interpret("PRE_SUBMIT", ok("", "File(s) not opened on this client.\n"))
    assert outcome.kind is K.FAIL
    assert outcome.key_line == "File(s) not opened on this client."


def test_truncated_opened_list_is_refused_not_half_checked():
    outcome = interpret("PRE_SUBMIT", ok(OPENED, truncated=True), site=SiteConfig(blocklist=["//x/..."]))
    assert outcome.kind is K.FAIL
    assert "too long" in outcome.reason


def test_pre_submit_hook_failure_fails_with_its_last_line():
    site = SiteConfig(pre_submit=[["make", "test", "CL={change}"]])
    outcome = interpret("PRE_SUBMIT", err("FAILED tests/test_x.py::test_y\n", code=2), step=1, site=site)
    assert outcome.kind is K.FAIL
    assert outcome.reason == "pre-submit command make test CL=123 exited 2"
    assert outcome.key_line == "FAILED tests/test_x.py::test_y"


def test_pre_submit_hook_success_continues():
    site = SiteConfig(pre_submit=[["make", "test"]])
    assert interpret("PRE_SUBMIT", ok("42 passed\n"), step=1, site=site).kind is K.REPEAT


# ---------------------------------------------------------------------------- SHELVE


def test_shelve_success():
    outcome = interpret(
        "SHELVE", ok("Shelving files for change 123.\nedit //depot/rel/a.txt#3\nChange 123 files shelved.\n")
    )
    assert outcome.kind is K.NEXT
    assert outcome.key_line == "Change 123 files shelved."


def test_shelve_trigger_rejection_fails_with_the_triggers_line():
    outcome = interpret(
        "SHELVE",
        err(
            "'name_check' validation failed: //depot/rel/a@b.txt has an illegal name\n"
            "Shelve validation failed -- fix problems then try again.\n"
        ),
    )
    assert outcome.kind is K.FAIL  # never RETRY
    assert outcome.key_line == "'name_check' validation failed: //depot/rel/a@b.txt has an illegal name"


@pytest.mark.parametrize(
    "stderr", ["No files to shelve.\n", "//depot/rel/a.txt - already shelved, use -f to update.\n"]
)
def test_shelve_errors_fail(stderr):
    outcome = interpret("SHELVE", err(stderr))
    assert outcome.kind is K.FAIL
    assert outcome.key_line == stderr.strip()


# ---------------------------------------------------------------------------- NC_FIX

OPENED_WITH_BAD_NAMES = (
    "... depotFile //depot/rel/a.txt\n... change 123\n\n"
    "... depotFile //depot/rel/b%40home.txt\n... change 123\n\n"
    "... depotFile //depot/rel/aux.c\n... change 123\n\n"
)


def test_builtin_name_check_finds_offenders_to_revert():
    outcome = interpret("NC_FIX", ok(OPENED_WITH_BAD_NAMES))
    assert outcome.kind is K.REPEAT
    assert [o["path"] for o in outcome.updates["name_check_offenders"]] == [
        "//depot/rel/b%40home.txt",
        "//depot/rel/aux.c",
    ]
    assert outcome.key_line == "//depot/rel/b%40home.txt: illegal character '@' (+1 more)"


def test_builtin_name_check_clean_ends_the_stage():
    outcome = interpret("NC_FIX", ok("... depotFile //depot/rel/a.txt\n... change 123\n\n"))
    assert outcome.kind is K.NEXT
    assert outcome.updates == {"name_check_offenders": []}


def test_builtin_name_check_refuses_to_revert_everything():
    outcome = interpret("NC_FIX", ok("... depotFile //depot/rel/con.txt\n... change 123\n\n"))
    assert outcome.kind is K.FAIL


EXTERNAL = SiteConfig(name_check=["/opt/checks/namecheck", "--change", "{change}"])


@pytest.mark.parametrize(
    "result, kind",
    [
        (ok(""), K.NEXT),
        (err("", "//depot/rel/Makefile.BAK\n//depot/rel/x y.txt\n"), K.REPEAT),
        (err("", ""), K.FAIL),  # says there are offenders but names none
        (err("namecheck: cannot read policy\n", code=2), K.FAIL),
    ],
)
def test_external_name_check(result, kind):
    outcome = interpret("NC_FIX", result, site=EXTERNAL)
    assert outcome.kind is kind
    if kind is K.REPEAT:
        assert [o["path"] for o in outcome.updates["name_check_offenders"]] == [
            "//depot/rel/Makefile.BAK",
            "//depot/rel/x y.txt",
        ]


OFFENDERS = {"change": 123, "name_check_offenders": [{"path": "//depot/rel/aux.c", "reason": "x"}]}


def test_revert_offenders_then_reshelve():
    revert = interpret("NC_FIX", ok("//depot/rel/aux.c#1 - was add, abandoned\n"), step=1, vars=OFFENDERS)
    assert revert.kind is K.REPEAT
    reshelve = interpret(
        "NC_FIX", ok("Shelving files for change 123.\nChange 123 files shelved.\n"), step=2, vars=OFFENDERS
    )
    assert reshelve.kind is K.NEXT


def test_reshelve_with_nothing_left_fails():
    outcome = interpret("NC_FIX", err("No files to shelve.\n"), step=2, vars=OFFENDERS)
    assert outcome.kind is K.FAIL


# ---------------------------------------------------------------------------- P4PUSH


@pytest.mark.parametrize(
    "result", [ok("Shelved change 123 deleted.\n"), err("No shelved files in changelist to delete.\n")]
)
def test_delete_shelf_before_submit(result):
    assert interpret("P4PUSH", result).kind is K.REPEAT


@pytest.mark.parametrize(
    "stdout, number",
    [
        (
            "Submitting change 123.\nLocking 2 files ...\nintegrate //depot/rel/a.txt#4\n"
            "branch //depot/rel/b.txt#1\nChange 123 submitted.\n",
            123,
        ),
        (
            "Submitting change 123.\nLocking 2 files ...\nintegrate //depot/rel/a.txt#4\n"
            "Change 123 renamed change 125 and submitted.\n",
            125,
        ),
        ("... submittedChange 125\n", 125),
    ],
)
def test_submit_reports_the_submitted_number(stdout, number):
    outcome = interpret("P4PUSH", ok(stdout), step=1)
    assert outcome.kind is K.DONE
    assert outcome.updates == {"submitted_change": number}


def test_merges_still_pending_waits_for_a_person():
    outcome = interpret(
        "P4PUSH",
        err(
            "//depot/rel/a.txt - must resolve before submitting\n"
            "Merges still pending -- use 'resolve' to merge files.\n"
            "Submit failed -- fix problems above then use 'p4 submit -c 123'.\n",
            "Submitting change 123.\n",
        ),
        step=1,
    )
    assert outcome.kind is K.WAIT_RESOLVE
    assert outcome.conflicts == ["//depot/rel/a.txt"]
    assert outcome.key_line == "Merges still pending -- use 'resolve' to merge files."


@pytest.mark.parametrize(
    "stderr",
    [
        "No files to submit.\n",
        "Change 123 belongs to user alice.\n",
        "Change 123 has shelved files --  cannot submit.\n",
        "Out of date files must be resolved or reverted.\n"
        "Submit failed -- fix problems above then use 'p4 submit -c 123'.\n",
    ],
)
def test_submit_errors_fail_with_the_first_error_line(stderr):
    outcome = interpret("P4PUSH", err(stderr), step=1)
    assert outcome.kind is K.FAIL
    assert outcome.key_line == stderr.splitlines()[0]


def test_submit_retried_after_success_explains_the_unknown_change():
    outcome = interpret("P4PUSH", err("Change 123 unknown.\n"), step=1, attempt=2)
    assert outcome.kind is K.FAIL
    assert "may have submitted" in outcome.reason


def test_site_push_command_without_a_number_is_done_with_a_note():
    site = SiteConfig(push=["p4push", "-c", "{change}"])
    outcome = interpret("P4PUSH", ok("pushed.\n"), site=site)  # step 0: no shelf deletion
    assert outcome.kind is K.DONE
    assert outcome.updates == {"submitted_change": None}
    assert "did not report" in outcome.reason


# ---------------------------------------------------------------------------- LOGIN


def test_login_success():
    outcome = interpret("LOGIN", ok("User bob logged in.\n"), password=True)
    assert outcome.kind is K.NEXT
    assert outcome.key_line == "User bob logged in."


@pytest.mark.parametrize("stderr", ["Password invalid.\n", "Perforce password (P4PASSWD) invalid or unset.\n"])
def test_login_rejected_fails_and_never_retries(stderr):
    outcome = interpret("LOGIN", err(stderr), password=True)
    assert outcome.kind is K.FAIL
    assert outcome.key_line == stderr.strip()


# ---------------------------------------------------------------------------- rules for every stage

EVERY_STAGE = [
    "GET_LATEST_CL",
    "SYNC",
    "CREATE_CHANGE",
    "INTEGRATE",
    "RESOLVE_PASS_1",
    "RESOLVE_PASS_2",
    "NEEDS_RESOLVE",
    "RESOLVE_CHECK",
    "PRE_SUBMIT",
    "SHELVE",
    "NC_FIX",
    "P4PUSH",
]


@pytest.mark.parametrize("stage", EVERY_STAGE + ["LOGIN"])
def test_refused_connection_retries_with_the_whole_message(stage):
    outcome = interpret(stage, err(CONNECTION_REFUSED), password=True)
    assert outcome.kind is K.RETRY
    assert outcome.key_line == (
        "Perforce client error: Connect to server failed; check $P4PORT. "
        "TCP connect to p4.example.com:1666 failed. "
        "connect: 10.0.0.5:1666: Connection refused"
    )


@pytest.mark.parametrize("stage", EVERY_STAGE)
@pytest.mark.parametrize(
    "line", ["Your session has expired, please login again.", "Perforce password (P4PASSWD) invalid or unset."]
)
def test_auth_failure_logs_in_again_when_a_password_is_configured(stage, line):
    outcome = interpret(stage, err(line + "\n"), password=True)
    assert (outcome.kind, outcome.goto, outcome.come_back) == (K.NEXT, "LOGIN", True)
    assert outcome.key_line == line


@pytest.mark.parametrize("stage", EVERY_STAGE)
def test_auth_failure_without_a_password_fails(stage):
    outcome = interpret(stage, err("Your session has expired, please login again.\n"))
    assert outcome.kind is K.FAIL
    assert "no password is configured" in outcome.reason


def test_auth_failure_right_after_logging_in_again_fails():
    outcome = interpret(
        "SYNC", err("Your session has expired, please login again.\n"), password=True, vars={"_returned_to": "SYNC"}
    )
    assert outcome.kind is K.FAIL


@pytest.mark.parametrize("stage", EVERY_STAGE)
def test_timeout_and_signal_retry(stage):
    assert interpret(stage, CommandResult(timed_out=True, killed=True, signal=9)).kind is K.RETRY
    assert interpret(stage, CommandResult(signal=11)).kind is K.RETRY


@pytest.mark.parametrize("stage, kind", [("SYNC", K.RETRY), ("INTEGRATE", K.RETRY), ("P4PUSH", K.RETRY)])
def test_lost_follows_the_stage_policy(stage, kind):
    assert interpret(stage, CommandResult(lost=True)).kind is kind


def test_site_policy_can_make_lost_fatal():
    from orchestrator.pipeline import RetryPolicy

    site = SiteConfig(retry={"SYNC": RetryPolicy(on_lost="fail")})
    assert interpret("SYNC", CommandResult(lost=True), site=site).kind is K.FAIL


def test_killed_without_timeout_fails_and_start_errors_fail():
    assert interpret("SYNC", CommandResult(killed=True, signal=15)).kind is K.FAIL
    outcome = interpret("SYNC", CommandResult(error="executable 'p4' is not allowlisted"))
    assert outcome.kind is K.FAIL
    assert outcome.key_line == "executable 'p4' is not allowlisted"
