"""The executor interface with real processes: the factory's choice, and the local executor's
policy, process group, signals and orphan ending (the SSH executor: tests/integration/test_ssh_exec.py)."""

import os
import signal
from pathlib import Path

import pytest

from agent import policy, procgroup
from agent.executor import LocalExecutor, LocalHandle, executor_for
from agent.keeper import Keepers
from agent.spool import KeeperExit, Spool, SpoolEntry
from agent.ssh_exec import SshExecutor
from common.config import AgentConf
from common.protocol import CmdSpec, CmdStatus
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(30)


def local(tmp_path: Path) -> LocalExecutor:
    return LocalExecutor(AgentConf(workspace_roots=[str(tmp_path)], allowed_executables=["sh"]), os.environ)


def running(pid: int) -> bool:
    """Neither gone nor a zombie: a killed grandchild waits for init to reap it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"


def start_with_child(ex: LocalExecutor, tmp_path: Path) -> tuple[LocalHandle, int, Spool]:
    """sh leading its group, with a background sleep in it; returns (its handle, the sleep's
    pid, the spool its keeper writes)."""
    spool = Spool(tmp_path / "spool")
    spec = CmdSpec(argv=["sh", "-c", "sleep 60 & echo $!; wait"])
    spool.create("c", SpoolEntry(spec=spec))
    handle, kept = ex.prepare(spec, None)(Keepers(spool), "c", [])
    kept.release(False)  # as if the agent were gone: the keeper exits after the command
    assert isinstance(handle, LocalHandle)
    out = spool.output_path("c", 1)
    wait_for(lambda: out.exists() and out.read_bytes().endswith(b"\n"), 10, "the background pid")
    return handle, int(out.read_bytes()), spool


def ended(spool: Spool) -> KeeperExit:
    return wait_for(lambda: spool.read_exit("c"), 10, "the keeper's exit record")


def test_the_factory_chooses_by_exec_via_and_connects_nothing_yet(tmp_path: Path) -> None:
    assert isinstance(executor_for(AgentConf(), tmp_path, {}), LocalExecutor)
    ssh = executor_for(AgentConf(exec_via="ssh://nobody@127.0.0.1:1"), tmp_path, {})
    assert isinstance(ssh, SshExecutor) and ssh.master.pid is None
    assert not (tmp_path / "ssh").exists()


def test_local_prepare_applies_the_policy(tmp_path: Path) -> None:
    with pytest.raises(policy.Refusal, match="not on this agent's allowed_executables"):
        local(tmp_path).prepare(CmdSpec(argv=["cat"]), None)


def test_local_handle_signals_the_whole_group_and_keeps_the_status(tmp_path: Path) -> None:
    handle, child, spool = start_with_child(local(tmp_path), tmp_path)
    assert os.getpgid(child) == handle.pid  # the command leads a group of its own
    assert os.getpgid(handle.keeper) != handle.pid  # and its keeper is outside it
    assert handle.signal(signal.SIGTERM)
    assert ended(spool).returncode == -signal.SIGTERM
    wait_for(lambda: not running(child), 10, "the background sleep to end with its group")
    status = CmdStatus(cmd_id="c", state="done", signal=signal.SIGTERM)
    assert handle.conclude(status, ended(spool)) is status


def test_end_orphan_ends_our_group_but_not_a_reused_pid(tmp_path: Path) -> None:
    ex = local(tmp_path)
    handle, child, spool = start_with_child(ex, tmp_path)
    ticks = procgroup.start_ticks(handle.pid)
    assert ticks is not None
    # Another start time: the pid now belongs to some other process, left alone.
    assert not ex.end_orphan(handle.pid, ticks + 1) and running(child)
    assert ex.end_orphan(handle.pid, ticks)
    assert ended(spool).returncode == -signal.SIGKILL
    wait_for(lambda: not running(child), 10, "the background sleep to end with its group")
