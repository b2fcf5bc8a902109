"""Wheels of p4bus and its dependencies for the host's Python, built (or fetched) here, so the
host needs no internet. The p4bus wheel carries the deploy templates (ops/deploy/) as package data."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

from p4bus.deploy import DeployError
from p4bus.deploy.host import Host


def source_tree() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise DeployError(f"no p4bus source tree at {root} to build wheels from; pass --wheelhouse DIR")
    return root


def given(wheelhouse: Path) -> list[Path]:
    """The wheels of ``--wheelhouse``."""
    wheels = sorted(wheelhouse.glob("*.whl"))
    if not wheels:
        raise DeployError(f"--wheelhouse {wheelhouse} holds no wheels")
    return wheels


def build(out: Path, host: Host) -> list[Path]:
    """Wheels of p4bus and its dependencies for the host's Python (built or fetched here)."""
    local = (sys.version_info[:2], platform.machine())
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(out), str(source_tree())]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise DeployError(f"building wheels failed: {_last(done.stderr)}")
    if local != (host.version[:2], host.machine):
        # Compiled dependencies must match the host's Python and CPU: fetch its wheels instead.
        _retarget(out, host)
    return sorted(out.glob("*.whl"))


def _retarget(out: Path, host: Host) -> None:
    pyver = f"{host.version[0]}{host.version[1]}"
    binary = [w for w in out.glob("*.whl") if not w.name.endswith("-none-any.whl")]
    names = [w.name.split("-")[0].replace("_", "-") for w in binary]
    tags = [f"manylinux_2_{n}_{host.machine}" for n in (28, 27, 26, 24, 17)] + [f"manylinux2014_{host.machine}"]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--only-binary=:all:",
        "--dest",
        str(out),
        "--python-version",
        pyver,
        "--implementation",
        "cp",
        *(a for t in tags for a in ("--platform", t)),
        *names,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise DeployError(
            f"fetching wheels of {', '.join(names)} for Python {pyver} on {host.machine} failed: {_last(done.stderr)}"
        )
    for w in binary:
        w.unlink()


def _last(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"
