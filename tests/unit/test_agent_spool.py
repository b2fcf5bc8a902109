import fcntl
import os
import time
from pathlib import Path

import pytest

from agent import spool as spool_mod
from agent.spool import EXIT_RECORD, KeeperExit, Spool, SpoolEntry, valid_cmd_id
from common import protocol as proto


def test_layout_permissions_and_secret_stdin(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool")
    assert oct(s.root.stat().st_mode & 0o777) == "0o700"
    s.create("c1", SpoolEntry(spec=proto.CmdSpec(argv=["p4", "login"], stdin=b"pw", stdin_secret=True), job_id="J"))
    s.create("c2", SpoolEntry(spec=proto.CmdSpec(argv=["cat"], stdin=b"data")))
    assert b"pw" not in (s.root / "c1" / "spec").read_bytes()
    assert s.read_spec("c1").spec.stdin is None and s.read_spec("c1").job_id == "J"
    assert s.read_spec("c2").spec.stdin == b"data"
    with pytest.raises(FileExistsError):
        s.create("c1", SpoolEntry(spec=proto.CmdSpec(argv=["x"])))
    assert s.output_size("c1", proto.STDOUT) == 0


def test_pid_result_and_ranges(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    s.create("c", SpoolEntry(spec=proto.CmdSpec(argv=["x"])))
    s.write_pid("c", 123, 456, 789)
    pids = s.read_pid("c")
    assert (pids.pid, pids.ticks, pids.keeper) == (123, 456, 789) and pids.started_at > 0
    assert not s.keeper_alive("c")
    # Reserved with the spec, and the keeper's lock.
    assert (s.dir("c") / "exit").stat().st_size == EXIT_RECORD
    assert s.read_exit("c") is None  # reserved, not written
    assert s.keeper_lock_path("c") == s.dir("c") / "exit"
    s.write_exit("c", KeeperExit(returncode=-9, ended_at=1.0, spool_error="x" * 5000))
    ended = s.read_exit("c")
    assert ended.returncode == -9 and len(ended.spool_error) == 1024
    assert s.read_published("c") == (0, 0)
    s.write_published("c", 10, 2)
    assert s.read_published("c") == (10, 2)
    s.output_path("c", proto.STDERR).write_bytes(b"0123456789")
    assert s.read_range("c", proto.STDERR, 3, 4) == (b"3456", 10)
    assert s.read_range("c", proto.STDERR, 8, 100) == (b"89", 10)
    assert s.read_range("c", proto.STDERR, 50, 10) == (b"", 10)
    assert s.unfinished() == ["c"] and s.read_result("c") is None
    s.write_result(proto.CmdStatus(cmd_id="c", state="done", exit_code=3))
    assert s.read_result("c").exit_code == 3 and s.unfinished() == []
    assert not list(tmp_path.glob("c/*.tmp"))


def test_prune_removes_only_old_finished(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    for c in ("old", "new", "running"):
        s.create(c, SpoolEntry(spec=proto.CmdSpec(argv=["x"])))
    for c in ("old", "new"):
        s.write_result(proto.CmdStatus(cmd_id=c, state="done"))
    long_ago = time.time() - 3600
    os.utime(s.dir("old") / "result", (long_ago, long_ago))
    os.utime(s.dir("running") / "spec", (long_ago, long_ago))
    assert s.prune(600) == ["old"]
    assert sorted(s.cmd_ids()) == ["new", "running"]
    assert [c for _, c in s.finished_since(time.time() - 60)] == ["new"]


@pytest.mark.parametrize(
    "cmd_id,ok",
    [
        ("c-1.a:b_2", True),
        ("", False),
        ("..", False),
        ("a/b", False),
        (".hidden", False),
        ("x" * 129, False),
        ("ü", False),
    ],
)
def test_cmd_ids_are_safe_directory_names(cmd_id: str, ok: bool) -> None:
    assert valid_cmd_id(cmd_id) is ok


def test_a_failed_create_leaves_nothing_so_a_resend_can_succeed(tmp_path: Path, monkeypatch) -> None:
    s = Spool(tmp_path)

    def full(*_a, **_k):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(spool_mod, "_write_new", full)
        with pytest.raises(OSError, match="No space"):
            s.create("c", SpoolEntry(spec=proto.CmdSpec(argv=["x"])))
    assert not s.exists("c")
    s.create("c", SpoolEntry(spec=proto.CmdSpec(argv=["x"])))  # no FileExistsError
    assert s.read_spec("c") is not None


def test_the_keeper_file_of_an_entry_from_before_2026_12_is_still_its_lock(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    s.create("c", SpoolEntry(spec=proto.CmdSpec(argv=["x"])))
    lock = s.take_keeper_lock("c")  # the exit record is the lock now
    assert lock is not None and s.keeper_alive("c") and s.take_keeper_lock("c") is None
    os.close(lock)
    # An entry made by an older agent, whose keeper still runs after the upgrade: its lock is
    # the separate keeper file, and holding it is what tells that the keeper is at work.
    (s.dir("c") / "keeper").touch()
    old = os.open(s.dir("c") / "keeper", os.O_WRONLY)
    fcntl.flock(old, fcntl.LOCK_EX)
    assert s.keeper_alive("c") and s.take_keeper_lock("c") is None
    os.close(old)
    assert not s.keeper_alive("c")
