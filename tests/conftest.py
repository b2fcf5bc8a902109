"""Shared fixtures: a fresh config on free loopback ports, and real service processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from common.zmqutil import free_port_base
from p4bus.harness import stack as harness
from p4bus.harness.stack import wait_for

if TYPE_CHECKING:
    from bench.sshd import SshTarget

REPO = Path(__file__).resolve().parent.parent

__all__ = ["REPO", "Stack", "wait_for"]


class Stack(harness.Stack):
    """The harness's stack with test settings; everything lives under tmp_path.

    Services run from the repository root, so `python -m p4bus` is this checkout's.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.port_base = free_port_base(6)
        tree = {
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
        super().__init__(tree, tmp_path, log_dir=tmp_path / "logs", cwd=REPO)

    def stop_all(self) -> None:
        self.stop(grace=0)


@pytest.fixture(scope="session")
def sshd() -> Iterator[SshTarget]:
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
