"""A throwaway sshd on a loopback port: the baseline every p4bus number is compared with.

The system p4bus replaces ran one `ssh host cmd` per p4 command, so the benches run the same
commands through a real OpenSSH server on this machine. Everything (host key, client key,
authorized_keys, pid file, ControlMaster socket) lives in a temp directory removed at exit.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from common.ssh import option_args
from common.zmqutil import free_port

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
READY_TIMEOUT_S = 10.0


class SshUnavailable(RuntimeError):
    """Why the ssh baseline rows are missing; printed instead of them."""


def find_sshd() -> str | None:
    return shutil.which("sshd") or next((p for p in SSHD_CANDIDATES if os.access(p, os.X_OK)), None)


def install_openssh() -> None:
    """One attempt at `apt-get install openssh-server` (only when asked with --install-ssh)."""
    if not shutil.which("apt-get"):
        raise SshUnavailable("sshd is not installed and apt-get is not available to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "openssh-server", "openssh-client"]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SshUnavailable(f"`{' '.join(argv)}` failed: {(done.stderr or done.stdout).strip()[-300:]}")


@dataclass
class SshTarget:
    """How to reach the throwaway sshd: client argv prefixes, fresh or multiplexed."""

    key: Path
    port: int
    control_path: Path
    user: str

    def options(self) -> list[str]:
        """The client settings as ssh -o values (p4bus agent.ssh_options, deploy-agent --ssh-option)."""
        return [
            f"IdentityFile={self.key}",
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "LogLevel=ERROR",
        ]

    def url(self) -> str:
        """The p4bus agent --exec-via destination."""
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def _base(self) -> list[str]:
        return ["ssh", "-p", str(self.port), *option_args(self.options())]

    def fresh(self) -> list[str]:
        """A new TCP connection, key exchange and authentication per command."""
        return self._base() + ["-o", "ControlMaster=no", "-o", "ControlPath=none", f"{self.user}@127.0.0.1"]

    def multiplexed(self) -> list[str]:
        """Commands as new channels on one persistent master connection (ControlMaster)."""
        return self._base() + [
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={self.control_path}",
            "-o",
            "ControlPersist=120",
            f"{self.user}@127.0.0.1",
        ]


class Sshd:
    """`with Sshd(install=...) as target:` runs sshd -D in the foreground as our child."""

    def __init__(self, install: bool = False) -> None:
        self.install = install
        self.tmp: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.target: SshTarget | None = None

    def __enter__(self) -> SshTarget:
        sshd = find_sshd()
        if sshd is None:
            if not self.install:
                raise SshUnavailable(
                    "sshd is not installed (run the bench with --install-ssh to apt-get "
                    "install openssh-server, or install it yourself)"
                )
            install_openssh()
            sshd = find_sshd()
            if sshd is None:
                raise SshUnavailable("openssh-server installed but no sshd binary was found")
        try:
            return self._start(sshd)
        except BaseException:
            self.__exit__()
            raise

    def _start(self, sshd: str) -> SshTarget:
        self.tmp = Path(tempfile.mkdtemp(prefix="p4bus-sshd-"))
        os.chmod(self.tmp, 0o700)
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
        subprocess.run(keygen + ["-f", str(self.tmp / "host_key")], check=True)
        subprocess.run(keygen + ["-f", str(self.tmp / "client_key")], check=True)
        shutil.copy(self.tmp / "client_key.pub", self.tmp / "authorized_keys")
        # sshd refuses to start without its privilege-separation directory.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        # The remote command runs under the account's shell, which sources ~/.bashrc; here that
        # file runs `pyenv init` (~350 ms), which would be charged to ssh. An empty HOME keeps
        # the baseline about ssh itself.
        (self.tmp / "home").mkdir()
        port = free_port()
        conf = self.tmp / "sshd_config"
        conf.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {port}",
                    f"HostKey {self.tmp / 'host_key'}",
                    f"AuthorizedKeysFile {self.tmp / 'authorized_keys'}",
                    f"PidFile {self.tmp / 'sshd.pid'}",
                    "StrictModes no",
                    "UsePAM no",
                    "PasswordAuthentication no",
                    "PermitRootLogin prohibit-password",
                    f"SetEnv HOME={self.tmp / 'home'}",
                    "Subsystem sftp internal-sftp",
                    "LogLevel INFO",
                    "MaxStartups 100:30:200",
                    "MaxSessions 100",
                    "",
                ]
            )
        )
        self.proc = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(conf)],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_listening()
        self.target = SshTarget(self.tmp / "client_key", port, self.tmp / "cm.sock", getpass.getuser())
        probe = subprocess.run(self.target.fresh() + ["true"], capture_output=True, text=True, timeout=30)
        if probe.returncode != 0:
            raise SshUnavailable(f"sshd runs but `ssh ... true` failed: {probe.stderr.strip()[-300:]}")
        return self.target

    def _wait_listening(self) -> None:
        """Block until sshd logs that it listens; keep draining its log so it never blocks."""
        assert self.proc is not None and self.proc.stderr is not None
        ready = threading.Event()
        lines: list[str] = []

        def drain(stream: IO[bytes]) -> None:
            for raw in stream:
                if not ready.is_set():
                    lines.append(raw.decode(errors="replace").strip())
                    if "Server listening" in lines[-1]:
                        ready.set()
            ready.set()  # EOF: sshd died; the caller looks at the exit code

        threading.Thread(target=drain, args=(self.proc.stderr,), daemon=True).start()
        if not ready.wait(READY_TIMEOUT_S) or self.proc.poll() is not None:
            raise SshUnavailable("sshd did not start: " + " | ".join(lines[-5:]))

    def __exit__(self, *exc: object) -> None:
        if self.target is not None and self.target.control_path.exists():
            mux = self.target.multiplexed()
            subprocess.run(mux[:-1] + ["-O", "exit", mux[-1]], capture_output=True)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
