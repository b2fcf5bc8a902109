"""The keeper with real processes: it spools redacted output, records the exit, survives the
loss of its agent's end of the notify pipe, and reports a command that cannot start."""

import errno
import os
import select
import signal
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


def until_eof(fd: int) -> bytes:
    got = b""
    while True:
        select.select([fd], [], [], 10)
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not data:
            return got
        got += data


def test_output_is_spooled_redacted_and_the_exit_recorded(tmp_path: Path) -> None:
    argv = ["sh", "-c", "cat; printf 'pw=hunter22\\n' >&2; exit 3"]
    spool, plan = spool_with(tmp_path, argv, stdin=b"from stdin\n")
    kept = keeper.Keepers(spool).spawn("c", plan, [b"hunter22"])
    assert spool.read_pid("c")[:3] == (kept.pid, spool.read_pid("c").ticks, kept.keeper)
    assert until_eof(kept.notify)  # a poke per spooled write, then EOF when the keeper exits
    ended = spool.read_exit("c")
    assert ended is not None and (ended.returncode, ended.spool_error) == (3, "")
    assert spool.output_path("c", proto.STDOUT).read_bytes() == b"from stdin\n"
    assert spool.output_path("c", proto.STDERR).read_bytes() == b"pw=***\n"
    # The lock goes with the process, a moment after the notify pipe's EOF.
    wait_for(lambda: not spool.keeper_alive("c"), 10, "the keeper's lock released")


def test_the_keeper_outlives_its_agents_end_of_the_notify_pipe(tmp_path: Path) -> None:
    spool, plan = spool_with(tmp_path, ["sh", "-c", "echo one; while [ ! -e go ]; do sleep 0.02; done; echo two"])
    kept = keeper.Keepers(spool).spawn("c", plan, [])
    assert spool.keeper_alive("c")
    wait_for(lambda: spool.output_path("c", proto.STDOUT).read_bytes() == b"one\n", 10, "the first line")
    os.close(kept.notify)  # the agent is gone
    (tmp_path / "go").touch()
    wait_for(lambda: spool.read_exit("c"), 10, "the exit record")
    assert spool.output_path("c", proto.STDOUT).read_bytes() == b"one\ntwo\n"
    assert spool.read_exit("c").returncode == 0
    wait_for(lambda: not spool.keeper_alive("c"), 10, "the keeper's lock released")


def test_a_leftover_holding_the_pipes_is_killed_after_the_grace(tmp_path: Path) -> None:
    spool, plan = spool_with(tmp_path, ["sh", "-c", "sleep 60 & echo started"])
    kept = keeper.Keepers(spool).spawn("c", plan, [])
    until_eof(kept.notify)
    assert spool.read_exit("c").returncode == 0
    assert spool.output_path("c", proto.STDOUT).read_bytes() == b"started\n"


def test_a_command_that_cannot_start_is_reported_and_nothing_runs(tmp_path: Path) -> None:
    spool, plan = spool_with(tmp_path, [str(tmp_path / "missing")])
    with pytest.raises(keeper.StartError, match="No such file"):
        keeper.Keepers(spool).spawn("c", plan, [])
    assert spool.read_pid("c") is None and spool.read_exit("c") is None
    wait_for(lambda: not spool.keeper_alive("c"), 10, "the keeper to exit")


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


def test_lifeline_signals_become_kill_lines(tmp_path: Path) -> None:
    # The remote wrapper's side, played by sh: it reads kill lines on its stdin.
    argv = ["sh", "-c", "read line; echo got $line; exit 5"]
    spool, plan = spool_with(tmp_path, argv)
    plan = keeper.Plan(argv, str(tmp_path), None, None, grace_s=1.0, lifeline=True)
    kept = keeper.Keepers(spool).spawn("c", plan, [])
    os.kill(kept.keeper, keeper.LIFELINE_SIGNALS[signal.SIGTERM])
    until_eof(kept.notify)
    assert spool.output_path("c", proto.STDOUT).read_bytes() == b"got TERM\n"
    assert spool.read_exit("c").returncode == 5


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
