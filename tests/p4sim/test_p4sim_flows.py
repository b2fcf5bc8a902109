"""Whole integration flows as the pipeline runs them, checking the depot afterwards."""

import pytest
from conftest import new_change

from p4sim.server.store import Store

pytestmark = pytest.mark.timeout(60)


def depot_text(info: dict, path: str) -> str:
    store = Store(info["P4PORT"][len("sim:") :])
    try:
        head = store.head(path)
        return store.blob(head["digest"]).decode()
    finally:
        store.close()


def start_integration(p4, info) -> int:
    assert p4("sync", info["target"]).rc == 0
    change = new_change(p4)
    r = p4("integrate", "-c", str(change), f"{info['source']}@3", info["target"])
    assert r.rc == 0 and r.err == ""
    return change


def finish(p4, info, change: int) -> None:
    r = p4("shelve", "-f", "-c", str(change))
    assert r.rc == 0 and r.out_lines[-1] == f"Change {change} files shelved."
    assert p4("shelve", "-d", "-c", str(change)).rc == 0
    r = p4("submit", "-c", str(change))
    assert r.rc == 0, r
    assert r.out_lines[-1] == f"Change {change} submitted."
    r = p4("integrate", info["source"], info["target"])
    assert (r.rc, r.out, r.err_lines) == (0, "", ["//depot/main/... - all revision(s) already integrated."])
    assert p4("opened").err_lines == ["File(s) not opened on this client."]


def test_clean_flow(clean):
    p4, info = clean
    local = f"{info['root']}/main/src"
    change = start_integration(p4, info)
    r = p4("resolve", "-as", "-c", str(change))
    assert r.rc == 0 and r.err == ""
    assert r.out_lines == [
        f"{local}/both.c - merging //depot/dev/src/both.c#2",
        "Diff chunks: 1 yours + 1 theirs + 0 both + 0 conflicting",
        "//ws/main/src/both.c - resolve skipped.",
        f"{local}/only_dev.c - merging //depot/dev/src/only_dev.c#2",
        "Diff chunks: 0 yours + 1 theirs + 0 both + 0 conflicting",
        "//ws/main/src/only_dev.c - copy from //depot/dev/src/only_dev.c",
        f"{local}/same.c - merging //depot/dev/src/same.c#2",
        "Diff chunks: 0 yours + 0 theirs + 1 both + 0 conflicting",
        "//ws/main/src/same.c - copy from //depot/dev/src/same.c",
    ]
    r = p4("resolve", "-am", "-c", str(change))
    assert r.rc == 0 and r.out_lines == [
        f"{local}/both.c - merging //depot/dev/src/both.c#2",
        "Diff chunks: 1 yours + 1 theirs + 0 both + 0 conflicting",
        "//ws/main/src/both.c - merge from //depot/dev/src/both.c",
    ]
    r = p4("resolve", "-n", "-c", str(change))
    assert (r.rc, r.out, r.err_lines) == (0, "", ["No file(s) to resolve."])
    r = p4("-ztag", "resolve", "-n", "-c", str(change))
    assert (r.rc, r.out, r.err_lines) == (0, "", ["No file(s) to resolve."])
    finish(p4, info, change)
    both = depot_text(info, "//depot/main/src/both.c")
    assert "both line 3 changed in dev" in both and "both line 18 changed in main" in both
    assert depot_text(info, "//depot/main/src/only_dev.c") == depot_text(info, "//depot/dev/src/only_dev.c")
    assert depot_text(info, "//depot/main/src/new_in_dev.c") == depot_text(info, "//depot/dev/src/new_in_dev.c")
    assert "only_main line 1 changed in main" in depot_text(info, "//depot/main/src/only_main.c")
    r = p4("describe", "-s", str(change))
    assert "... //depot/main/src/both.c#3 integrate" in r.out_lines
    assert "... //depot/main/src/new_in_dev.c#1 branch" in r.out_lines


def test_conflict_flow(conflict):
    p4, info = conflict
    local = f"{info['root']}/main/src/conflict.c"
    change = start_integration(p4, info)
    assert p4("resolve", "-as", "-c", str(change)).rc == 0
    r = p4("resolve", "-am", "-c", str(change))
    assert r.rc == 0 and r.out_lines[-3:] == [
        f"{local} - merging //depot/dev/src/conflict.c#2",
        "Diff chunks: 0 yours + 0 theirs + 0 both + 1 conflicting",
        "//ws/main/src/conflict.c - resolve skipped.",
    ]
    r = p4("resolve", "-n", "-c", str(change))
    assert (r.rc, r.out_lines, r.err) == (0, [f"{local} - merging //depot/dev/src/conflict.c#2"], "")
    r = p4("-ztag", "resolve", "-n", "-c", str(change))
    assert r.out_lines == [
        f"... clientFile {local}",
        "... fromFile //depot/dev/src/conflict.c",
        "... startFromRev 1",
        "... endFromRev 2",
        "... resolveType content",
        "... contentResolveType 3waytext",
        "",
    ]
    assert [line for line in r.out_lines if line.startswith("... fromFile")] == [
        "... fromFile //depot/dev/src/conflict.c"
    ]
    r = p4("submit", "-c", str(change))
    assert r.rc == 1 and r.out == ""
    assert r.err_lines == [
        "Merges still pending -- use 'resolve' to merge files.",
        "//depot/main/src/conflict.c - must resolve before submitting",
        f"Submit failed -- fix problems above then use 'p4 submit -c {change}'.",
    ]
    r = p4("resolve", "-at", "-c", str(change))
    assert r.out_lines == [
        f"{local} - vs //depot/dev/src/conflict.c#2",
        "//ws/main/src/conflict.c - copy from //depot/dev/src/conflict.c",
    ]
    finish(p4, info, change)
    assert depot_text(info, "//depot/main/src/conflict.c") == depot_text(info, "//depot/dev/src/conflict.c")


def test_conflict_resolved_by_hand_after_af(conflict):
    p4, info = conflict
    change = start_integration(p4, info)
    p4("resolve", "-am", "-c", str(change))
    r = p4("resolve", "-af", "//depot/main/src/conflict.c")
    assert r.out_lines[-1] == "//ws/main/src/conflict.c - edit from //depot/dev/src/conflict.c"
    text = (p4.cwd / "main/src/conflict.c").read_text()
    assert ">>>> ORIGINAL //depot/dev/src/conflict.c#1\n" in text and "<<<<\n" in text
    assert "==== THEIRS //depot/dev/src/conflict.c#2\n" in text and "==== YOURS //ws/main/src/conflict.c\n" in text
    (p4.cwd / "main/src/conflict.c").write_text(text.split(">>>>")[0] + "hand merged\n")
    assert p4("submit", "-c", str(change)).rc == 0
    assert depot_text(info, "//depot/main/src/conflict.c").endswith("hand merged\n")


def test_big_seed_syncs_and_integrates(make_server):
    p4, info = make_server("big:200")
    r = p4("sync", info["target"])
    assert r.rc == 0 and len(r.out_lines) == 200
    r = p4("integrate", info["source"], info["target"])
    assert r.rc == 0 and len(r.out_lines) == 200
    r = p4("resolve", "-as")
    assert r.out.count(" - copy from ") == 200
