"""`p4 diff`: opened files against the revision they were opened at, as p4 prints them."""

import pytest
from conftest import new_change

pytestmark = pytest.mark.timeout(60)


def test_diff_du_shows_conflict_markers_a_forced_resolve_left(conflict):
    p4, info = conflict
    change = str(new_change(p4))
    assert p4("integrate", "-c", change, info["source"], info["target"]).rc == 0
    assert p4("resolve", "-af", "-c", change).rc == 0
    local = f"{info['root']}/main/src/conflict.c"
    r = p4("diff", "-du", local)
    assert r.rc == 0 and r.err == "", r
    lines = r.out_lines
    assert lines[0] == f"==== //depot/main/src/conflict.c#2 - {local} ===="
    assert lines[1].startswith("@@ -1,")
    assert "+>>>> ORIGINAL //depot/dev/src/conflict.c#1" in lines
    assert "+==== THEIRS //depot/dev/src/conflict.c#2" in lines
    assert "+==== YOURS //ws/main/src/conflict.c" in lines and "+<<<<" in lines


def test_diff_of_an_unopened_file_warns_and_other_flags_are_refused(clean):
    p4, _ = clean
    r = p4("diff", "-du", "//depot/main/nonesuch.c")
    assert (r.rc, r.out, r.err_lines) == (0, "", ["//depot/main/nonesuch.c - file(s) not opened on this client."])
    r = p4("diff", "-dc")
    assert r.rc != 0 and "-du" in r.err
