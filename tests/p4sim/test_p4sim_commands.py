"""Every command: exact lines, the stream they are on, and the exit code."""

import marshal
import os
import stat

import pytest
from conftest import new_change

pytestmark = pytest.mark.timeout(60)


def lines_ok(r, out=None, err=None, rc=0):
    if out is not None:
        assert r.out_lines == out, r
    if err is not None:
        assert r.err_lines == err, r
    assert r.rc == rc, r


# -- connection, usage, global options ----------------------------------------------------------
def test_unknown_command_and_option(clean):
    p4, _ = clean
    lines_ok(p4("frobnicate"), out=[], err=["Unknown command.  Try 'p4 help' for info."], rc=1)
    r = p4("sync", "-Q")
    lines_ok(r, out=[], rc=1)
    assert r.err_lines[0] == "Invalid option: -Q."
    assert r.err_lines[1].startswith("Usage: sync ")
    r = p4("integrate", "//depot/dev/...")
    assert r.rc == 1 and r.err_lines[0] == "Missing/wrong number of arguments."


def test_real_port_cannot_connect(clean):
    p4, _ = clean
    r = p4("info", env={"P4PORT": "localhost:1666"})
    lines_ok(
        r,
        out=[],
        rc=1,
        err=[
            "Perforce client error:",
            "\tConnect to server failed; check $P4PORT.",
            "\tTCP connect to localhost:1666 failed.",
            "\tconnect: localhost:1666: Connection refused",
        ],
    )


def test_global_flags_override_environment(clean, tmp_path):
    p4, info = clean
    r = p4("-p", info["P4PORT"], "-u", "alice", "-c", "ws", "info", env={"P4PORT": "nowhere:1"})
    assert r.rc == 0 and "User name: alice" in r.out_lines and "Client name: ws" in r.out_lines


def test_info(clean):
    p4, info = clean
    r = p4("info")
    lines_ok(r, err=[])
    assert r.out_lines[:2] == ["User name: bob", "Client name: ws"]
    assert f"Client root: {info['root']}" in r.out_lines
    assert f"Server address: {info['P4PORT']}" in r.out_lines
    assert p4("info", env={"P4CLIENT": "nosuch"}).out_lines[1] == "Client unknown."


def test_dash_s_tags_every_line_and_exit(clean):
    p4, _ = clean
    r = p4("-s", "sync", "//depot/nosuch/...")
    lines_ok(r, out=["warning: //depot/nosuch/... - no such file(s).", "exit: 0"], err=[])
    r = p4("-s", "change", "-d", "999")
    lines_ok(r, out=["error: Change 999 unknown.", "exit: 1"], err=[], rc=1)


def test_ztag_and_G(clean):
    p4, _ = clean
    r = p4("-ztag", "changes", "-m1")
    assert r.out_lines[0] == "... change 4" and "... status submitted" in r.out_lines
    raw = p4.raw("-G", "changes", "-m1")
    record = marshal.loads(raw.stdout)
    assert record[b"code"] == b"stat" and record[b"change"] == b"4"
    raw = p4.raw("-G", "opened")
    assert marshal.loads(raw.stdout) == {
        b"code": b"error",
        b"data": b"File(s) not opened on this client.\n",
        b"severity": 2,
        b"generic": 17,
    }
    assert raw.returncode == 0


def test_x_file_and_quiet(clean, tmp_path):
    p4, _ = clean
    args = tmp_path / "args"
    args.write_text("//depot/main/README.txt\n")
    lines_ok(
        p4("-x", str(args), "sync"), err=[], out=[f"//depot/main/README.txt#1 - added as {p4.cwd}/main/README.txt"]
    )
    lines_ok(p4("-q", "sync", "-f", "//depot/main/README.txt"), out=[], err=[])


# -- login ----------------------------------------------------------------------------------------
def test_login_flow(make_server):
    p4, _ = make_server("clean", password="s3cret")
    lines_ok(p4("opened"), out=[], err=["Perforce password (P4PASSWD) invalid or unset."], rc=1)
    lines_ok(p4("login", "-s"), out=[], err=["Perforce password (P4PASSWD) invalid or unset."], rc=1)
    lines_ok(p4("login", stdin="wrong\n"), out=["Enter password: "], err=["Password invalid."], rc=1)
    lines_ok(p4("login", stdin="s3cret\n"), out=["Enter password: ", "User bob logged in."], err=[])
    assert stat.S_IMODE(os.stat(p4.env["P4TICKETS"]).st_mode) == 0o600
    lines_ok(p4("login", "-s"), out=["User bob ticket expires in 11 hours 59 minutes."], err=[])
    lines_ok(p4("opened"), err=["File(s) not opened on this client."])


def test_login_not_needed_without_password(clean):
    p4, _ = clean
    lines_ok(p4("login", stdin="x\n"), out=["'login' not necessary, no password set for this user."], err=[])


# -- client / branch / change specs ---------------------------------------------------------------
def test_client_spec_round_trip(clean, tmp_path):
    p4, info = clean
    spec = p4("client", "-o").out
    assert "Client:\tws" in spec and f"Root:\t{info['root']}" in spec and "\t//depot/... //ws/..." in spec
    lines_ok(p4("client", "-i", stdin=spec), out=["Client ws not changed."], err=[])
    other = spec.replace("Client:\tws", "Client:\tws2").replace("//ws/", "//ws2/")
    lines_ok(p4("client", "-i", stdin=other), out=["Client ws2 saved."], err=[])
    lines_ok(p4("client", "-d", "ws2"), out=["Client ws2 deleted."], err=[])
    lines_ok(
        p4("sync", env={"P4CLIENT": "ws2"}),
        out=[],
        err=["Client 'ws2' unknown - use 'client' command to create it."],
        rc=1,
    )


def test_branch_spec(clean):
    p4, _ = clean
    spec = p4("branch", "-o", "dev2main").out
    assert "Branch:\tdev2main" in spec
    spec = spec.replace("//depot/... //depot/...", "//depot/dev/... //depot/main/...")
    lines_ok(p4("branch", "-i", stdin=spec), out=["Branch dev2main saved."], err=[])
    assert "\t//depot/dev/... //depot/main/..." in p4("branch", "-o", "dev2main").out
    lines_ok(p4("branch", "-d", "dev2main"), out=["Branch dev2main deleted."], err=[])


def test_change_lifecycle(clean):
    p4, _ = clean
    new = p4("change", "-o").out
    assert "Change:\tnew" in new and "Status:\tnew" in new and "\t<enter description here>" in new
    lines_ok(p4("change", "-i", stdin="Change: new\nDescription:\n\tfirst\n"), out=["Change 5 created."], err=[])
    p4("sync", "//depot/main/...")
    p4("edit", "//depot/main/README.txt")
    lines_ok(
        p4("change", "-i", stdin=p4("change", "-o").out.replace("<enter description here>", "second")),
        out=["Change 6 created with 1 open file(s)."],
        err=[],
    )
    spec = p4("change", "-o", "5").out
    lines_ok(p4("change", "-i", stdin=spec.replace("\tfirst", "\tfirst, edited")), out=["Change 5 updated."])
    lines_ok(
        p4("change", "-d", "6"), err=["Change 6 has 1 open file(s) associated with it and can't be deleted."], rc=1
    )
    lines_ok(p4("change", "-d", "5"), out=["Change 5 deleted."], err=[])
    lines_ok(p4("change", "-d", "5"), out=[], err=["Change 5 unknown."], rc=1)
    lines_ok(p4("change", "-d", "1"), out=[], err=["Change 1 is already committed."], rc=1)
    lines_ok(
        p4("reopen", "-c", "default", "//depot/main/README.txt"),
        out=["//depot/main/README.txt#1 - reopened; default change"],
    )
    lines_ok(p4("reopen", "-c", "6", "//depot/main/README.txt"), out=["//depot/main/README.txt#1 - reopened; change 6"])


# -- add / edit / delete / revert / opened / fstat ------------------------------------------------
def test_add_edit_delete_revert_opened(clean):
    p4, _ = clean
    p4("sync", "//depot/main/...")
    (p4.cwd / "main" / "new.txt").write_text("new\n")
    lines_ok(p4("add", "main/new.txt"), out=["//depot/main/new.txt#1 - opened for add"], err=[])
    lines_ok(p4("add", "main/README.txt"), out=[], err=["//depot/main/README.txt - can't add existing file"])
    lines_ok(p4("edit", "//depot/main/src/both.c"), out=["//depot/main/src/both.c#2 - opened for edit"])
    assert os.access(p4.cwd / "main/src/both.c", os.W_OK)
    lines_ok(p4("delete", "//depot/main/src/same.c"), out=["//depot/main/src/same.c#2 - opened for delete"])
    assert not (p4.cwd / "main/src/same.c").exists()
    lines_ok(p4("edit", "//depot/dev/..."), out=[], err=["//depot/dev/... - file(s) not on client."])
    lines_ok(
        p4("opened"),
        err=[],
        out=[
            "//depot/main/new.txt#1 - add default change (text)",
            "//depot/main/src/both.c#2 - edit default change (text)",
            "//depot/main/src/same.c#2 - delete default change (text)",
        ],
    )
    lines_ok(p4("opened", "//depot/dev/..."), out=[], err=["//depot/dev/... - file(s) not opened on this client."])
    lines_ok(
        p4("revert", "//depot/main/..."),
        err=[],
        out=[
            "//depot/main/new.txt#1 - was add, abandoned",
            "//depot/main/src/both.c#2 - was edit, reverted",
            "//depot/main/src/same.c#2 - was delete, reverted",
        ],
    )
    assert (p4.cwd / "main/src/same.c").exists() and (p4.cwd / "main/new.txt").exists()
    lines_ok(p4("revert", "//depot/main/..."), out=[], err=["//depot/main/... - file(s) not opened on this client."])
    lines_ok(
        p4("add", "main/a@b.c"),
        out=[],
        rc=1,
        err=["Can't add filenames with wildcards [@#%*] in them.", "Use -f option to force add."],
    )


def test_revert_k_keeps_workspace_file(clean):
    p4, _ = clean
    p4("sync", "//depot/main/...")
    p4("edit", "//depot/main/README.txt")
    (p4.cwd / "main/README.txt").write_text("mine\n")
    lines_ok(p4("revert", "-k", "//depot/main/README.txt"), out=["//depot/main/README.txt#1 - was edit, reverted"])
    assert (p4.cwd / "main/README.txt").read_text() == "mine\n"


def test_fstat(clean):
    p4, _ = clean
    p4("sync", "//depot/main/...")
    r = p4("fstat", "//depot/main/src/both.c")
    lines_ok(r, err=[])
    assert r.out_lines[0] == "... depotFile //depot/main/src/both.c"
    assert "... headRev 2" in r.out_lines and "... haveRev 2" in r.out_lines
    lines_ok(p4("fstat", "//depot/nosuch"), out=[], err=["//depot/nosuch - no such file(s)."])
    lines_ok(p4("fstat", "-Ru", "//depot/main/..."), out=[], err=["//depot/main/... - no file(s) to resolve."])
    change = new_change(p4)
    p4("integrate", "-c", str(change), "//depot/dev/...", "//depot/main/...")
    r = p4("fstat", "-Ru", "//depot/main/...")
    files = [line for line in r.out_lines if line.startswith("... depotFile")]
    assert files == [
        "... depotFile //depot/main/src/both.c",
        "... depotFile //depot/main/src/only_dev.c",
        "... depotFile //depot/main/src/same.c",
    ]
    assert r.out_lines.count("... unresolved") == 3


# -- sync -----------------------------------------------------------------------------------------
def test_sync_lines(clean):
    p4, info = clean
    root = info["root"]
    lines_ok(
        p4("sync", "-n", "//depot/main/src/both.c"),
        out=[f"//depot/main/src/both.c#2 - added as {root}/main/src/both.c"],
        err=[],
    )
    assert not (p4.cwd / "main/src/both.c").exists()
    lines_ok(
        p4("sync", "//depot/main/src/both.c@1"),
        out=[f"//depot/main/src/both.c#1 - added as {root}/main/src/both.c"],
        err=[],
    )
    assert stat.S_IMODE((p4.cwd / "main/src/both.c").stat().st_mode) == 0o444
    lines_ok(
        p4("sync", "//depot/main/src/both.c"),
        out=[f"//depot/main/src/both.c#2 - updating {root}/main/src/both.c"],
        err=[],
    )
    lines_ok(p4("sync", "//depot/main/src/both.c"), out=[], err=["//depot/main/src/both.c - file(s) up-to-date."])
    lines_ok(
        p4("sync", "-f", "//depot/main/src/both.c"),
        out=[f"//depot/main/src/both.c#2 - refreshing {root}/main/src/both.c"],
    )
    lines_ok(
        p4("sync", "//depot/main/src/both.c#none"),
        out=[f"//depot/main/src/both.c#none - deleted as {root}/main/src/both.c"],
    )
    lines_ok(p4("sync", "//depot/nosuch/..."), out=[], err=["//depot/nosuch/... - no such file(s)."])
    r = p4("-ztag", "sync", "//depot/main/README.txt")
    assert r.out_lines[:2] == ["... depotFile //depot/main/README.txt", f"... clientFile {root}/main/README.txt"]
    assert "... action added" in r.out_lines and "... totalFileCount 1" in r.out_lines


def test_sync_whole_client_and_up_to_date(clean):
    p4, _ = clean
    r = p4("sync")
    assert r.rc == 0 and len(r.out_lines) == 11  # 5 main + 6 dev files
    lines_ok(p4("sync"), out=[], err=["File(s) up-to-date."])


def test_sync_cannot_clobber_writable_file(clean):
    p4, info = clean
    (p4.cwd / "main/src").mkdir(parents=True)
    (p4.cwd / "main/src/both.c").write_text("local junk\n")
    r = p4("sync", "//depot/main/...")
    assert r.rc == 1
    assert r.out_lines == [f"//depot/main/README.txt#1 - added as {info['root']}/main/README.txt"]
    assert r.err_lines == [f"Can't clobber writable file {info['root']}/main/src/both.c"]
    assert "... haveRev 1" in p4("fstat", "//depot/main/README.txt").out_lines


def test_sync_of_opened_file_behind_head_schedules_resolve(clean):
    p4, _ = clean
    p4("sync", "//depot/main/src/both.c@1")
    p4("edit", "//depot/main/src/both.c")
    lines_ok(
        p4("sync", "//depot/main/src/both.c"),
        err=[],
        out=[
            "//depot/main/src/both.c#2 - is opened and not being changed",
            "... //depot/main/src/both.c - must resolve #2 before submitting",
        ],
    )
    r = p4("resolve", "-n")
    assert r.out_lines == [f"{p4.cwd}/main/src/both.c - merging //depot/main/src/both.c#2"]


# -- integrate --------------------------------------------------------------------------------
def test_integrate_lines(clean):
    p4, _ = clean
    p4("sync", "//depot/main/...")
    change = new_change(p4)
    expected = [
        "//depot/main/src/both.c#2 - integrate from //depot/dev/src/both.c#2",
        "//depot/main/src/new_in_dev.c#1 - branch/sync from //depot/dev/src/new_in_dev.c#1",
        "//depot/main/src/only_dev.c#1 - integrate from //depot/dev/src/only_dev.c#2",
        "//depot/main/src/same.c#2 - integrate from //depot/dev/src/same.c#2",
    ]
    lines_ok(p4("integrate", "-n", "-c", str(change), "//depot/dev/...", "//depot/main/..."), out=expected, err=[])
    lines_ok(p4("opened"), out=[], err=["File(s) not opened on this client."])
    lines_ok(p4("integrate", "-c", str(change), "//depot/dev/...", "//depot/main/..."), out=expected, err=[])
    lines_ok(
        p4("integrate", "-c", str(change), "//depot/dev/src/both.c", "//depot/main/src/both.c"),
        out=["//depot/main/src/both.c - can't integrate (already opened on this client)"],
        err=[],
    )
    assert p4("opened").out_lines[1] == f"//depot/main/src/new_in_dev.c#1 - branch change {change} (text)"
    assert (p4.cwd / "main/src/new_in_dev.c").exists()


def test_integrate_ztag_and_revision_ranges(clean):
    p4, _ = clean
    p4("sync", "//depot/main/...")
    r = p4("-ztag", "integrate", "//depot/dev/src/only_dev.c", "//depot/main/src/only_dev.c")
    assert r.out_lines == [
        "... depotFile //depot/main/src/only_dev.c",
        f"... clientFile {p4.cwd}/main/src/only_dev.c",
        "... workRev 1",
        "... action integrate",
        "... fromFile //depot/dev/src/only_dev.c",
        "... startFromRev 1",
        "... endFromRev 2",
        "",
    ]


def test_integrate_warnings(clean):
    p4, _ = clean
    lines_ok(
        p4("integrate", "//depot/nosuch/...", "//depot/main/..."), out=[], err=["//depot/nosuch/... - no such file(s)."]
    )
    lines_ok(
        p4("integrate", "//depot/dev/...@1", "//depot/main/..."), out=[], err=["//depot/dev/...@1 - no such file(s)."]
    )
    lines_ok(
        p4("integrate", "-b", "nosuch"),
        out=[],
        err=["Branch 'nosuch' unknown - use 'branch' command to create it."],
        rc=1,
    )


def test_integrate_with_branch_spec(clean):
    p4, _ = clean
    spec = p4("branch", "-o", "d2m").out.replace("//depot/... //depot/...", "//depot/dev/... //depot/main/...")
    p4("branch", "-i", stdin=spec)
    p4("sync", "//depot/main/...")
    r = p4("integrate", "-n", "-b", "d2m")
    assert r.rc == 0 and len(r.out_lines) == 4
    r = p4("integrate", "-n", "-b", "d2m", "//depot/main/src/both.c")
    assert r.out_lines == ["//depot/main/src/both.c#2 - integrate from //depot/dev/src/both.c#2"]


def test_nothing_to_integrate(make_server):
    p4, info = make_server("nothing-to-do")
    lines_ok(
        p4("integrate", info["source"], info["target"]),
        out=[],
        err=["//depot/main/... - all revision(s) already integrated."],
    )


# -- resolve ------------------------------------------------------------------------------------
def test_resolve_nothing(clean):
    p4, _ = clean
    lines_ok(p4("resolve", "-am"), out=[], err=["No file(s) to resolve."])
    lines_ok(p4("resolve", "-am", "//depot/main/..."), out=[], err=["//depot/main/... - no file(s) to resolve."])
    r = p4("resolve")
    assert r.rc == 1 and r.err_lines[0].startswith("resolve: p4sim has no interactive mode")


def test_resolve_two_way_modes(clean):
    p4, _ = clean
    p4("sync", "//depot/main/...")
    change = new_change(p4)
    p4("integrate", "-c", str(change), "//depot/dev/...", "//depot/main/...")
    local = f"{p4.cwd}/main/src"
    lines_ok(
        p4("resolve", "-ay", "//depot/main/src/both.c"),
        err=[],
        out=[f"{local}/both.c - vs //depot/dev/src/both.c#2", "//ws/main/src/both.c - ignored //depot/dev/src/both.c"],
    )
    lines_ok(
        p4("resolve", "-at", "//depot/main/src/only_dev.c"),
        err=[],
        out=[
            f"{local}/only_dev.c - vs //depot/dev/src/only_dev.c#2",
            "//ws/main/src/only_dev.c - copy from //depot/dev/src/only_dev.c",
        ],
    )
    assert "changed in dev" in (p4.cwd / "main/src/only_dev.c").read_text()
    assert "changed in dev" not in (p4.cwd / "main/src/both.c").read_text()


# -- shelve / unshelve / submit / describe / changes ----------------------------------------------
def test_shelve_errors_and_unshelve(clean):
    p4, _ = clean
    p4("sync", "//depot/main/...")
    change = new_change(p4, "edit readme")
    lines_ok(p4("shelve", "-c", str(change)), out=[], err=["No files to shelve."], rc=1)
    p4("edit", "-c", str(change), "//depot/main/README.txt")
    (p4.cwd / "main/README.txt").write_text("shelved text\n")
    lines_ok(
        p4("shelve", "-c", str(change)),
        err=[],
        out=[
            f"Shelving files for change {change}.",
            "edit //depot/main/README.txt#1",
            f"Change {change} files shelved.",
        ],
    )
    lines_ok(
        p4("shelve", "-c", str(change)),
        out=[],
        rc=1,
        err=["//depot/main/README.txt - already shelved, use -f to update."],
    )
    lines_ok(
        p4("shelve", "-f", "-c", str(change)),
        err=[],
        out=[
            f"Shelving files for change {change}.",
            "edit //depot/main/README.txt#1",
            f"Change {change} files shelved.",
        ],
    )
    lines_ok(
        p4("submit", "-c", str(change)), out=[], rc=1, err=[f"Change {change} has shelved files --  cannot submit."]
    )
    p4("revert", "//depot/main/README.txt")
    assert (p4.cwd / "main/README.txt").read_text() != "shelved text\n"
    lines_ok(p4("unshelve", "-s", str(change)), err=[], out=["//depot/main/README.txt#1 - unshelved, opened for edit"])
    assert (p4.cwd / "main/README.txt").read_text() == "shelved text\n"
    r = p4("describe", "-S", "-s", str(change))
    assert "Shelved files ..." in r.out_lines and "... //depot/main/README.txt#1 edit" in r.out_lines
    lines_ok(p4("shelve", "-d", "-c", str(change)), out=[f"Shelved change {change} deleted."], err=[])
    lines_ok(p4("shelve", "-d", "-c", str(change)), out=[], err=["No shelved files in changelist to delete."], rc=1)
    r = p4("shelve", "//depot/main/...")
    assert r.rc == 1 and r.err_lines[0].startswith("shelve: p4sim has no interactive mode")


def test_submit_and_history(clean):
    p4, _ = clean
    p4("sync", "//depot/main/...")
    p4("edit", "//depot/main/README.txt")
    (p4.cwd / "main/README.txt").write_text("edited\n")
    lines_ok(
        p4("submit", "-d", "Edit the readme"),
        err=[],
        out=["Submitting change 5.", "Locking 1 files ...", "edit //depot/main/README.txt#2", "Change 5 submitted."],
    )
    assert stat.S_IMODE((p4.cwd / "main/README.txt").stat().st_mode) == 0o444
    lines_ok(p4("submit", "-d", "nothing"), out=[], err=["No files to submit from the default changelist."], rc=1)
    r = p4("changes", "-m", "2")
    assert [line.split(" by ")[1] for line in r.out_lines] == ["bob@ws 'Edit the readme '", "bob@ws 'Work on main. '"]
    assert r.out_lines[0].startswith("Change 5 on ")
    new_change(p4, "pending work")
    r = p4("changes", "-s", "pending")
    assert len(r.out_lines) == 1 and r.out_lines[0].endswith(" by bob@ws *pending* 'pending work '")
    assert p4("changes", "-m1", "-s", "submitted", "//depot/dev/...").out.startswith("Change 3 on ")
    r = p4("describe", "5")
    assert r.out_lines[0].startswith("Change 5 by bob@ws on ")
    assert r.out_lines[1:5] == ["", "\tEdit the readme", "", "Affected files ..."]
    assert "... //depot/main/README.txt#2 edit" in r.out_lines
    assert r.out_lines[-5:] == ["1c1", "< p4sim seeded depot", "---", "> edited", ""]
    lines_ok(p4("describe", "99"), out=[], err=["Change 99 unknown."], rc=1)


def test_submit_renumbers_when_newer_changes_exist(clean):
    p4, _ = clean
    p4("sync", "//depot/main/...")
    first = new_change(p4, "first")
    new_change(p4, "second")
    p4("edit", "-c", str(first), "//depot/main/README.txt")
    r = p4("submit", "-c", str(first))
    assert r.out_lines[-1] == f"Change {first} renamed change {first + 2} and submitted."
    r = p4("-ztag", "submit", "-c", str(first))
    assert r.rc == 1 and r.err_lines == [f"Change {first} unknown."]


def test_submit_out_of_date_file(clean):
    p4, _ = clean
    p4("sync", "//depot/main/src/both.c@1")
    p4("edit", "//depot/main/src/both.c")
    p4("sync", "-k", "//depot/main/src/both.c@1")
    r = p4("submit", "-d", "stale")
    assert r.rc == 1
    assert r.err_lines == [
        "//depot/main/src/both.c - must resolve #2 before submitting",
        "Out of date files must be resolved or reverted.",
        "Submit failed -- fix problems above then use 'p4 submit -c 5'.",
    ]


# -- triggers ---------------------------------------------------------------------------------------
def test_name_check_trigger_on_shelve_and_submit(clean):
    p4, info = clean
    server = info["P4PORT"][len("sim:") :]
    with open(os.path.join(server, "triggers.json"), "w") as f:
        f.write('{"name_check": {"on": ["shelve", "submit"]}}')
    p4("sync", "//depot/main/...")
    change = new_change(p4, "bad names")
    for name in ("a@b.c", "CON.txt", "README.TXT"):
        (p4.cwd / "main" / name).write_text("x\n")
        assert p4("add", "-f", "-c", str(change), f"main/{name}").rc == 0
    r = p4("shelve", "-c", str(change))
    assert r.rc == 1 and r.out == ""
    assert r.err_lines == [
        "'name_check' validation failed: //depot/main/CON.txt: reserved name 'CON'",
        "//depot/main/README.TXT: differs only in case from //depot/main/README.txt",
        "//depot/main/a%40b.c: illegal character(s) '@'",
        "Shelve validation failed -- fix problems then try again.",
    ]
    r = p4("submit", "-c", str(change))
    assert r.rc == 1 and r.err_lines[-1] == "Submit validation failed -- fix problems then try again."
    p4("revert", "//depot/main/CON.txt", "//depot/main/README.TXT", "//depot/main/a%40b.c")
    (p4.cwd / "main/fine.txt").write_text("ok\n")
    assert p4("add", "-c", str(change), "main/fine.txt").rc == 0
    assert p4("shelve", "-c", str(change)).rc == 0
