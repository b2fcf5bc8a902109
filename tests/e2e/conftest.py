"""Whole jobs: real broker, master(s), orchestrator and agents as processes, p4sim depots."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Collection
from typing import Any

import pytest

from common import protocol as P
from common.config import DEFAULT_ENV_ALLOWLIST
from common.rpc import MasterClient, OrchestratorClient, RequestError
from p4bus.harness.stack import ServiceProc
from p4bus.harness.workspaces import (
    P4SIM_FAULT_ENV,
    SeededWorkspace,
    agent_settings,
    counting_p4,
    seed_workspace,
)
from tests.conftest import Stack, wait_for

TERMINAL = ("DONE", "NOTHING_TO_DO", "FAILED", "CANCELLED")
CORE = ("broker", "master", "orchestrator")


class JobStack:
    """A Stack whose orchestrator knows p4sim workspaces and whose agents run `p4` from a shim."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.tmp = stack.tmp
        # Every p4 execution is logged (port + argv), so tests can prove nothing ran twice.
        self.exec_log = self.tmp / "p4-executions.log"
        self.bin = self.tmp / "bin"
        path, self.real_p4 = counting_p4(self.bin, self.exec_log)
        self.env = {"PATH": path}
        stack.env.update(self.env)
        self.workspaces: dict[str, SeededWorkspace] = {}
        self.procs: dict[str, ServiceProc] = {}
        stack.tree["orchestrator"] = {"workspaces": {}, "reconcile_after_s": 1.0, "lost_after_s": 2.0}
        # Whole jobs load both cores: heartbeats a little slower than the unit-level 0.2 s.
        stack.tree["master"]["heartbeat_s"] = 0.5
        agent = stack.tree["agent"]
        agent["heartbeat_s"] = 0.5
        agent["allowed_executables"] = ["p4", "sh", "sleep"]
        # Fault injection reaches p4sim only through the agent's allowlist: a test setting.
        agent["env_allowlist"] = [*DEFAULT_ENV_ALLOWLIST, *P4SIM_FAULT_ENV]

    @property
    def seeds(self) -> dict[str, dict]:
        """Workspace name -> p4sim's facts (P4PORT, root, source, target, ...)."""
        return {n: w.facts for n, w in self.workspaces.items()}

    def workspace(self, name: str, scenario: str = "clean", password: str | None = None, **extra: Any) -> dict:
        ws = seed_workspace(self.tmp / name, name, scenario, password, **extra)
        self.workspaces[name] = ws
        self.stack.tree["orchestrator"]["workspaces"][name] = ws.conf
        return ws.facts

    def start(self, *services: str, agents: dict[str, list[str]] | None = None) -> None:
        """Start services; agents: agent id -> the workspaces it serves (default: one agent, all)."""
        for svc in services or CORE:
            self.procs[svc] = self.stack.start(svc)
        agents = agents or {"agent-1": list(self.workspaces)}
        for agent_id, names in agents.items():
            self.start_agent(agent_id, names)
        self.wait_ready(len(agents))

    def start_agent(self, agent_id: str, names: list[str], extra_env: dict | None = None) -> ServiceProc:
        settings = {
            "id": agent_id,
            **agent_settings(self.workspaces[n] for n in names),
            "spool_dir": str(self.tmp / "spool" / agent_id),
        }
        p = self.stack.start("agent", name=agent_id, extra={"agent": settings}, env=extra_env)
        self.procs[agent_id] = p
        return p

    def wait_ready(self, n_agents: int) -> None:
        self.stack.wait_ready(agents=n_agents)

    def orch(self) -> OrchestratorClient:
        return OrchestratorClient(self.stack.config().client_orchestrators(), self.stack.security(), timeout=5.0)

    def masters(self) -> MasterClient:
        return MasterClient([self.stack.endpoint("master_clients")], self.stack.security(), timeout=5.0)

    def submit(self, name: str, **kw: Any) -> str:
        info = self.seeds[name]
        with self.orch() as oc:
            return oc.submit(workspace=name, source=info["source"], target=info["target"], **kw).job_id

    def wait_state(self, job_id: str, states: Collection[str] = TERMINAL, timeout: float = 60.0) -> P.JobView:
        with self.orch() as oc:

            def reached() -> P.JobView | None:
                try:
                    v = oc.job(job_id)
                except RequestError:
                    return None  # the orchestrator is restarting
                return v if v.state in states else None

            return wait_for(reached, timeout, f"{job_id} to reach {states}", interval=0.1)

    def p4(self, name: str, *args: str, stdin: str | None = None) -> str:
        """Run p4sim as a person would in the workspace; returns stdout."""
        ws = self.workspaces[name]
        env = {**os.environ, **self.env, **ws.p4_env()}
        done = subprocess.run(
            ["p4", *args], cwd=ws.root, env=env, capture_output=True, text=True, timeout=30, input=stdin
        )
        return done.stdout + done.stderr

    def executions(self, name: str) -> list[str]:
        """argv (after `p4`) of every p4 run against workspace `name`'s server, in order."""
        port = self.seeds[name]["P4PORT"]
        if not self.exec_log.exists():
            return []
        return [line[len(port) + 1 :] for line in self.exec_log.read_text().splitlines() if line.startswith(port + " ")]

    def restart(self, name: str, extra: dict | None = None) -> ServiceProc:
        """SIGKILL a service (or agent id) and start it again with the same settings."""
        self.procs[name] = self.stack.restart(name, extra)
        return self.procs[name]

    def kill_and_start(self, name: str, extra: dict | None = None) -> ServiceProc:
        """Start a service (or agent id) again after the test killed it; as restart()."""
        return self.restart(name, extra)


@pytest.fixture
def jobs(stack: Stack) -> JobStack:
    return JobStack(stack)
