"""Whole jobs: real broker, master(s), orchestrator and agents as processes, p4sim depots."""

from __future__ import annotations

import os

import pytest

from common import protocol as P
from common.rpc import MasterClient, OrchestratorClient, RequestError
from p4sim.seed import seed
from p4sim.tools import write_shim
from tests.conftest import Stack, wait_for

TERMINAL = ("DONE", "NOTHING_TO_DO", "FAILED", "CANCELLED")


class JobStack:
    """A Stack whose orchestrator knows p4sim workspaces and whose agents run `p4` from a shim."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.tmp = stack.tmp
        real = write_shim(self.tmp / "p4sim-bin")
        # Every p4 execution is logged (port + argv), so tests can prove nothing ran twice.
        self.exec_log = self.tmp / "p4-executions.log"
        self.bin = self.tmp / "bin"
        self.bin.mkdir()
        wrapper = self.bin / "p4"
        wrapper.write_text(f'#!/bin/sh\necho "$P4PORT $*" >> {self.exec_log}\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
        self.env = {"PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}"}
        self.seeds: dict[str, dict] = {}
        self.procs: dict[str, object] = {}
        self.agent_workspaces: dict[str, list[str]] = {}
        stack.tree["orchestrator"] = {"workspaces": {}, "reconcile_after_s": 1.0, "lost_after_s": 2.0}
        # Whole jobs load both cores: heartbeats a little slower than the unit-level 0.2 s.
        stack.tree["master"]["heartbeat_s"] = 0.5
        stack.tree["agent"]["heartbeat_s"] = 0.5
        stack.tree["agent"]["allowed_executables"] = ["p4", "sh", "sleep"]

    def workspace(self, name: str, scenario: str = "clean", password: str | None = None, **extra) -> dict:
        info = seed(self.tmp / name, scenario, password=password)
        self.seeds[name] = info
        self.stack.tree["orchestrator"]["workspaces"][name] = {
            "p4port": info["P4PORT"],
            "p4user": info["P4USER"],
            "p4client": info["P4CLIENT"],
            "root": info["root"],
            **extra,
        }
        return info

    def start(self, *services: str, agents: dict[str, list[str]] | None = None) -> None:
        """Start services; agents: agent id -> the workspaces it serves (default: one agent, all)."""
        for svc in services or ("broker", "master", "orchestrator"):
            self.procs[svc] = self.stack.start(svc, env=self.env)
        for agent_id, names in (agents or {"agent-1": list(self.seeds)}).items():
            self.start_agent(agent_id, names)
        self.wait_ready(len(agents or {"a": 1}))

    def start_agent(self, agent_id: str, names: list[str], extra_env: dict | None = None):
        self.agent_workspaces[agent_id] = names
        extra = {
            "agent": {
                "id": agent_id,
                "workspaces": {n: self.seeds[n]["root"] for n in names},
                "workspace_roots": [str(self.tmp / n) for n in names],
                "spool_dir": str(self.tmp / "spool" / agent_id),
            }
        }
        p = self.stack.start("agent", extra=extra, env={**self.env, **(extra_env or {})})
        self.procs[agent_id] = p
        return p

    def wait_ready(self, n_agents: int) -> None:
        with MasterClient([self.stack.endpoint("master_clients")], timeout=0.5) as mc:
            wait_for(lambda: _try(lambda: len(mc.agents()) >= n_agents), 20, "agents to register")
        with self.orch() as oc:
            wait_for(lambda: _try(lambda: oc.ping(0.5)), 20, "orchestrator to answer")

    def orch(self) -> OrchestratorClient:
        return OrchestratorClient([self.stack.endpoint("orchestrator_api")], timeout=5.0)

    def masters(self) -> MasterClient:
        return MasterClient([self.stack.endpoint("master_clients")], timeout=5.0)

    def submit(self, name: str, **kw) -> str:
        info = self.seeds[name]
        with self.orch() as oc:
            return oc.submit(workspace=name, source=info["source"], target=info["target"], **kw).job_id

    def wait_state(self, job_id: str, states=TERMINAL, timeout: float = 60.0) -> P.JobView:
        with self.orch() as oc:

            def reached():
                try:
                    v = oc.job(job_id)
                except RequestError:
                    return None  # the orchestrator is restarting
                return v if v.state in states else None

            return wait_for(reached, timeout, f"{job_id} to reach {states}", interval=0.1)

    def p4(self, name: str, *args: str) -> str:
        """Run p4sim as a person would in the workspace; returns stdout."""
        import subprocess

        info = self.seeds[name]
        env = {
            **os.environ,
            **self.env,
            "P4PORT": info["P4PORT"],
            "P4USER": info["P4USER"],
            "P4CLIENT": info["P4CLIENT"],
            "PWD": info["root"],
        }
        done = subprocess.run(["p4", *args], cwd=info["root"], env=env, capture_output=True, text=True, timeout=30)
        return done.stdout + done.stderr

    def executions(self, name: str) -> list[str]:
        """argv (after `p4`) of every p4 run against workspace `name`'s server, in order."""
        port = self.seeds[name]["P4PORT"]
        if not self.exec_log.exists():
            return []
        return [line[len(port) + 1 :] for line in self.exec_log.read_text().splitlines() if line.startswith(port + " ")]

    def restart(self, name: str, extra: dict | None = None):
        """SIGKILL a service (or agent id) and start it again with the same settings."""
        import signal

        p = self.procs[name]
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
        return self.kill_and_start(name, extra)

    def kill_and_start(self, name: str, extra: dict | None = None):
        if name in ("broker", "master", "orchestrator"):
            self.procs[name] = self.stack.start(name, env=self.env, extra=extra)
        else:
            self.start_agent(name, self.agent_workspaces[name])
        return self.procs[name]


def _try(fn) -> bool:
    try:
        return bool(fn())
    except RequestError:
        return False


@pytest.fixture
def jobs(stack) -> JobStack:
    return JobStack(stack)
