"""The agent's one SSH connection to its execution host: an OpenSSH ControlMaster.

Every command is a new session multiplexed over this connection (~10 ms on loopback, against
~250 ms for a fresh key exchange and login). The master is started with ``-f``, so ssh returns
only once it is logged in and a refused login is reported at once, and with ``ControlPersist``
so a master orphaned by a SIGKILLed agent exits by itself once idle. ``ensure()`` runs before
every command: a pid and socket check, and a restart (one handshake) when the master has died.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
from pathlib import Path

from agent import executor
from common import logs
from common.ssh import SshDest, option_args

# An idle master (no session) exits after this long, so one left behind by a SIGKILLed agent
# goes soon; a live agent restarts it on its next command (one login, ~0.3 s on loopback).
MASTER_IDLE_S = 60
# After the user's own options: ssh keeps the first value it sees for each option.
DEFAULT_OPTIONS = ("BatchMode=yes", "ConnectTimeout=5", "ServerAliveInterval=5", "ServerAliveCountMax=3")
START_TIMEOUT_S = 60.0
# sun_path holds 108 bytes and ssh adds a 17-character suffix while it binds.
MAX_SOCKET_PATH = 80

log = logs.get("agent.ssh")


class SshError(OSError):
    """SSH to the execution host failed; the message is one line naming the host and the cause."""


def control_path(state_dir: Path, dest: SshDest) -> Path:
    """The master's socket: in the agent's state dir, or a private runtime dir if that is too long."""
    key = hashlib.sha1(f"{state_dir.resolve()}|{dest}".encode()).hexdigest()[:16]
    path = state_dir / "ssh" / f"cm-{key}"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/p4bus-{os.getuid()}"
    return Path(runtime) / "p4bus-ssh" / f"cm-{key}"


class ControlMaster:
    def __init__(self, dest: SshDest, options: list[str], state_dir: Path) -> None:
        self.dest = dest
        self.path = control_path(state_dir, dest)
        self.pid: int | None = None
        # Shared by ssh and scp (both take -o options).
        self.args = [
            *option_args(options),
            *dest.options(),
            *option_args(DEFAULT_OPTIONS),
            "-o",
            f"ControlPath={self.path}",
        ]
        self._base = ["ssh", *self.args]

    def session(self, remote_command: str) -> list[str]:
        """argv of one command as a new session on the master; no tty (-T), so bytes pass
        untouched, and LogLevel=ERROR so no ssh notice lands in the command's stderr."""
        return [*self._base, "-T", "-o", "ControlMaster=no", "-o", "LogLevel=ERROR", self.dest.host, remote_command]

    def copy(self, files: list[str], remote_dir: str) -> list[str]:
        """argv of an scp of ``files`` into ``remote_dir`` over the master."""
        host = f"[{self.dest.host}]" if ":" in self.dest.host else self.dest.host
        return ["scp", "-q", *self.args, "-o", "ControlMaster=no", *files, f"{host}:{remote_dir}/"]

    def alive(self) -> bool:
        return self.pid is not None and self.path.exists() and executor.pid_alive(self.pid)

    def ensure(self) -> int:
        """The running master's pid, starting one if needed; SshError if ssh cannot log in."""
        if not self.alive():
            self.pid = self._check() or self._start()
        assert self.pid is not None
        return self.pid

    def _check(self) -> int | None:
        """Adopt a master that is already running on our socket (e.g. a restarted agent's)."""
        if not self.path.exists():
            return None
        done = self._control("check")
        found = re.search(r"pid=(\d+)", done.stderr)
        if done.returncode == 0 and found:
            return int(found.group(1))
        self.path.unlink(missing_ok=True)  # a SIGKILLed master leaves its socket behind
        return None

    def _start(self) -> int:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        argv = [*self._base, "-M", "-N", "-f", "-o", f"ControlPersist={MASTER_IDLE_S}", self.dest.host]
        try:
            done = subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=START_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            raise SshError(f"ssh to {self.dest} did not log in within {START_TIMEOUT_S:.0f}s") from None
        except FileNotFoundError:
            raise SshError("the ssh client is not installed (install openssh-client)") from None
        if done.returncode != 0:
            raise SshError(f"ssh to {self.dest} failed: {_last_line(done.stderr) or f'exit {done.returncode}'}")
        pid = self._check()
        if pid is None:
            raise SshError(f"ssh to {self.dest} logged in but its control socket {self.path} does not answer")
        log.info("ssh master started", dest=str(self.dest), pid=pid, socket=str(self.path))
        return pid

    def stop(self) -> None:
        if self.alive():
            self._control("exit")
        self.pid = None

    def _control(self, op: str) -> subprocess.CompletedProcess:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return subprocess.run(
                [*self._base, "-O", op, self.dest.host],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=10,
            )
        return subprocess.CompletedProcess([], 255, "", "timed out")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
