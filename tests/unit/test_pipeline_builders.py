"""Command builders: argv lists (never a shell), the p4 environment, secrets kept out of
everything persisted, site templates, and validated values passed through unchanged."""

from __future__ import annotations

import pytest
from test_pipeline_helpers import PASSWORD, build, ctx, params, workspace

from orchestrator.pipeline import PIPELINES, CommandSpec, SiteConfig, validate_params
from orchestrator.pipeline.p4_integrate import change_spec

pytestmark = pytest.mark.timeout(10)

PIPELINE = PIPELINES["p4-integrate"]
EVERY_STAGE_STEP0 = [n for n in PIPELINE.names() if n != "LOGIN"]


@pytest.mark.parametrize("stage", EVERY_STAGE_STEP0)
def test_every_command_is_an_argv_list_with_the_p4_environment(stage):
    spec = build(stage)
    assert isinstance(spec.argv, list) and all(isinstance(a, str) for a in spec.argv)
    assert spec.argv[0] == "p4"
    assert spec.cwd == "/work/ws1"
    assert spec.env == {
        "P4PORT": "ssl:p4.example.com:1666",
        "P4USER": "bob",
        "P4CLIENT": "bob-rel",
        "PWD": "/work/ws1",
        "P4TICKETS": "/var/p4bus/tickets",
    }
    assert not spec.stdin_secret


def test_workspace_executable_and_env_overlay():
    ws = workspace(p4="/opt/p4sim/bin/p4sim", env={"P4CHARSET": "utf8"}, tickets_file=None)
    spec = build("SYNC", workspace=ws)
    assert spec.argv == ["/opt/p4sim/bin/p4sim", "sync", "//depot/rel/..."]
    assert spec.env["P4CHARSET"] == "utf8" and "P4TICKETS" not in spec.env


def test_login_password_travels_only_on_secret_stdin():
    spec = build("LOGIN", password=True)
    assert spec.argv == ["p4", "login"]
    assert spec.stdin == PASSWORD.encode() + b"\n" and spec.stdin_secret
    assert spec.env["P4TICKETS"] == "/var/p4bus/tickets"
    assert PASSWORD not in repr(spec)
    assert PASSWORD not in " ".join(spec.argv) + repr(spec.env)
    stored = spec.for_storage()
    assert stored.stdin is None and stored.argv == spec.argv


def test_non_secret_specs_are_stored_as_they_are():
    spec = build("CREATE_CHANGE")
    assert spec.for_storage() is spec


def test_login_skipped_without_a_password():
    assert build("LOGIN") is None


@pytest.mark.parametrize(
    "stage, argv",
    [
        ("GET_LATEST_CL", ["-ztag", "changes", "-m1", "-s", "submitted", "//depot/main/..."]),
        ("SYNC", ["sync", "//depot/rel/..."]),
        ("CREATE_CHANGE", ["change", "-i"]),
        ("INTEGRATE", ["integrate", "-c", "123", "//depot/main/...@7", "//depot/rel/..."]),
        ("RESOLVE_PASS_1", ["resolve", "-as", "-c", "123"]),
        ("RESOLVE_PASS_2", ["resolve", "-am", "-c", "123"]),
        ("NEEDS_RESOLVE", ["-ztag", "resolve", "-n", "-c", "123"]),
        ("RESOLVE_CHECK", ["-ztag", "resolve", "-n", "-c", "123"]),
        ("PRE_SUBMIT", ["-ztag", "opened", "-c", "123"]),
        ("SHELVE", ["shelve", "-f", "-c", "123"]),
        ("NC_FIX", ["-ztag", "opened", "-c", "123"]),
        ("P4PUSH", ["shelve", "-d", "-c", "123"]),
    ],
)
def test_stage_commands(stage, argv):
    assert build(stage).argv[1:] == argv


def test_given_source_change_is_checked_not_looked_up():
    assert build("GET_LATEST_CL", change=42, vars={}).argv[1:] == ["-ztag", "change", "-o", "42"]
    assert build("GET_LATEST_CL", step=1, change=42, vars={}) is None
    assert build("INTEGRATE", change=42, vars={"change": 123}).argv[-2] == "//depot/main/...@42"


def test_change_spec_on_stdin_with_every_description_line_indented():
    spec = build("CREATE_CHANGE", desc="Merge main\nStatus: submitted\n\nthird")
    assert spec.stdin.decode() == change_spec(ctx("CREATE_CHANGE", desc="Merge main\nStatus: submitted\n\nthird"))
    assert spec.stdin.decode() == (
        "Change:\tnew\n\nClient:\tbob-rel\n\nUser:\tbob\n\nStatus:\tnew\n\n"
        "Description:\n\tMerge main\n\tStatus: submitted\n\t\n\tthird\n\t\n\t(p4bus job INT-20261128-0007)\n"
    )


def test_default_description_names_what_and_the_job():
    text = build("CREATE_CHANGE").stdin.decode()
    assert "\tIntegrate //depot/main/... to //depot/rel/... at change 7 (p4bus job INT-20261128-0007)\n" in text


BRANCH = {"source": None, "target": None, "branch_spec": "main-to-rel"}
VIEW = {
    "branch_sources": ["//depot/main/...", "//depot/lib/..."],
    "branch_targets": ["//depot/rel/...", "//depot/rel/lib/..."],
}


def test_branch_spec_commands():
    assert build("GET_LATEST_CL", vars={}, **BRANCH).argv[1:] == ["-ztag", "branch", "-o", "main-to-rel"]
    assert build("GET_LATEST_CL", step=1, vars=VIEW, **BRANCH).argv[1:] == [
        "-ztag",
        "changes",
        "-m1",
        "-s",
        "submitted",
        "//depot/main/...",
        "//depot/lib/...",
    ]
    assert build("SYNC", vars=VIEW, **BRANCH).argv[1:] == ["sync", "//depot/rel/...", "//depot/rel/lib/..."]
    # With -b, `target@N` limits the source revisions to change N.
    assert build("INTEGRATE", vars={**VIEW, "change": 123, "source_change": 7}, **BRANCH).argv[1:] == [
        "integrate",
        "-c",
        "123",
        "-b",
        "main-to-rel",
        "//depot/rel/...@7",
        "//depot/rel/lib/...@7",
    ]


def test_branch_spec_with_given_change_reads_the_view_then_checks_the_change():
    assert build("GET_LATEST_CL", vars={}, change=9, **BRANCH).argv[-1] == "main-to-rel"
    assert build("GET_LATEST_CL", step=1, vars=VIEW, change=9, **BRANCH).argv[1:] == ["-ztag", "change", "-o", "9"]
    assert build("GET_LATEST_CL", step=2, vars=VIEW, change=9, **BRANCH) is None


@pytest.mark.parametrize(
    "source, target",
    [
        ("//depot/main/my docs/...", "//depot/rel/my docs/..."),
        ("//depot/main/ünïcödé/a+b=c,d~e.txt", "//depot/rel/ünïcödé/a+b=c,d~e.txt"),
        ("//depot/main/-rf", "//depot/rel/-rf"),
    ],
)
def test_validated_paths_pass_through_as_single_arguments(source, target):
    assert validate_params(params(source=source, target=target)) == []
    argv = build("INTEGRATE", source=source, target=target).argv
    assert argv[-2:] == [source + "@7", target]


def test_site_templates_fill_only_change_and_workspace():
    site = SiteConfig(
        push=["p4", "-u", "{workspace}", "submit", "-c", "{change}"],
        pre_submit=[["check", "--cl={change}", "{change}{workspace}", "{other}", "{{change}}"]],
    )
    ws = workspace(p4="p4sim")
    push = build("P4PUSH", step=1, site=site, workspace=ws)
    assert push.argv == ["p4sim", "-u", "ws1", "submit", "-c", "123"]
    hook = build("PRE_SUBMIT", step=1, site=site)
    assert hook.argv == ["check", "--cl=123", "123ws1", "{other}", "{123}"]
    assert hook.env["P4CLIENT"] == "bob-rel" and hook.cwd == "/work/ws1"


def test_a_value_cannot_inject_a_placeholder():
    site = SiteConfig(pre_submit=[["hook", "{workspace}", "{change}"]])
    hook = build("PRE_SUBMIT", step=1, site=site, workspace=workspace(name="{change}"))
    assert hook.argv == ["hook", "{change}", "123"]


def test_external_name_check_and_revert_of_offenders():
    site = SiteConfig(name_check=["namecheck", "-c", "{change}"])
    assert build("NC_FIX", site=site).argv == ["namecheck", "-c", "123"]
    offenders = {
        "change": 123,
        "name_check_offenders": [
            {"path": "//depot/rel/a%40b", "reason": "x"},
            {"path": "//depot/rel/aux.c", "reason": "y"},
        ],
    }
    assert build("NC_FIX", step=1, vars=offenders).argv[1:] == [
        "revert",
        "-c",
        "123",
        "//depot/rel/a%40b",
        "//depot/rel/aux.c",
    ]
    assert build("NC_FIX", step=3, vars=offenders) is None


def test_cleanup_undoes_the_pending_change():
    specs = PIPELINE.cleanup(ctx("SYNC"))
    assert [s.argv[1:] for s in specs] == [
        ["revert", "-c", "123", "//..."],
        ["shelve", "-d", "-c", "123"],
        ["change", "-d", "123"],
    ]
    assert PIPELINE.cleanup(ctx("SYNC", vars={})) == []


def test_specs_are_msgspec_encodable_for_storage():
    import msgspec

    spec = build("CREATE_CHANGE")
    assert msgspec.json.decode(msgspec.json.encode(spec), type=CommandSpec) == spec
