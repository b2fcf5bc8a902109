"""Hosts as network namespaces (p4bus/harness/netns.py): the bus host runs broker, master and
orchestrator on its own address, the agent host runs the agent, the attacker host runs nothing
of ours. The test drives the stack as an operator on the bus host would: with the `p4bus` CLI
run there. The machine's own namespace has no route to these addresses, so nothing the test
process does could reach the services by accident.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest

from common import protocol as P
from p4bus.harness import netns
from tests.conftest import REPO, Stack, wait_for
from tests.e2e.conftest import CORE, TERMINAL, JobStack

HOSTS = ("bus", "agent", "attacker")
# An agent cut off for less than this keeps its commands (they are not LOST and run again):
# well above the partitions the tests make.
LOST_AFTER_S = 60.0


@pytest.fixture(scope="session", autouse=True)
def namespaces_possible() -> None:
    reason = netns.unavailable()
    if reason:
        pytest.skip(f"network-namespace tests skipped: {reason}")
    netns.sweep_stale()


@pytest.fixture
def net() -> Iterator[netns.Network]:
    with netns.Network(HOSTS) as n:
        yield n


class NetJobs(JobStack):
    """A JobStack spread over the namespaces: bus services bound to the bus host's address, one
    agent per ``start`` on the agent host, and an operator's CLI on the bus host."""

    def __init__(self, stack: Stack, net: netns.Network) -> None:
        super().__init__(stack)
        self.net = net
        # CURVE as everywhere: the harness makes the keys (an agent's as it starts) and every
        # process reads them from the shared state directory.
        stack.tree["host"] = net["bus"].address
        stack.tree["orchestrator"]["lost_after_s"] = LOST_AFTER_S
        stack.placement.update({svc: net["bus"].prefix() for svc in CORE})
        stack.placement["agent"] = net["agent"].prefix()

    def cli(self, *args: str, host: str = "bus", timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        """`p4bus ARGS` with the stack's config, run on ``host``."""
        config = str(self.stack.config_file())
        return self.net.run(host, sys.executable, "-m", "p4bus", "--config", config, *args, timeout=timeout, cwd=REPO)

    def listed_agents(self) -> list[dict[str, Any]]:
        """What the master lists now (nothing while it does not answer)."""
        done = self.cli("agents", "--json", timeout=30)
        return [json.loads(line) for line in done.stdout.splitlines()] if done.returncode == 0 else []

    def wait_ready(self, n_agents: int) -> None:
        def ready() -> bool:
            self.stack.check_alive()
            return len(self.listed_agents()) >= n_agents and self.cli("status", timeout=30).returncode == 0

        wait_for(ready, 60, f"{n_agents} agent(s) listed and the orchestrator answering", interval=0.2)

    def submit(self, name: str, **kw: Any) -> str:
        info = self.seeds[name]
        done = self.cli("submit", "--workspace", name, "--source", info["source"], "--target", info["target"])
        assert done.returncode == 0, done.stderr
        return done.stdout.split()[0]

    def view(self, job_id: str) -> P.JobView | None:
        done = self.cli("status", job_id, "--json", timeout=30)
        return msgspec.json.decode(done.stdout, type=P.JobView) if done.returncode == 0 else None

    def wait_state(self, job_id: str, states: Collection[str] = TERMINAL, timeout: float = 120.0) -> P.JobView:
        def reached() -> P.JobView | None:
            v = self.view(job_id)
            return v if v is not None and v.state in states else None

        return wait_for(reached, timeout, f"{job_id} to reach {states}", interval=0.3)

    def spool(self, run: P.StageRun, stream: str) -> str:
        path = self.tmp / "spool" / run.agent / run.cmd_id / stream
        # Made at the first output, or by the output thread just after CmdDone.
        return path.read_text() if path.exists() else ""


@contextmanager
def spread_over_hosts(tmp: Path) -> Iterator[NetJobs]:
    """A fresh network and a NetJobs on it under ``tmp``; the services stop before the
    namespaces go, however the body ends."""
    with netns.Network(HOSTS) as net:
        stack = Stack(tmp)
        try:
            yield NetJobs(stack, net)
        finally:
            stack.stop_all()


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[NetJobs]:
    with spread_over_hosts(tmp_path) as h:
        yield h
