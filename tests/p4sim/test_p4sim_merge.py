"""The three-way merge against hand-written cases."""

import pytest

from p4sim.merge import MarkerLabels, merge3

pytestmark = pytest.mark.timeout(10)

BASE = b"a\nb\nc\nd\ne\nf\ng\nh\n"


def counts(r):
    return (r.yours, r.theirs, r.both, r.conflicting)


def test_only_theirs_changed():
    r = merge3(BASE, BASE.replace(b"c\n", b"C\n"), BASE)
    assert counts(r) == (0, 1, 0, 0)
    assert r.content == BASE.replace(b"c\n", b"C\n")


def test_only_yours_changed():
    r = merge3(BASE, BASE, BASE.replace(b"c\n", b"C\n"))
    assert counts(r) == (1, 0, 0, 0)
    assert r.content == BASE.replace(b"c\n", b"C\n")


def test_both_changed_different_regions_merge():
    theirs = BASE.replace(b"b\n", b"B\n")
    yours = BASE.replace(b"g\n", b"G\n")
    r = merge3(BASE, theirs, yours)
    assert counts(r) == (1, 1, 0, 0)
    assert r.content == b"a\nB\nc\nd\ne\nf\nG\nh\n"


def test_identical_edit_on_both_sides_is_both():
    edited = BASE.replace(b"d\n", b"D\n")
    r = merge3(BASE, edited, edited)
    assert counts(r) == (0, 0, 1, 0)
    assert r.content == edited


def test_identical_edit_plus_own_edit():
    theirs = BASE.replace(b"d\n", b"D\n")
    yours = theirs.replace(b"h\n", b"H\n")
    r = merge3(BASE, theirs, yours)
    assert counts(r) == (1, 0, 1, 0)
    assert r.content == yours


def test_edits_at_start_and_end():
    theirs = b"first\n" + BASE
    yours = BASE + b"last\n"
    r = merge3(BASE, theirs, yours)
    assert counts(r) == (1, 1, 0, 0)
    assert r.content == b"first\n" + BASE + b"last\n"


def test_change_first_and_last_lines():
    theirs = BASE.replace(b"a\n", b"A\n")
    yours = BASE.replace(b"h\n", b"H\n")
    assert merge3(BASE, theirs, yours).content == b"A\nb\nc\nd\ne\nf\ng\nH\n"


def test_deletions_on_both_sides():
    theirs = BASE.replace(b"b\n", b"")
    yours = BASE.replace(b"f\n", b"")
    r = merge3(BASE, theirs, yours)
    assert counts(r) == (1, 1, 0, 0)
    assert r.content == b"a\nc\nd\ne\ng\nh\n"


def test_same_deletion_both_sides():
    gone = BASE.replace(b"e\n", b"")
    r = merge3(BASE, gone, gone)
    assert counts(r) == (0, 0, 1, 0)
    assert r.content == gone


def test_delete_versus_edit_conflicts():
    r = merge3(BASE, BASE.replace(b"c\n", b""), BASE.replace(b"c\n", b"C\n"))
    assert counts(r) == (0, 0, 0, 1)


def test_conflict_keeps_yours_without_labels():
    yours = BASE.replace(b"c\n", b"mine\n")
    r = merge3(BASE, BASE.replace(b"c\n", b"theirs\n"), yours)
    assert counts(r) == (0, 0, 0, 1)
    assert r.content == yours


def test_conflict_markers():
    labels = MarkerLabels("//depot/dev/x.c#3", "//depot/dev/x.c#5", "//ws/main/x.c")
    r = merge3(b"1\n2\n3\n", b"1\nT\n3\n", b"1\nY\n3\n", labels)
    assert r.content.decode().splitlines() == [
        "1",
        ">>>> ORIGINAL //depot/dev/x.c#3",
        "2",
        "==== THEIRS //depot/dev/x.c#5",
        "T",
        "==== YOURS //ws/main/x.c",
        "Y",
        "<<<<",
        "3",
    ]


def test_conflict_marker_after_line_without_newline():
    labels = MarkerLabels("o", "t", "y")
    r = merge3(b"x", b"t", b"y", labels)
    assert r.content == b">>>> ORIGINAL o\nx\n==== THEIRS t\nt\n==== YOURS y\ny\n<<<<\n"


def test_empty_files():
    assert counts(merge3(b"", b"", b"")) == (0, 0, 0, 0)
    r = merge3(b"", b"new\n", b"")
    assert counts(r) == (0, 1, 0, 0) and r.content == b"new\n"
    r = merge3(b"", b"a\n", b"b\n")
    assert counts(r) == (0, 0, 0, 1)
    r = merge3(BASE, b"", BASE)
    assert counts(r) == (0, 1, 0, 0) and r.content == b""


def test_insertions_at_same_place_conflict():
    r = merge3(b"a\nb\n", b"a\nT\nb\n", b"a\nY\nb\n")
    assert counts(r) == (0, 0, 0, 1)


def test_several_chunks_counted():
    theirs = BASE.replace(b"a\n", b"A\n").replace(b"e\n", b"E\n")
    yours = BASE.replace(b"c\n", b"C\n").replace(b"e\n", b"E\n").replace(b"h\n", b"H\n")
    r = merge3(BASE, theirs, yours)
    assert counts(r) == (2, 1, 1, 0)
    assert r.content == b"A\nb\nC\nd\nE\nf\ng\nH\n"
    assert r.chunk_line == "Diff chunks: 2 yours + 1 theirs + 1 both + 0 conflicting"
