"""Parsers of p4 output (texts from docs/p4-behaviour.md)."""

from __future__ import annotations

import pytest
from test_pipeline_helpers import CONNECTION_REFUSED

from orchestrator.pipeline import p4parse
from orchestrator.pipeline.paths import matches, unescape

pytestmark = pytest.mark.timeout(10)


def test_ztag_records_keys_without_values_and_continuations():
    text = (
        "... depotFile //depot/rel/a.txt\n... unresolved\n... desc first line\nsecond line\n\n\n"
        "... depotFile //depot/rel/b.txt\n... rev 2\n"
    )
    assert p4parse.parse_ztag(text) == [
        {"depotFile": "//depot/rel/a.txt", "unresolved": "", "desc": "first line\nsecond line"},
        {"depotFile": "//depot/rel/b.txt", "rev": "2"},
    ]


def test_ztag_values_keep_inner_spaces():
    assert p4parse.parse_ztag("... clientFile /work/my ws/a b.txt\n") == [{"clientFile": "/work/my ws/a b.txt"}]


def test_ztag_empty():
    assert p4parse.parse_ztag("") == []


@pytest.mark.parametrize(
    "text, number",
    [
        ("Change 123 created.", 123),
        ("Change 123 created with 2 open file(s).\n", 123),
        ("Change 123 updated.", None),
        ("Change 999 unknown.", None),
    ],
)
def test_created_change(text, number):
    assert p4parse.created_change(text) == number


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Submitting change 123.\nChange 123 submitted.\n", (123, "Change 123 submitted.")),
        ("Change 123 renamed change 125 and submitted.\n", (125, "Change 123 renamed change 125 and submitted.")),
        ("... submittedChange 125\n", (125, "... submittedChange 125")),
        ("Submit failed -- fix problems above then use 'p4 submit -c 123'.\n", None),
    ],
)
def test_submitted_change(text, expected):
    assert p4parse.submitted_change(text) == expected


def test_diff_chunks():
    assert p4parse.diff_chunks("Diff chunks: 1 yours + 1 theirs + 0 both + 0 conflicting") == (1, 1, 0, 0)
    assert p4parse.diff_chunks("Diff chunks: 0 yours + 0 theirs + 0 both + 1 conflicting").conflicting == 1
    assert p4parse.diff_chunks("//bob-rel/a - merge from //depot/main/a") is None


def test_resolve_results_counts_every_result_form():
    text = (
        "/w/a - merging //depot/main/a#4,#5\nDiff chunks: 1 yours + 1 theirs + 0 both + 0 conflicting\n"
        "//c/a - merge from //depot/main/a\n"
        "/w/b - vs //depot/main/b#2\n//c/b - copy from //depot/main/b\n"
        "/w/c - vs //depot/main/c#2\n//c/c - ignored //depot/main/c\n"
        "//c/d - edit from //depot/main/d\n"
        "/w/e - merging //depot/main/e#2,#3\nDiff chunks: 0 yours + 0 theirs + 0 both + 1 conflicting\n"
        "//c/e - resolve skipped.\n"
    )
    assert p4parse.resolve_results(text) == {
        "merged": 1,
        "copied": 1,
        "ignored": 1,
        "edited": 1,
        "skipped": 1,
        "conflicting": 1,
    }


def test_must_resolve_lines():
    text = (
        "//depot/rel/a.txt - must resolve before submitting\n"
        "//depot/rel/my file.txt - must resolve before submitting\n"
        "Merges still pending -- use 'resolve' to merge files.\n"
    )
    assert p4parse.must_resolve(text) == ["//depot/rel/a.txt", "//depot/rel/my file.txt"]


def test_view_mappings_skip_exclusions_and_unquote():
    spec = {
        "View0": "//depot/main/... //depot/rel/...",
        "View1": "-//depot/main/x/... //depot/rel/x/...",
        "View2": '"//depot/main/a b/..." "//depot/rel/a b/..."',
        "View3": "+//depot/o/... //depot/p/...",
    }
    assert p4parse.view_mappings(spec) == [
        ("//depot/main/...", "//depot/rel/..."),
        ("//depot/main/a b/...", "//depot/rel/a b/..."),
        ("//depot/o/...", "//depot/p/..."),
    ]


# ---------------------------------------------------------------------------- the line that matters


def test_error_line_keeps_connection_detail():
    assert p4parse.error_line(CONNECTION_REFUSED) == (
        "Perforce client error: Connect to server failed; check $P4PORT. "
        "TCP connect to p4.example.com:1666 failed. connect: 10.0.0.5:1666: Connection refused"
    )


def test_error_line_skips_blank_detail_and_warnings():
    stderr = (
        "\n//depot/rel/... - file(s) up-to-date.\n"
        "Merges still pending -- use 'resolve' to merge files.\n"
        "\tsome detail\n"
        "Submit failed -- fix problems above then use 'p4 submit -c 123'.\n"
    )
    assert p4parse.error_line(stderr) == "Merges still pending -- use 'resolve' to merge files."


def test_error_line_falls_back_to_a_warning_then_stdout():
    assert p4parse.error_line("No such file(s).\n") == "No such file(s)."
    assert p4parse.error_line("", "first\nlast line\n\n") == "last line"


@pytest.mark.parametrize(
    "stderr",
    [
        "Your session has expired, please login again.\n",
        "Perforce password (P4PASSWD) invalid or unset.\n",
    ],
)
def test_auth_errors(stderr):
    assert p4parse.auth_error(stderr) == stderr.strip()
    assert p4parse.connection_error(stderr) is None


@pytest.mark.parametrize(
    "stderr",
    [
        CONNECTION_REFUSED,
        "Perforce client error:\n\tTCP receive failed.\n\tread: socket: Connection reset by peer\n",
        "Partner exited unexpectedly.\n",
    ],
)
def test_connection_errors(stderr):
    assert p4parse.connection_error(stderr)
    assert p4parse.auth_error(stderr) is None


# ---------------------------------------------------------------------------- depot paths


@pytest.mark.parametrize(
    "pattern, path, hit",
    [
        ("//depot/rel/...", "//depot/rel/a/b/c.txt", True),
        ("//depot/*/secrets/...", "//depot/rel/secrets/k.pem", True),
        ("//depot/*/secrets/...", "//depot/rel/x/secrets/k.pem", False),  # * stays in one segment
        ("//depot/....pem", "//depot/rel/k.pem", True),
        ("//depot/rel/a.txt", "//depot/rel/a.txt", True),
        ("//depot/rel/a.txt", "//depot/rel/a.txt.orig", False),
        ("//depot/rel/a@b.txt", "//depot/rel/a%40b.txt", True),  # written unescaped
        ("//depot/rel/a.txt", "//depot/rel/a+txt", False),  # . is literal
    ],
)
def test_wildcard_matching(pattern, path, hit):
    assert matches(pattern, path) is hit


def test_unescape():
    assert unescape("//depot/a%40b%23c%25d%2Ae%2ae") == "//depot/a@b#c%d*e*e"
