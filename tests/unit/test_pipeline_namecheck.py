"""The built-in name-check policy."""

from __future__ import annotations

import pytest

from orchestrator.pipeline import NameCheckPolicy
from orchestrator.pipeline.namecheck import Offender, find_offenders

pytestmark = pytest.mark.timeout(10)

POLICY = NameCheckPolicy()


def reasons(paths, policy=POLICY):
    return {o.path: o.reason for o in find_offenders(paths, policy)}


def test_clean_names_pass():
    assert (
        find_offenders(
            [
                "//depot/rel/src/main.c",
                "//depot/rel/README.md",
                "//depot/rel/con-fig.txt",
                "//depot/rel/console.c",
                "//depot/rel/COM10.txt",
            ],
            POLICY,
        )
        == []
    )


@pytest.mark.parametrize(
    "path, char",
    [
        ("//depot/rel/a%40home.txt", "'@'"),
        ("//depot/rel/issue%231.txt", "'#'"),
        ("//depot/rel/100%25.txt", "'%'"),
        ("//depot/rel/star%2A.txt", "'*'"),
        ("//depot/rel/dir%40x/a.txt", "'@'"),
    ],
)
def test_illegal_characters_are_found_in_the_unescaped_name(path, char):
    assert reasons([path]) == {path: f"illegal character {char}"}


@pytest.mark.parametrize(
    "path",
    [
        "//depot/rel/CON",
        "//depot/rel/nul.txt",
        "//depot/rel/Aux.c",
        "//depot/rel/com1.log",
        "//depot/rel/lpt9",
        "//depot/rel/prn/readme",
    ],
)
def test_reserved_names_in_any_segment_and_case(path):
    assert reasons([path])[path].startswith("reserved name")


def test_the_depot_name_is_not_checked():
    assert find_offenders(["//con/a.txt"], POLICY) == []


def test_case_collisions_flag_both_spellings():
    got = reasons(["//depot/rel/Makefile", "//depot/rel/makefile", "//depot/rel/other.c"])
    assert got == {
        "//depot/rel/Makefile": "differs only in case from //depot/rel/makefile",
        "//depot/rel/makefile": "differs only in case from //depot/rel/Makefile",
    }


def test_case_collisions_of_directories():
    got = reasons(["//depot/rel/Docs/a.txt", "//depot/rel/docs/b.txt"])
    assert set(got) == {"//depot/rel/Docs/a.txt", "//depot/rel/docs/b.txt"}


def test_policy_switches():
    policy = NameCheckPolicy(illegal_chars="~", reserved_names=["BUILD"], case_collisions=False)
    assert reasons(["//d/x/a%40b", "//d/x/A", "//d/x/a", "//d/x/build.txt", "//d/x/b~"], policy) == {
        "//d/x/build.txt": "reserved name 'build.txt'",
        "//d/x/b~": "illegal character '~'",
    }


def test_each_offender_once_in_input_order_with_the_first_reason():
    assert find_offenders(["//d/x/con%40", "//d/x/ok", "//d/x/con%40"], POLICY) == [
        Offender("//d/x/con%40", "illegal character '@'")
    ]
