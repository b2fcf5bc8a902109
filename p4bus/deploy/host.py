"""The host, over SSH: scripts and copies on one ControlMaster, and what a probe learns of it."""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from common.ssh import ControlMaster, SshDest, SshError
from p4bus.deploy import DeployError

MIN_PYTHON = (3, 11)
q = shlex.quote


class Remote:
    """Scripts and copies on the host over one ControlMaster; every failure is a DeployError."""

    def __init__(self, dest: SshDest, options: list[str], local_dir: Path) -> None:
        self.master = ControlMaster(dest, options, local_dir)

    def __enter__(self) -> Remote:
        try:
            self.master.ensure()
        except SshError as exc:
            raise DeployError(str(exc)) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.master.stop()

    def sh(self, script: str, what: str, stdin: bytes | None = None, timeout: float = 300.0) -> str:
        """Run ``script`` with sh on the host; its stdout, or DeployError with its last error line."""
        argv = self.master.session(f"exec sh -c {q(script)}")
        return self._run(argv, what, stdin, timeout)

    def write(self, path: str, text: str, mode: str, what: str) -> None:
        """Create or replace the file ``path`` (private until its ``mode`` is set)."""
        self.sh(f"umask 077 && cat > {path} && chmod {mode} {path}", what, stdin=text.encode())

    def copy(self, files: list[Path], remote_dir: str) -> None:
        self._run(self.master.copy([str(f) for f in files], remote_dir), f"copying to {remote_dir}", None, 300.0)

    def _run(self, argv: list[str], what: str, stdin: bytes | None, timeout: float) -> str:
        try:
            done = subprocess.run(argv, input=stdin if stdin is not None else b"", capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeployError(f"{what} on {self.master.dest} did not finish within {timeout:.0f}s") from None
        if done.returncode != 0:
            lines = done.stderr.decode(errors="replace").strip().splitlines() or [f"exit {done.returncode}"]
            raise DeployError(f"{what} on {self.master.dest} failed: {lines[-1].strip()}")
        return done.stdout.decode(errors="replace")


@dataclass
class Host:
    """What one probe learned about the host."""

    home: str
    node: str
    systemd: bool
    python: str
    version: tuple[int, ...]
    machine: str
    venv: bool


PROBE = """echo "home=$HOME"; echo "node=$(uname -n)"
command -v systemctl >/dev/null 2>&1 && systemctl --user show-environment >/dev/null 2>&1 && echo systemd=yes
p=$(command -v {python}) || exit 0
echo "python=$p"
"$p" -c 'import sys, platform; print("version=%d.%d.%d" % sys.version_info[:3]); print("machine=" + platform.machine())
import ensurepip, venv; print("venv=yes")' 2>/dev/null || true
"""


def probe(remote: Remote, python: str) -> Host:
    facts = dict(
        line.split("=", 1) for line in remote.sh(PROBE.format(python=q(python)), "probing").splitlines() if "=" in line
    )
    return Host(
        home=facts.get("home", ""),
        node=facts.get("node", "").split(".")[0],
        systemd="systemd" in facts,
        python=facts.get("python", ""),
        machine=facts.get("machine", ""),
        venv="venv" in facts,
        version=tuple(int(x) for x in facts["version"].split(".")) if "version" in facts else (),
    )


def check_python(host: Host, python: str, dest: SshDest) -> None:
    want = ".".join(map(str, MIN_PYTHON))
    if not host.python:
        raise DeployError(
            f"{dest} has no {python} on its PATH; install Python >= {want} there "
            f"(e.g. apt-get install python3 python3-venv) or pass --python"
        )
    if host.version < MIN_PYTHON:
        found = ".".join(map(str, host.version)) or "an unknown version"
        raise DeployError(
            f"{dest} has {python} {found} at {host.python}, p4bus needs >= {want}; install "
            f"python{want} there (e.g. apt-get install python{want} python{want}-venv) and pass --python python{want}"
        )
    if not host.venv:
        raise DeployError(
            f"{python} on {dest} cannot create virtual environments; install its venv module "
            f"(Debian/Ubuntu: apt-get install python{host.version[0]}.{host.version[1]}-venv)"
        )


def abs_dir(remote_dir: str, home: str) -> str:
    """``--remote-dir`` as an absolute path on the host."""
    path = home + remote_dir[1:] if remote_dir == "~" or remote_dir.startswith("~/") else remote_dir
    # Plain paths only: the scripts here and the systemd unit embed it unquoted.
    if not path.startswith("/") or q(path) != path:
        raise DeployError(
            f"--remote-dir {remote_dir!r} must be absolute (or start with ~/) and contain no "
            "spaces or shell metacharacters"
        )
    return path
