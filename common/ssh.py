"""SSH plumbing shared by the agent's SSH executor and `p4bus deploy-agent`: destinations, option
lists, and the one OpenSSH ControlMaster connection each of them keeps to a host.

Both drive the system OpenSSH client, so ``~/.ssh/config``, keys and agent forwarding apply.
User and port travel as ``-o User=`` / ``-o Port=`` options rather than ``user@host`` and
``-p``/``-P``, because ssh and scp then take the very same argument list.

Every command is a new session multiplexed over the master connection (~10 ms on loopback,
against ~250 ms for a fresh key exchange and login). The master is started with ``-f``, so ssh
returns only once it is logged in and a refused login is reported at once, and with
``ControlPersist`` so a master orphaned by a SIGKILLed owner exits by itself once idle.
``ensure()`` runs before every command: a pid and socket check, and a restart (one handshake)
when the master has died.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from common import logs
from common.config import ConfigError

# An idle master (no session) exits after this long, so one left behind by a SIGKILLed agent
# goes soon; a live agent restarts it on its next command (one login, ~0.3 s on loopback).
MASTER_IDLE_S = 60
# After the user's own options: ssh keeps the first value it sees for each option.
DEFAULT_OPTIONS = ("BatchMode=yes", "ConnectTimeout=5", "ServerAliveInterval=5", "ServerAliveCountMax=3")
START_TIMEOUT_S = 60.0
# sun_path holds 108 bytes and ssh adds a 17-character suffix while it binds.
MAX_SOCKET_PATH = 80

log = logs.get("ssh")


class SshError(OSError):
    """SSH to a host failed; the message is one line naming the host and the cause."""


@dataclass(frozen=True)
class SshDest:
    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> SshDest:
        """``ssh://[user@]host[:port]`` or ``[user@]host``; ConfigError naming the value otherwise."""
        url = text if text.startswith("ssh://") else f"ssh://{text}"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"{text!r} is not ssh://[user@]host[:port]: {exc}") from None
        if parts.scheme != "ssh" or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise ConfigError(f"{text!r} is not ssh://[user@]host[:port]")
        return cls(parts.hostname, parts.username or None, port)

    def options(self) -> list[str]:
        out = []
        if self.user:
            out += ["-o", f"User={self.user}"]
        if self.port:
            out += ["-o", f"Port={self.port}"]
        return out

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{user}{host}{port}"


def option_args(options: Sequence[str]) -> list[str]:
    """``["IdentityFile=/k", "Port=2222"]`` -> ``["-o", "IdentityFile=/k", "-o", "Port=2222"]``."""
    out: list[str] = []
    for opt in options:
        out += ["-o", opt]
    return out


def control_path(state_dir: Path, dest: SshDest) -> Path:
    """The master's socket: in ``state_dir``, or a private runtime dir if that is too long."""
    key = hashlib.sha1(f"{state_dir.resolve()}|{dest}".encode()).hexdigest()[:16]
    path = state_dir / "ssh" / f"cm-{key}"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/p4bus-{os.getuid()}"
    return Path(runtime) / "p4bus-ssh" / f"cm-{key}"


def private_dir(path: Path) -> None:
    """Create ``path`` with mode 0700, or accept an existing one only if it is a real directory
    (not a link) of this user, tightened to 0700: in a shared place such as /tmp another user
    could have made it first, and whoever can enter it can take over the control socket."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise SshError(
            f"control socket directory {path} is not a directory owned by this user (uid {os.geteuid()}): "
            "remove it, or set XDG_RUNTIME_DIR to a private directory"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def socket_dirs(path: Path) -> list[Path]:
    """The directories of a control socket that p4bus makes: the ``p4bus-<uid>`` fallback under
    /tmp as well when the socket is there (see control_path)."""
    d = path.parent
    return [d.parent, d] if d.parent.name == f"p4bus-{os.getuid()}" else [d]


def pid_alive(pid: int) -> bool:
    """Running (not a zombie): the master is not our child (``-f`` daemonises it), so once killed
    it may wait long to be reaped by init."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True  # no /proc: trust kill()
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"


class ControlMaster:
    """One master connection to ``dest``, its socket under ``state_dir``; the argv of sessions
    and copies over it."""

    def __init__(self, dest: SshDest, options: Sequence[str], state_dir: Path) -> None:
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

    def copy(self, files: Sequence[str], remote_dir: str) -> list[str]:
        """argv of an scp of ``files`` into ``remote_dir`` over the master."""
        host = f"[{self.dest.host}]" if ":" in self.dest.host else self.dest.host
        return ["scp", "-q", *self.args, "-o", "ControlMaster=no", *files, f"{host}:{remote_dir}/"]

    def alive(self) -> bool:
        return self.pid is not None and self.path.exists() and pid_alive(self.pid)

    def ensure(self) -> int:
        """The running master's pid, starting one if needed; SshError if ssh cannot log in."""
        if not self.alive():
            # Before a socket there is trusted: adopted (_check) or bound (_start).
            self.path.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            for d in socket_dirs(self.path):
                private_dir(d)
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

    def _control(self, op: str) -> subprocess.CompletedProcess[str]:
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
