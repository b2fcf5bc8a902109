"""The SSH executor: an agent's commands run on another host, one SSH session each.

An ``Executor`` (agent/executor.py) like the local one: the pump reads the session's
stdout/stderr (the remote command's, byte for byte: no tty) into the local spool and the events,
and ends a command through its ``RemoteRun`` handle. The connection is the ControlMaster of
common/ssh.py; the policy for remote paths is agent/ssh_policy.py.

The remote side is a POSIX sh wrapper (no agent, no Python needed there):
- the argv is never interpreted by a shell: each element is ``shlex.quote``d and run through
  ``env -i`` with only the allowlisted environment overlay (PATH/HOME/LANG from the login);
- the command runs under ``setsid``, in its own process group, after ``cd -P`` to its cwd and
  a check that the physical cwd is inside a workspace root;
- the session's stdin is a lifeline: first the request's stdin bytes (if any, passed on
  through a private FIFO), then one line per kill request ("TERM"/"KILL"), which the wrapper
  turns into ``kill -SIG -PGID``. When the stdin reaches EOF -- the agent closed it, died, or
  the connection was cut -- the wrapper SIGKILLs the group, so no orphan keeps running;
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
import subprocess
from collections.abc import Callable
from pathlib import Path

import msgspec

from agent import procgroup, ssh_policy
from common import logs
from common.config import AgentConf
from common.protocol import CmdSpec, CmdStatus
from common.ssh import ControlMaster, SshDest, SshError, pid_alive

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
    """The pump's handle on one remote command (an ``executor.Handle``): ``proc`` is the local
    ssh session."""

    def __init__(self, proc: subprocess.Popen, master: ControlMaster, master_pid: int) -> None:
        assert proc.stdin is not None  # always piped: see SshExecutor.start
        self.proc = proc
        self.dest = master.dest
        self.master_pid = master_pid
        # Our own end of the session's stdin: kill lines go here, and closing it ends the command.
        self.lifeline: int | None = os.dup(proc.stdin.fileno())
        os.set_blocking(self.lifeline, False)
        self.cut: int | None = None  # the signal we answered by cutting the session ourselves

    def signal(self, sig: int) -> bool:
        if self.lifeline is None:
            return False
        stdin = self.proc.stdin
        if stdin is not None and not stdin.closed:
            # Request stdin is still flowing on the same pipe: a kill line would land inside it.
            return self._cut(sig)
        try:
            os.write(self.lifeline, b"TERM\n" if sig == signal.SIGTERM else b"KILL\n")
            return True
        except BlockingIOError:
            return self._cut(sig)  # the remote is not reading: closing the session is all that is left
        except OSError:
            return False  # the session has ended

    def _cut(self, sig: int) -> bool:
        """End the local ssh client: the remote wrapper sees its stdin close and SIGKILLs the group."""
        self.cut = sig
        return procgroup.signal_group(self.proc.pid, signal.SIGKILL)

    def conclude(self, status: CmdStatus) -> CmdStatus:
        if self.lifeline is not None:
            os.close(self.lifeline)
            self.lifeline = None
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        rc = self.proc.returncode
        if self.cut is not None and rc is not None and rc < 0:
            return msgspec.structs.replace(status, exit_code=None, signal=self.cut)
        if rc is not None and rc < 0:
            return self._lost(status, f"the ssh client was ended by signal {-rc}")
        if rc == 255 and not pid_alive(self.master_pid):
            return self._lost(
                status, f"the connection to {self.dest} closed (ssh master pid {self.master_pid} is gone)"
            )
        if (status.killed or status.timed_out) and rc is not None and 128 < rc <= 128 + 64:
            # sh reports a leader killed by signal N as 128+N; we sent it, so say so as locally.
            return msgspec.structs.replace(status, exit_code=None, signal=rc - 128)
        return status

    def _lost(self, status: CmdStatus, why: str) -> CmdStatus:
        return msgspec.structs.replace(status, exit_code=255, signal=None, error=f"ssh connection lost: {why}")


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

    def prepare(self, spec: CmdSpec, workspace: str | None) -> Callable[[], RemoteRun]:
        """Raises policy.Refusal; the starter raises OSError (SshError included) if ssh cannot be started."""
        launch = ssh_policy.check(self.conf, spec, workspace)
        return lambda: self._start(launch, spec)

    def _start(self, launch: ssh_policy.RemoteLaunch, spec: CmdSpec) -> RemoteRun:
        master_pid = self.master.ensure()
        argv = self.master.session(remote_command(launch, len(spec.stdin or b""), self.conf.kill_grace_s))
        # Always a stdin pipe: it is the lifeline even when the request has no stdin.
        proc = procgroup.popen_piped(argv, with_stdin=True)
        run = RemoteRun(proc, self.master, master_pid)
        if spec.stdin is None and proc.stdin is not None:
            proc.stdin.close()  # the lifeline dup keeps the pipe open
        return run

    def end_orphan(self, pid: int, ticks: int | None) -> bool:
        # ``pid`` leads the local ssh session's group: ending it closes the session's stdin, and
        # the remote wrapper then SIGKILLs the command's group (it already has if the old
        # agent's death closed that stdin).
        return procgroup.end_orphan(pid, ticks)

    def close(self) -> None:
        self.master.stop()
