"""How an agent runs its commands, chosen once: here, each in a process group of its own
(``LocalExecutor``), or on another host over SSH (agent/ssh_exec.py, when ``agent.exec_via`` is
set). The session checks a command through ``Executor.prepare`` (the policy: nothing is
written before it passes), starts it with the starter that returns, and hands each ``Handle``
to the output thread; start-up recovery ends what a previous agent left through ``Executor.end_orphan``.
Nothing above this module knows which executor it has.

Either way a command's output arrives on the pipes of one local process (the command itself, or
its ssh session), so the output thread reads, times and reaps both alike; only how the whole
command is signalled and who has the last word on its status differ.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent import policy, procgroup
from agent.ssh_exec import SshExecutor
from common.config import AgentConf
from common.protocol import CmdSpec, CmdStatus


class Handle(Protocol):
    """One started command, as the output thread drives it."""

    # The local process whose stdout/stderr carry the command's output and whose exit ends it;
    # it leads a process group of its own.
    proc: subprocess.Popen

    def signal(self, sig: int) -> bool:
        """Deliver ``sig`` to the whole command, every process of it; False if it is gone."""

    def conclude(self, status: CmdStatus) -> CmdStatus:
        """The final status, given the one the output thread derived from ``proc``'s exit."""


class Executor(Protocol):
    def open(self) -> None:
        """Get ready before the first command (the SSH executor logs in, so a refused login
        shows in the log at start rather than at the first command)."""

    def prepare(self, spec: CmdSpec, workspace: str | None) -> Callable[[], Handle]:
        """Check ``spec`` against the agent's policy (raises policy.Refusal, touching nothing);
        the starter returned starts it, raising OSError/ValueError if it cannot be executed."""

    def end_orphan(self, pid: int, ticks: int | None) -> bool:
        """End what is left of a command that a previous agent process started (``pid`` and its
        start ``ticks`` as the spool recorded them for ``Handle.proc``); True if anything was."""

    def close(self) -> None:
        """Release what ``open`` or the commands acquired; no command runs any more."""


@dataclass
class LocalHandle:
    proc: subprocess.Popen

    def signal(self, sig: int) -> bool:
        return procgroup.signal_group(self.proc.pid, sig)

    def conclude(self, status: CmdStatus) -> CmdStatus:
        return status  # the process's own exit status is the command's


class LocalExecutor:
    """Commands run on this host, without a shell, each in a session (process group) of its own."""

    def __init__(self, conf: AgentConf, environ: Mapping[str, str]) -> None:
        self.conf = conf
        self.environ = environ

    def open(self) -> None:
        pass  # nothing to set up: every command is a fresh fork

    def prepare(self, spec: CmdSpec, workspace: str | None) -> Callable[[], LocalHandle]:
        launch = policy.check(self.conf, spec, workspace, self.environ)
        return lambda: LocalHandle(
            procgroup.popen_piped(launch.argv, spec.stdin is not None, cwd=launch.cwd, env=launch.env)
        )

    def end_orphan(self, pid: int, ticks: int | None) -> bool:
        return procgroup.end_orphan(pid, ticks)

    def close(self) -> None:
        pass


def executor_for(conf: AgentConf, state_dir: Path, environ: Mapping[str, str]) -> Executor:
    """The agent's one executor: SSH to ``conf.exec_via`` if set, else this host."""
    if conf.exec_via:
        return SshExecutor(conf, state_dir)
    return LocalExecutor(conf, environ)
