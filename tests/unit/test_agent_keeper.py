"""The keeper with real processes: it spools redacted output, records the exit, survives the
loss of its agent's end of the notify pipe, reports a command that cannot start, and keeps the
next command once its agent gives it back."""

import errno
import os
import select
import signal
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from agent import keeper
from agent.spool import Spool, SpoolEntry
from common import protocol as proto
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(30)


def spool_with(tmp_path: Path, argv: list[str], stdin: bytes | None = None) -> tuple[Spool, keeper.Plan]:
    spool = Spool(tmp_path / "spool")
    spool.create("c", SpoolEntry(spec=proto.CmdSpec(argv=argv)))
    return spool, keeper.Plan(argv, str(tmp_path), None, stdin, grace_s=1.0)


def until_done(fd: int) -> bytes:
    """The pokes up to and with DONE, or up to EOF (the keeper died): what the pump reads."""
    got = b""
    while True:
        select.select([fd], [], [], 10)
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            continue
        got += data
        if not data or keeper.DONE in data:
            return got


@pytest.fixture
def keepers(tmp_path: Path) -> Iterator[keeper.Keepers]:
    k = keeper.Keepers(Spool(tmp_path / "spool"))
    yield k
    k.close()


def test_output_is_spooled_redacted_and_the_exit_recorded(tmp_path: Path, keepers: keeper.Keepers) -> None:
    argv = ["sh", "-c", "cat; printf 'pw=hunter22\\n' >&2; exit 3"]
    spool, plan = spool_with(tmp_path, argv, stdin=b"from stdin\n")
    kept = keepers.spawn("c", plan, [b"hunter22"])
    assert spool.read_pid("c")[:3] == (kept.pid, spool.read_pid("c").ticks, kept.keeper)
    pokes = until_done(kept.notify)  # a poke per spooled write, then DONE
    assert pokes.endswith(keeper.DONE) and len(pokes) > 1
    # By DONE the exit is recorded and the lock released.
    assert not spool.keeper_alive("c")
    ended = spool.read_exit("c")
    assert ended is not None and (ended.returncode, ended.spool_error) == (3, "")
    assert spool.output_path("c", proto.STDOUT).read_bytes() == b"from stdin\n"
    assert spool.output_path("c", proto.STDERR).read_bytes() == b"pw=***\n"
    kept.release(True)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # keepers are reaped at once (their factory ignores SIGCHLD)
        return False
    except ProcessLookupError:
        return True


def test_the_keeper_outlives_its_agent(tmp_path: Path, keepers: keeper.Keepers) -> None:
    spool, plan = spool_with(tmp_path, ["sh", "-c", "echo one; while [ ! -e go ]; do sleep 0.02; done; echo two"])
    kept = keepers.spawn("c", plan, [])
    assert spool.keeper_alive("c")
    wait_for(lambda: spool.read_range("c", proto.STDOUT, 0, 100)[0] == b"one\n", 10, "the first line")
    kept.release(False)  # the agent is gone: every end of its pipes to the keeper is closed
    (tmp_path / "go").touch()
    wait_for(lambda: spool.read_exit("c"), 10, "the exit record")
    assert spool.output_path("c", proto.STDOUT).read_bytes() == b"one\ntwo\n"
    assert spool.read_exit("c").returncode == 0
    wait_for(lambda: not spool.keeper_alive("c"), 10, "the keeper's lock released")
    wait_for(lambda: gone(kept.keeper), 10, "the keeper to exit, its agent gone")


def test_a_leftover_holding_the_pipes_is_killed_after_the_grace(tmp_path: Path, keepers: keeper.Keepers) -> None:
    spool, plan = spool_with(tmp_path, ["sh", "-c", "sleep 60 & echo started"])
    kept = keepers.spawn("c", plan, [])
    until_done(kept.notify)
    assert spool.read_exit("c").returncode == 0
    assert spool.output_path("c", proto.STDOUT).read_bytes() == b"started\n"
    kept.release(True)


def test_a_command_that_cannot_start_is_reported_and_nothing_runs(tmp_path: Path, keepers: keeper.Keepers) -> None:
    spool, plan = spool_with(tmp_path, [str(tmp_path / "missing")])
    with pytest.raises(keeper.StartError, match="No such file"):
        keepers.spawn("c", plan, [])
    assert spool.read_pid("c") is None and spool.read_exit("c") is None
    wait_for(lambda: not spool.keeper_alive("c"), 10, "the keeper to exit")


def test_a_keeper_given_back_keeps_the_next_command_from_its_own_home(tmp_path: Path, keepers: keeper.Keepers) -> None:
    spool = Spool(tmp_path / "spool")
    (tmp_path / "w1").mkdir()
    runs = []
    for cmd_id, cwd, code in (("c1", str(tmp_path / "w1"), 1), ("c2", None, 0)):
        argv = ["sh", "-c", f"pwd; exit {code}"]
        spool.create(cmd_id, SpoolEntry(spec=proto.CmdSpec(argv=argv)))
        kept = keepers.spawn(cmd_id, keeper.Plan(argv, cwd, None, None, grace_s=1.0), [])
        assert until_done(kept.notify).endswith(keeper.DONE)
        kept.release(True)
        runs.append(kept)
    assert runs[0].keeper == runs[1].keeper and runs[0].pid != runs[1].pid
    assert [spool.read_exit(c).returncode for c in ("c1", "c2")] == [1, 0]
    assert spool.output_path("c1", proto.STDOUT).read_text() == f"{tmp_path / 'w1'}\n"
    # The first command's cwd did not stick: the second runs where the agent does.
    assert spool.output_path("c2", proto.STDOUT).read_text() == f"{os.getcwd()}\n"


def test_a_keeper_killed_while_it_waits_is_replaced(tmp_path: Path, keepers: keeper.Keepers) -> None:
    spool = Spool(tmp_path / "spool")

    def run(cmd_id: str) -> int:
        spool.create(cmd_id, SpoolEntry(spec=proto.CmdSpec(argv=["true"])))
        kept = keepers.spawn(cmd_id, keeper.Plan(["true"], None, None, None, grace_s=1.0), [])
        until_done(kept.notify)
        kept.release(True)
        return kept.keeper

    first = run("c1")
    os.kill(first, signal.SIGKILL)  # by hand, while it waits for its next command
    wait_for(lambda: gone(first), 10, "the keeper killed")
    assert run("c2") != first and spool.read_exit("c2").returncode == 0


def test_a_keeper_is_let_go_after_its_last_use(
    tmp_path: Path, keepers: keeper.Keepers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keeper, "MAX_USES", 2)
    spool = Spool(tmp_path / "spool")
    used = []
    for cmd_id in ("c1", "c2", "c3"):
        spool.create(cmd_id, SpoolEntry(spec=proto.CmdSpec(argv=["true"])))
        kept = keepers.spawn(cmd_id, keeper.Plan(["true"], None, None, None, grace_s=1.0), [])
        until_done(kept.notify)
        kept.release(True)
        used.append(kept.keeper)
    assert used[0] == used[1] != used[2]
    wait_for(lambda: gone(used[0]), 10, "the keeper to exit after its last command")


def test_a_keeper_waits_for_its_command_and_starts_none_a_restarted_agent_has_decided(tmp_path: Path) -> None:
    spool, plan = spool_with(tmp_path, ["sh", "-c", "echo ran > ran"])
    keepers = keeper.Keepers(spool)
    keepers.ready()  # forked ahead of need
    lock = spool.take_keeper_lock("c")  # a restarted agent's recovery, deciding about "c"
    assert lock is not None
    spool.write_result(proto.CmdStatus(cmd_id="c", state="done", error="not started"))
    os.close(lock)
    with pytest.raises(keeper.StartError, match="recorded this command as not started"):
        keepers.spawn("c", plan, [])
    assert not (tmp_path / "ran").exists()
    keepers.ready()
    keepers.close()  # the next waiting keeper exits: nothing to keep


def test_lifeline_signals_become_kill_lines(tmp_path: Path, keepers: keeper.Keepers) -> None:
    # The remote wrapper's side, played by sh: it reads kill lines on its stdin.
    argv = ["sh", "-c", "read line; echo got $line; exit 5"]
    spool, plan = spool_with(tmp_path, argv)
    plan = keeper.Plan(argv, str(tmp_path), None, None, grace_s=1.0, lifeline=True)
    kept = keepers.spawn("c", plan, [])
    os.kill(kept.keeper, keeper.LIFELINE_SIGNALS[signal.SIGTERM])
    until_done(kept.notify)
    assert spool.output_path("c", proto.STDOUT).read_bytes() == b"got TERM\n"
    assert spool.read_exit("c").returncode == 5
    # Never given another command, so a signal meant for this one cannot reach the next.
    wait_for(lambda: gone(kept.keeper), 10, "the lifeline keeper to exit after its command")
    kept.release(True)


class _UnsyncableSpool(Spool):
    """A disk that fails the fsync of a new command's spool entry (EIO)."""

    def sync(self, cmd_id: str) -> None:
        raise OSError(errno.EIO, "Input/output error")


def test_a_command_whose_spool_entry_is_not_durable_never_starts(tmp_path: Path) -> None:
    spool = _UnsyncableSpool(tmp_path / "spool")
    spool.create("c", SpoolEntry(spec=proto.CmdSpec(argv=["sh"])), durable=False)
    plan = keeper.Plan(["sh", "-c", "echo ran > ran"], str(tmp_path), None, None, grace_s=1.0)
    keepers = keeper.Keepers(spool)
    with pytest.raises(keeper.StartError, match=r"cannot record it durably in the spool: .*Input/output error"):
        keepers.spawn("c", plan, [])
    assert spool.read_pid("c") is None and spool.read_exit("c") is None
    wait_for(lambda: not spool.keeper_alive("c"), 10, "the keeper to exit")
    assert not (tmp_path / "ran").exists()
    keepers.close()


def test_a_keeper_whose_agent_dies_before_the_go_starts_nothing(tmp_path: Path) -> None:
    spool, plan = spool_with(tmp_path, ["sh", "-c", "echo ran > ran"])
    keepers = keeper.Keepers(spool)
    keepers.ready()
    spare = keepers._receive()  # what the agent holds, then loses when it dies mid-hand-over
    data = msgspec.msgpack.encode(keeper._Assignment("c", plan, []))
    os.write(spare.assign, len(data).to_bytes(8, "big") + data)
    os.close(spare.assign)  # no GO: the agent died before the spool entry was durable
    assert os.read(spare.report, keeper.REPORT_MAX).startswith(b"the agent did not confirm the command")
    wait_for(lambda: not spool.keeper_alive("c"), 10, "the keeper to exit")
    assert spool.read_pid("c") is None and not (tmp_path / "ran").exists()
    for fd in (spare.report, spare.notify):
        os.close(fd)
    keepers.close()
