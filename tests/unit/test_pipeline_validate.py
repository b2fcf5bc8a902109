"""Submit-time parameter validation and site template checks: precise messages."""

from __future__ import annotations

import pytest
from test_pipeline_helpers import params, workspace

from orchestrator.pipeline import SiteConfig, validate_params, validate_site

pytestmark = pytest.mark.timeout(10)

KNOWN = {"ws1", "ws2"}


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"source": "//depot/main/src/a.c", "target": "//depot/rel/src/a.c"},
        {"source": "//depot/main/my docs/...", "target": "//depot/rel/my docs/..."},
        {"source": "//depot/main", "target": "//depot/rel"},
        {"change": 1},
        {"source": None, "target": None, "branch_spec": "main-to-rel_2.x"},
    ],
)
def test_valid_parameters(overrides):
    assert validate_params(params(**overrides), KNOWN) == []


def errors_for(**overrides):
    errors = validate_params(params(**overrides), KNOWN)
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.parametrize(
    "path, bad",
    [
        ("//depot/main;rm -rf ~/...", "';'"),
        ("//depot/$(id)/...", "'$', '(', ')'"),
        ("//depot/a|b/...", "'|'"),
        ("//depot/a&b/...", "'&'"),
        ("//depot/`x`/...", "'`'"),
        ("//depot/a<b>/...", "'<', '>'"),
        ("//depot/main\n/...", "a newline"),
        ("//depot/it's/...", '"\'"'),
        ('//depot/"q"/...', "'\"'"),
    ],
)
def test_shell_metacharacters_are_named(path, bad):
    message = errors_for(source=path)
    assert message.startswith(f"source {path!r} contains {bad}:")
    assert "remove them" in message


@pytest.mark.parametrize("path", ["//depot/*/...", "//depot/.../x", "//depot/a...", "//depot/%%1/..."])
def test_wildcards_other_than_a_trailing_dots_are_refused(path):
    assert "p4 wildcard" in errors_for(target=path)


@pytest.mark.parametrize("path", ["//depot/main/...@123", "//depot/main/a.c#4"])
def test_revision_specifiers_point_to_change(path):
    assert "--change N" in errors_for(source=path)


@pytest.mark.parametrize("path", ["depot/main/...", "/depot/main/...", "///x/...", "-f", "//"])
def test_not_a_depot_path(path):
    message = errors_for(source=path)
    assert "is not a depot path: it must start with // and a depot name" in message
    assert "--source //depot/main/..." in message


@pytest.mark.parametrize("path", ["//depot/main//x/...", "//depot/../secret/...", "//depot/main/"])
def test_odd_segments(path):
    assert "path segment" in errors_for(source=path)


def test_same_source_and_target():
    assert "same path" in errors_for(source="//depot/rel/...")


@pytest.mark.parametrize("change", ["12a", "12", 12.5, True])
def test_change_must_be_a_number(change):
    assert errors_for(change=change) == (
        f"change {change!r} is not a number: give the source changelist as a positive integer, e.g. --change 12345"
    )


@pytest.mark.parametrize("change", [0, -5])
def test_change_must_be_positive(change):
    assert "changelists start at 1" in errors_for(change=change)


def test_unknown_workspace_lists_the_known_ones():
    assert errors_for(workspace=workspace(name="nope")) == (
        "workspace 'nope' is not configured (known: ws1, ws2): pick one with --workspace or add "
        "[orchestrator.workspaces.nope] to the config"
    )


def test_workspace_check_is_optional():
    assert validate_params(params(workspace=workspace(name="nope"))) == []


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"branch_spec": "b"}, "not both"),
        ({"target": None}, "missing --target"),
        ({"source": None, "target": None}, "missing --source and --target"),
        ({"source": None, "target": None, "branch_spec": "-rm"}, "not a valid name"),
        ({"source": None, "target": None, "branch_spec": "123"}, "not only digits"),
        ({"source": None, "target": None, "branch_spec": "a;b"}, "not a valid name"),
    ],
)
def test_what_to_integrate(overrides, fragment):
    assert fragment in errors_for(**overrides)


def test_all_problems_are_reported_at_once():
    errors = validate_params(params(source="//depot/*;x", change=0, workspace=workspace(name="z")), KNOWN)
    assert len(errors) == 4


def test_site_templates():
    assert validate_site(SiteConfig()) == []
    site = SiteConfig(
        push=[], pre_submit=[["make", "{target}"]], name_check=["nc", "{change}", "{}"], blocklist=["depot/x/..."]
    )
    assert validate_site(site) == [
        'site.push is empty: give an argv list such as ["p4push", "-c", "{change}"]',
        "site.pre_submit[0] uses unknown placeholder(s) {target}: only {change} and {workspace} are substituted",
        "site.name_check uses unknown placeholder(s) {}: only {change} and {workspace} are substituted",
        "site.blocklist entry 'depot/x/...' is not a depot path pattern: write it as //depot/path/... "
        "(wildcards ... and *)",
    ]
