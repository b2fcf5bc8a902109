"""The SSH executor: an agent's commands run on another host, one SSH session each.

An ``Executor`` (agent/executor.py) like the local one: a keeper (agent/keeper.py) runs the
local ssh session and spools its stdout/stderr (the remote command's, byte for byte: no tty),
the pump tails the spool into the events, and ends a command through its ``RemoteRun`` handle. The connection is the ControlMaster of
common/ssh.py; the policy for remote paths is agent/ssh_policy.py.

The remote side is a POSIX sh wrapper (no agent, no Python needed there):
- the argv is never interpreted by a shell: each element is ``shlex.quote``d and run through
  ``env -i`` with only the allowlisted environment overlay (PATH/HOME/LANG from the login);
- the command runs under ``setsid``, in its own process group, after ``cd -P`` to its cwd and
  a check that the physical cwd is inside a workspace root;
- the session's stdin is a lifeline, held by the command's keeper: first the request's stdin
  bytes (if any, passed on through a private FIFO), then one line per kill request
  ("TERM"/"KILL": the agent signals the keeper SIGUSR1/SIGUSR2, agent/keeper.py), which the
  wrapper turns into ``kill -SIG -PGID``. When the stdin reaches EOF -- the keeper closed it or
  died, or the connection was cut -- the wrapper SIGKILLs the group, so no orphan keeps running.
  The keeper outlives the agent, and so does the session as long as the ControlMaster does
  (``ssh -f``: it is in no agent process group, and a restarted agent adopts it);
- when the leader exits, what is left of its group gets ``kill_grace_s`` and then SIGKILL
  (the local executor's rule for leftovers), and the wrapper exits with the leader's status.
The kill path never needs a second SSH round trip nor the remote pid.

Limits: the remote needs sh, setsid and ``head -c`` (any Linux). sh starts background jobs
with SIGINT/SIGQUIT ignored, so the command inherits that (p4bus only sends TERM and KILL).
A command that ignores more than ~2 MB of request stdin blocks the kill lines behind it; a
lost connection still ends it once ssh notices (ServerAliveInterval).
"""

from __future__ import annotations

import os
import shlex
import signal
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from agent import keeper, procgroup, ssh_policy
from agent.keeper import Keepers, Kept
from agent.spool import KeeperExit, Pids
from common import logs
from common.config import AgentConf
from common.protocol import CmdSpec, CmdStatus
from common.ssh import ControlMaster, SshDest, SshError, pid_alive

# A SIGKILLed ControlMaster closes its sockets (and so ends its clients with 255) a moment
# before it is gone from /proc: how long a client's 255 waits for that before it is taken
# for the remote command's own exit status.
MASTER_GONE_WAIT_S = 0.5

q = shlex.quote
log = logs.get("agent.ssh")


def inner_script(launch: ssh_policy.RemoteLaunch) -> str:
    """Runs as the new process group's leader: check the cwd, then exec the argv."""
    roots = " ".join(q(r) for r in launch.roots)
    env = " ".join(q(f"{k}={v}") for k, v in launch.env.items())
    argv = " ".join(q(a) for a in launch.argv)
    return "; ".join(
        [
            f"cd -P -- {q(launch.cwd)} 2>/dev/null || {{ printf 'p4bus: cannot enter %s on the remote host\\n' "
            f"{q(launch.cwd)} >&2; exit 126; }}",
            "d=$PWD; ok=",
            f'for r in {roots}; do cd -P -- "$r" 2>/dev/null && case "$d/" in "${{PWD%/}}"/*) ok=1; break;; esac; done',
            f'[ -n "$ok" ] || {{ printf \'p4bus: cwd %s is outside the workspace roots %s\\n\' "$d" {q(" ".join(launch.roots))}'
            " >&2; exit 126; }",
            f'cd -- "$d" && exec env -i ${{PATH+"PATH=$PATH"}} ${{HOME+"HOME=$HOME"}} ${{LANG+"LANG=$LANG"}} {env} {argv}',
        ]
    )


def remote_command(launch: ssh_policy.RemoteLaunch, stdin_bytes: int, grace_s: float) -> str:
    """The string the remote login shell runs (one line: csh would reject quoted newlines)."""
    feed = ""
    steps = ["exec 3<&0", "src=/dev/null; d="]
    if stdin_bytes:
        steps.append('d=$(mktemp -d) && mkfifo "$d/in" && src=$d/in || exit 125')
        feed = f'head -c {stdin_bytes} >"$src"; rm -rf "$d"; '
    steps += [
        f'setsid sh -c {q(inner_script(launch))} p4bus-cmd <"$src" & pg=$!',
        # The lifeline reader (see the module docstring); its output goes nowhere, so it never
        # holds the session open. k() retries while the child lives but has not yet called
        # setsid (an EOF can come that early): a kill of the not-yet-existing group would fail.
        'k() { while ! kill -"$1" -"$pg" 2>/dev/null; do kill -0 "$pg" 2>/dev/null || return; sleep 0.05; done; }',
        f'{{ {feed}while read -r r; do case $r in TERM|KILL) k "$r";; esac; done; k KILL; }}'
        " <&3 >/dev/null 2>&1 & w=$!",
        "exec 3<&-",
        'wait "$pg"; rc=$?',
        f'i=0; while kill -0 -"$pg" 2>/dev/null && [ $i -lt {max(1, round(grace_s * 10))} ]; do sleep 0.1; i=$((i+1)); done',
        'kill -KILL -"$pg" 2>/dev/null; kill "$w" 2>/dev/null; exit "$rc"',
    ]
    return f"exec sh -c {q('; '.join(steps))} p4bus-ssh"


class RemoteRun:
    """The pump's handle on one remote command (an ``executor.Handle``): ``pid`` is the local
    ssh session, whose stdin (the lifeline) its keeper holds."""

    def __init__(self, pid: int, keeper_pid: int, dest: str, master_pid: int | None) -> None:
        self.pid = pid
        self.keeper = keeper_pid
        self.dest = dest
        self.master_pid = master_pid  # None: re-attached by a restarted agent

    def signal(self, sig: int) -> bool:
        # The keeper writes the kill line, or cuts the session when it cannot (agent/keeper.py).
        try:
            os.kill(self.keeper, keeper.LIFELINE_SIGNALS.get(sig, signal.SIGUSR2))
            return True
        except ProcessLookupError:
            return False  # the keeper has ended: so has the session

    def conclude(self, status: CmdStatus, ended: KeeperExit) -> CmdStatus:
        rc = ended.returncode
        if ended.cut is not None and rc < 0:
            return msgspec.structs.replace(status, exit_code=None, signal=ended.cut)
        if rc < 0:
            return self._lost(status, f"the ssh client was ended by signal {-rc}")
        if rc == 255 and self.master_pid is None:
            return self._lost(status, f"the session to {self.dest} ended with 255 while the agent restarted")
        if rc == 255 and self.master_pid is not None and _gone(self.master_pid):
            return self._lost(
                status, f"the connection to {self.dest} closed (ssh master pid {self.master_pid} is gone)"
            )
        if (status.killed or status.timed_out) and 128 < rc <= 128 + 64:
            # sh reports a leader killed by signal N as 128+N; we sent it, so say so as locally.
            return msgspec.structs.replace(status, exit_code=None, signal=rc - 128)
        return status

    def _lost(self, status: CmdStatus, why: str) -> CmdStatus:
        return msgspec.structs.replace(status, exit_code=255, signal=None, error=f"ssh connection lost: {why}")


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + MASTER_GONE_WAIT_S
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


class SshExecutor:
    """Starts an agent's commands on ``conf.exec_via`` over one ControlMaster (an ``executor.Executor``)."""

    def __init__(self, conf: AgentConf, state_dir: Path) -> None:
        self.conf = conf
        self.master = ControlMaster(SshDest.parse(conf.exec_via), conf.ssh_options, state_dir)

    def open(self) -> None:
        try:
            pid = self.master.ensure()
            log.info("ssh executor ready", dest=str(self.master.dest), master_pid=pid)
        except SshError as exc:
            log.error("ssh executor cannot connect yet; every command retries", error=str(exc))

    def prepare(
        self, spec: CmdSpec, workspace: str | None
    ) -> Callable[[Keepers, str, list[bytes]], tuple[RemoteRun, Kept]]:
        """Raises policy.Refusal; the starter raises OSError (SshError included) if ssh cannot be started."""
        launch = ssh_policy.check(self.conf, spec, workspace)

        def start(keepers: Keepers, cmd_id: str, secrets: list[bytes]) -> tuple[RemoteRun, Kept]:
            master_pid = self.master.ensure()
            argv = self.master.session(remote_command(launch, len(spec.stdin or b""), self.conf.kill_grace_s))
            # Always a stdin: it is the lifeline even when the request has none.
            plan = keeper.Plan(argv, None, None, spec.stdin, self.conf.kill_grace_s, lifeline=True)
            kept = keepers.spawn(cmd_id, plan, secrets)
            return RemoteRun(kept.pid, kept.keeper, str(self.master.dest), master_pid), kept

        return start

    def reattach(self, pids: Pids) -> RemoteRun:
        assert pids.keeper is not None
        return RemoteRun(pids.pid, pids.keeper, str(self.master.dest), None)

    def end_orphan(self, pid: int, ticks: int | None) -> bool:
        # ``pid`` leads the local ssh session's group: ending it closes the session's stdin, and
        # the remote wrapper then SIGKILLs the command's group (it already has if the old
        # agent's death closed that stdin).
        return procgroup.end_orphan(pid, ticks)

    def close(self) -> None:
        self.master.stop()
