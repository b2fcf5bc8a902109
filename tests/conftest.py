"""Shared fixtures: a fresh config on free loopback ports, and real service processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from common import config as cfgmod
from common.zmqutil import free_port_base

REPO = Path(__file__).resolve().parent.parent


def write_toml(path: Path, tree: dict) -> Path:
    """Minimal TOML writer for test configs (strings, numbers, bools, lists, nested tables)."""

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f'"{k}" = {val(x)}' for k, x in v.items()) + "}"
        raise TypeError(v)

    lines: list[str] = []

    def table(prefix: str, t: dict) -> None:
        scalars = {
            k: v
            for k, v in t.items()
            if not isinstance(v, dict)
            or (k in ("labels", "env", "workspaces") and all(not isinstance(x, dict) for x in v.values()))
        }
        if prefix:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {val(v)}")
        for k, v in t.items():
            if k not in scalars:
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", tree)
    path.write_text("\n".join(lines) + "\n")
    return path


class Stack:
    """Config tree + processes for one test; everything lives under tmp_path."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.port_base = free_port_base(6)
        self.tree: dict = {
            "state_dir": str(tmp_path / "state"),
            "port_base": self.port_base,
            "master": {"heartbeat_s": 0.2},
            "agent": {
                "heartbeat_s": 0.2,
                "allowed_executables": ["*"],
                "workspace_roots": [str(tmp_path)],
                "kill_grace_s": 1.0,
            },
        }
        self.procs: list[subprocess.Popen] = []
        self._n = 0

    def config_file(self, extra: dict | None = None) -> Path:
        self._n += 1
        tree = _deep_merge(self.tree, extra or {})
        return write_toml(self.tmp / f"p4bus-{self._n}.toml", tree)

    def config(self, extra: dict | None = None) -> cfgmod.Config:
        return cfgmod.load(self.config_file(extra), environ={})

    def start(self, *args: str, extra: dict | None = None, env: dict | None = None) -> subprocess.Popen:
        """Start `p4bus <args>` with this stack's config; output goes to a log file."""
        cfg = self.config_file(extra)
        log = open(self.tmp / f"{args[0]}-{self._n}.log", "wb")
        penv = {k: v for k, v in os.environ.items() if not k.startswith("P4BUS_")}
        penv.update(env or {})
        p = subprocess.Popen(
            [sys.executable, "-m", "p4bus", "--config", str(cfg), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=penv,
            cwd=str(REPO),
            start_new_session=True,
        )
        p.log_path = log.name  # type: ignore[attr-defined]
        p.service = args[0]  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def proc(self, service: str) -> subprocess.Popen:
        """The most recently started process of a service."""
        return [p for p in self.procs if p.service == service][-1]  # type: ignore[attr-defined]

    def endpoint(self, name: str) -> str:
        return self.config().endpoint(name)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="session")
def sshd():
    """A throwaway sshd on a loopback port (bench/sshd.py), shared by the whole session."""
    from bench.sshd import Sshd, find_sshd

    if find_sshd() is None:
        pytest.skip("sshd is not installed (apt-get install openssh-server; .ci/run does)")
    with Sshd() as target:
        yield target


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    yield s
    s.stop_all()


def wait_for(pred: Callable[[], object], timeout: float = 10.0, what: str = "condition", interval: float = 0.02):
    """Poll a predicate that asks a real owner (a socket, a file); fail with a clear message."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
