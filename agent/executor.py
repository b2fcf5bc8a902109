"""How an agent runs its commands, chosen once: here, each in a process group of its own
(``LocalExecutor``), or on another host over SSH (agent/ssh_exec.py, when ``agent.exec_via`` is
set). The session checks a command through ``Executor.prepare`` (the policy: nothing is
written before it passes), starts it with the starter that returns, and hands each ``Handle``
to the output thread; a restarted agent gets handles on its predecessor's commands from
``Executor.reattach``, and start-up recovery ends what no keeper watches any more through
``Executor.end_orphan``. Nothing above this module knows which executor it has.

Either way one local process -- the command itself, or its ssh session -- is started by a
keeper (agent/keeper.py) that spools its output and records its exit, so the output thread
tails, times and finishes both alike; only how the whole command is signalled and who has the
last word on its status differ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent import keeper, policy, procgroup
from agent.keeper import Keepers, Kept
from agent.spool import KeeperExit, Pids
from agent.ssh_exec import SshExecutor
from common.config import AgentConf
from common.protocol import CmdSpec, CmdStatus


class Handle(Protocol):
    """One started command, as the output thread drives it."""

    # The local process whose output is the command's and whose exit ends it (it leads a
    # process group of its own), and the keeper that watches it.
    pid: int
    keeper: int

    def signal(self, sig: int) -> bool:
        """Deliver ``sig`` to the whole command, every process of it; False if it is gone."""

    def conclude(self, status: CmdStatus, ended: KeeperExit) -> CmdStatus:
        """The final status, given the one the output thread derived from the keeper's record."""


# (the agent's keepers, cmd_id, the secrets to take out of its output) -> its handle and its keeper
Starter = Callable[[Keepers, str, list[bytes]], tuple[Handle, Kept]]


class Executor(Protocol):
    def open(self) -> None:
        """Get ready before the first command (the SSH executor logs in, so a refused login
        shows in the log at start rather than at the first command)."""

    def prepare(self, spec: CmdSpec, workspace: str | None) -> Starter:
        """Check ``spec`` against the agent's policy (raises policy.Refusal, touching nothing);
        the starter returned starts it, raising OSError if it cannot be executed."""

    def reattach(self, pids: Pids) -> Handle:
        """A handle on a command a previous agent process started, whose keeper still runs (or
        has recorded its exit)."""

    def end_orphan(self, pid: int, ticks: int | None) -> bool:
        """End what is left of a command that a previous agent process started (``pid`` and its
        start ``ticks`` as the spool recorded them for ``Handle.pid``); True if anything was."""

    def close(self) -> None:
        """Release what ``open`` or the commands acquired; no command runs any more."""


@dataclass
class LocalHandle:
    pid: int
    keeper: int

    def signal(self, sig: int) -> bool:
        return procgroup.signal_group(self.pid, sig)

    def conclude(self, status: CmdStatus, ended: KeeperExit) -> CmdStatus:
        return status  # the process's own exit status is the command's


class LocalExecutor:
    """Commands run on this host, without a shell, each in a session (process group) of its own."""

    def __init__(self, conf: AgentConf, environ: Mapping[str, str]) -> None:
        self.conf = conf
        self.environ = environ

    def open(self) -> None:
        pass  # nothing to set up: every command is a fresh fork

    def prepare(self, spec: CmdSpec, workspace: str | None) -> Starter:
        launch = policy.check(self.conf, spec, workspace, self.environ)
        plan = keeper.Plan(
            launch.argv, launch.cwd, launch.env, spec.stdin, self.conf.kill_grace_s, executable=launch.executable
        )

        def start(keepers: Keepers, cmd_id: str, secrets: list[bytes]) -> tuple[Handle, Kept]:
            kept = keepers.spawn(cmd_id, plan, secrets)
            return LocalHandle(kept.pid, kept.keeper), kept

        return start

    def reattach(self, pids: Pids) -> LocalHandle:
        assert pids.keeper is not None
        return LocalHandle(pids.pid, pids.keeper)

    def end_orphan(self, pid: int, ticks: int | None) -> bool:
        return procgroup.end_orphan(pid, ticks)

    def close(self) -> None:
        pass


def executor_for(conf: AgentConf, state_dir: Path, environ: Mapping[str, str]) -> Executor:
    """The agent's one executor: SSH to ``conf.exec_via`` if set, else this host."""
    if conf.exec_via:
        return SshExecutor(conf, state_dir)
    return LocalExecutor(conf, environ)
