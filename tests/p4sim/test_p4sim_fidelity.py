"""The places issue 14 found p4sim differing from real p4, and the option audit that followed.

Each test quotes the real text and says where it comes from; docs/p4-behaviour.md records the
same facts by command.
"""

import marshal
import re

import pytest
from conftest import new_change

from p4sim.commands import _MODULES, lookup

pytestmark = pytest.mark.timeout(60)


def add_client(p4, name: str) -> None:
    r = p4("client", "-i", stdin=p4("client", "-o", name).out)
    assert r.rc == 0, r


# -- 1, 2, 3: changes -c, -u, -l ----------------------------------------------------------------
def test_changes_c_lists_only_that_clients_changes(clean):
    # Real p4 (`p4 help changes`; P4D 2024.2 transcript in issue 14): `-c client` lists only
    # changes made from that client, with or without `-s pending`.
    p4, _ = clean
    add_client(p4, "other")
    mine = new_change(p4, "mine")
    theirs = int(p4("-c", "other", "change", "-i", stdin="Change: new\n\nDescription:\n\ttheirs\n").out.split()[1])
    r = p4("changes", "-s", "pending", "-c", "ws")
    assert (r.rc, r.err) == (0, "")
    assert [line.split()[1] for line in r.out_lines] == [str(mine)]
    assert [line.split()[1] for line in p4("changes", "-s", "pending", "-c", "other").out_lines] == [str(theirs)]
    assert len(p4("changes", "-c", "ws").out_lines) == 5  # four submitted in the seed, one pending
    assert p4("changes", "-c", "nobody").out == ""


def test_changes_u_lists_only_that_users_changes(clean):
    # Real p4 (`p4 help changes`; issue 14): `-u user` lists only that user's changes, alone
    # and combined with `-s pending`.
    p4, _ = clean
    bobs = new_change(p4, "bob's")
    alices = int(p4("-u", "alice", "change", "-i", stdin="Change: new\n\nDescription:\n\talice's\n").out.split()[1])
    r = p4("changes", "-u", "alice")
    assert (r.rc, r.err) == (0, "")
    assert r.out_lines == [r.out_lines[0]] and r.out_lines[0].startswith(f"Change {alices} on ")
    assert r.out_lines[0].endswith(" by alice@ws *pending* 'alice's '")
    assert [line.split()[1] for line in p4("changes", "-u", "bob", "-s", "pending").out_lines] == [str(bobs)]
    assert len(p4("changes", "-u", "bob").out_lines) == 5


def test_changes_l_prints_the_whole_description_tab_indented(clean):
    # Real p4 (P4D 2024.2 transcript, issue 14): the header line without the description, a
    # blank line, every description line indented with a tab, a blank line after.
    p4, _ = clean
    change = new_change(p4, "Integrate dev to main\n\tsecond line")
    r = p4("changes", "-s", "pending", "-c", "ws", "-l")
    assert (r.rc, r.err) == (0, "")
    header = r.out_lines[0]
    assert re.fullmatch(rf"Change {change} on \d{{4}}/\d\d/\d\d by bob@ws \*pending\*", header)
    assert r.out_lines[1:] == ["", "\tIntegrate dev to main", "\tsecond line", ""]
    r = p4("changes", "-l", "-m", "2")
    assert r.out_lines[1:4] == ["", "\tIntegrate dev to main", "\tsecond line"]
    assert r.out_lines[4:] == ["", r.out_lines[5], "", "\tWork on main.", ""]
    # -ztag carries the whole description in `desc`, as the long form does.
    assert "... desc Integrate dev to main" in p4("-ztag", "changes", "-l", "-m1").out_lines


def test_changes_t_and_L(clean):
    # `p4 help changes`: -t adds the time to the date; -L is -l with the description cut to
    # 250 characters.
    p4, _ = clean
    new_change(p4, "x" * 300)
    r = p4("changes", "-t", "-m1")
    assert re.fullmatch(r"Change 5 on \d{4}/\d\d/\d\d \d\d:\d\d:\d\d by bob@ws \*pending\* 'x{31}'", r.out_lines[0])
    assert p4("changes", "-L", "-m1").out_lines[1:] == ["", "\t" + "x" * 250, ""]


# -- 4: integrate -b -r ---------------------------------------------------------------------------
def test_integrate_branch_spec_reversed(clean):
    # Real p4 (`p4 help integrate`; issue 14): -r swaps the two sides of the branch view, so
    # the view's target is the source: `//depot/main/a.txt#1 - integrate from //depot/rel/a.txt#2`.
    p4, _ = clean
    (p4.cwd / "main").mkdir(exist_ok=True)
    (p4.cwd / "main/a.txt").write_text("one\n")
    assert p4("add", "main/a.txt").rc == 0
    assert p4("submit", "-d", "add a").rc == 0
    spec = p4("branch", "-o", "m2r").out.replace("//depot/... //depot/...", "//depot/main/... //depot/rel/...")
    assert p4("branch", "-i", stdin=spec).rc == 0
    assert p4("integrate", "//depot/main/a.txt", "//depot/rel/a.txt").rc == 0
    assert p4("submit", "-d", "branch a to rel").rc == 0
    assert p4("edit", "//depot/rel/a.txt").rc == 0
    (p4.cwd / "rel/a.txt").write_text("one\ntwo\n")
    assert p4("submit", "-d", "edit a in rel").rc == 0

    r = p4("integrate", "-n", "-b", "m2r", "-r")
    assert (r.out_lines, r.err, r.rc) == (["//depot/main/a.txt#1 - integrate from //depot/rel/a.txt#2"], "", 0)
    # The unreversed view has nothing new to take from main.
    r = p4("integrate", "-n", "-b", "m2r", "//depot/rel/a.txt")
    assert (r.out, r.err_lines) == ("", ["//depot/rel/a.txt - all revision(s) already integrated."])
    # Reversed for real: the target is opened and resolves against the rel revision.
    r = p4("integrate", "-b", "m2r", "-r", "//depot/main/a.txt")
    assert r.out_lines == ["//depot/main/a.txt#1 - integrate from //depot/rel/a.txt#2"]
    assert p4("resolve", "-as").rc == 0
    assert (p4.cwd / "main/a.txt").read_text() == "one\ntwo\n"


def test_integrate_branch_view_selecting_nothing_is_a_warning(clean):
    # The p4 reference lists `No target file(s) in branch view.` among integrate's warnings:
    # stderr, exit 0 (INTEGRATE then fails the job with "the branch view maps no target files").
    p4, _ = clean
    spec = p4("branch", "-o", "empty").out.replace("//depot/... //depot/...", "//depot/none/... //depot/main/...")
    assert p4("branch", "-i", stdin=spec).rc == 0
    r = p4("integrate", "-b", "empty")
    assert (r.out, r.err_lines, r.rc) == ("", ["No target file(s) in branch view."], 0)
    r = p4("integrate", "-b", "empty", "-r", "//depot/nosuch/...")
    assert (r.out, r.err_lines, r.rc) == ("", ["No target file(s) in branch view."], 0)


def test_integrate_r_without_branch_is_a_usage_error(clean):
    p4, _ = clean
    r = p4("integrate", "-r", "//depot/dev/...", "//depot/main/...")
    assert r.rc == 1 and r.err_lines[0] == "Missing/wrong number of arguments."


# -- 5, 6: submit ----------------------------------------------------------------------------------
def test_submit_d_with_nothing_opened(clean):
    # Message catalogue (issue 14): `No files to submit from the default changelist.`, exit 1.
    p4, _ = clean
    r = p4("submit", "-d", "nothing here")
    assert (r.out, r.err_lines, r.rc) == ("", ["No files to submit from the default changelist."], 1)
    assert p4("changes", "-s", "pending").out == ""  # no change was created for it


def test_submit_of_another_users_change_is_refused(clean):
    # Real p4 (issue 14): `Change N belongs to user OWNER.`, exit 1, and nothing is submitted.
    p4, _ = clean
    p4("sync", "//depot/main/README.txt")
    change = new_change(p4, "bob's work")
    p4("edit", "-c", str(change), "//depot/main/README.txt")
    r = p4("-u", "alice", "submit", "-c", str(change))
    assert (r.out, r.err_lines, r.rc) == ("", [f"Change {change} belongs to user bob."], 1)
    assert p4("changes", "-s", "pending").out_lines[0].startswith(f"Change {change} on ")
    assert p4("submit", "-c", str(change)).rc == 0  # its owner can


# -- 7: levels of info lines ------------------------------------------------------------------------
def test_sync_of_opened_out_of_date_file_level_one_line(clean):
    # Real p4 (P4D 2024.2 transcripts, issue 14): the resolve line is a level-1 info message.
    # Plain output prefixes it with `... `; -s tags it `info1:` with no prefix; -G gives level 1.
    p4, _ = clean

    def opened_behind() -> None:
        p4("revert", "//...")
        p4("sync", "//depot/main/src/both.c@1")
        p4("edit", "//depot/main/src/both.c")

    opened_behind()
    r = p4("-s", "sync", "//depot/main/src/both.c")
    assert r.out_lines == [
        "info: //depot/main/src/both.c#2 - is opened and not being changed",
        "info1: //depot/main/src/both.c - must resolve #2 before submitting",
        "exit: 0",
    ]
    opened_behind()
    r = p4("sync", "//depot/main/src/both.c")
    assert r.out_lines[1] == "... //depot/main/src/both.c - must resolve #2 before submitting"
    opened_behind()
    raw = p4.raw("-G", "sync", "//depot/main/src/both.c")
    records = []
    stream = raw.stdout
    while stream:
        record = marshal.loads(stream)
        records.append(record)
        stream = stream[len(marshal.dumps(record, 0)) :]
    assert records[1] == {
        b"code": b"info",
        b"data": b"//depot/main/src/both.c - must resolve #2 before submitting",
        b"level": 1,
    }


# -- the option audit --------------------------------------------------------------------------------
def _usage_options(usage: str) -> set[str]:
    return set(re.findall(r"(?<![\w\[])-(\w+)", usage))


@pytest.mark.parametrize("name", sorted(_MODULES))
def test_every_option_in_a_usage_line_is_parsed_and_no_other(name):
    command = lookup(name)
    assert command is not None
    flags = {f.rstrip(":") for f in command.flags.split()}
    assert _usage_options(command.usage) == flags


# Options real p4 has, that a pipeline stage or a site's command could well use, and that
# p4sim does not implement: refused the way p4 refuses an option it does not know.
REFUSED = [
    ("sync", "-L"),
    ("sync", "-r"),
    ("sync", "-m", "5"),
    ("integrate", "-f"),
    ("integrate", "-Di"),
    ("integrate", "-s", "//depot/dev/..."),
    ("resolve", "-f"),
    ("resolve", "-t"),
    ("submit", "-f", "revertunchanged"),
    ("revert", "-a"),
    ("revert", "-w"),
    ("opened", "-a"),
    ("opened", "-u", "bob"),
    ("fstat", "-Rr"),
    ("change", "-f"),
    ("client", "-t", "tmpl"),
    ("describe", "-du"),
    ("add", "-t", "binary"),
    ("changes", "-i"),
    ("info", "-s"),
    ("shelve", "-a", "leaveunchanged"),
]


@pytest.mark.parametrize("argv", REFUSED, ids=" ".join)
def test_options_p4sim_lacks_are_refused_as_p4_refuses_them(clean, argv):
    p4, _ = clean
    before = p4("opened").err
    r = p4(*argv, "//depot/main/README.txt")
    assert (r.out, r.rc) == ("", 1)
    assert r.err_lines[0] == f"Invalid option: {argv[1]}."
    assert r.err_lines[1].split()[:2] == ["Usage:", argv[0]]
    assert p4("opened").err == before  # nothing was done


def test_global_charset_is_refused_and_host_is_used(clean):
    p4, _ = clean
    r = p4("-C", "utf8", "info")
    assert r.rc == 1 and r.err_lines[0] == "Invalid option: -C."
    assert "Client host: build7" in p4("-H", "build7", "info").out_lines


def test_preview_and_keep_options(clean):
    # `p4 help add|edit|delete|revert`: -n previews (the same lines, nothing opened or
    # reverted); -k leaves the workspace file alone.
    p4, _ = clean
    p4("sync", "//depot/main/...")
    readme = p4.cwd / "main/README.txt"
    r = p4("edit", "-n", "//depot/main/README.txt")
    assert r.out_lines == ["//depot/main/README.txt#1 - opened for edit"]
    assert p4("opened").err_lines == ["File(s) not opened on this client."] and not readme.stat().st_mode & 0o200
    r = p4("delete", "-n", "//depot/main/README.txt")
    assert r.out_lines == ["//depot/main/README.txt#1 - opened for delete"] and readme.exists()
    assert p4("delete", "-k", "//depot/main/README.txt").rc == 0 and readme.exists()
    r = p4("revert", "-n", "//depot/main/README.txt")
    assert r.out_lines == ["//depot/main/README.txt#1 - was delete, reverted"]
    assert p4("opened").out_lines == ["//depot/main/README.txt#1 - delete default change (text)"]
    p4("revert", "//depot/main/README.txt")
    p4("edit", "-k", "//depot/main/README.txt")
    assert not readme.stat().st_mode & 0o200
    (p4.cwd / "main/new.txt").write_text("new\n")
    assert p4("add", "-n", "main/new.txt").out_lines == ["//depot/main/new.txt#1 - opened for add"]
    assert p4("opened", "//depot/main/new.txt").err_lines == [
        "//depot/main/new.txt - file(s) not opened on this client."
    ]


def test_opened_and_fstat_limits(clean):
    # `p4 help opened|fstat`: -m max limits the files listed; fstat -T keeps the named fields.
    p4, _ = clean
    p4("sync", "//depot/main/...")
    p4("edit", "//depot/main/...")
    assert len(p4("opened").out_lines) == 5
    assert len(p4("opened", "-m", "2").out_lines) == 2
    r = p4("fstat", "-m1", "-T", "depotFile,headRev", "//depot/main/...")
    assert r.out_lines == ["... depotFile //depot/main/README.txt", "... headRev 1", ""]
    r = p4("fstat", "-T", "depotFile action", "//depot/main/README.txt")
    assert r.out_lines == ["... depotFile //depot/main/README.txt", "... action edit", ""]
