"""The agent's files on the host: the remote dir (0700), its wheels, a venv with p4bus installed
from them (no index: the host needs no internet), and agent.toml (0600). Its keys are
agent_keys.py's."""

from __future__ import annotations

import shlex
from pathlib import Path

import msgspec
import tomli_w

from common.config import AgentWorkspace
from p4bus.deploy import DeployError, Plan
from p4bus.deploy.host import Host, Remote


def agent_toml(plan: Plan, agent_id: str, remote_dir: str, insecure: bool) -> str:
    """The agent's settings; its key pair and keyring live in ``state/keys`` (the defaults)."""
    agent: dict[str, object] = {
        "id": agent_id,
        "masters": plan.masters,
        "broker": plan.broker,
        "pools": plan.pools,
        "slots": plan.slots,
        "workspace_roots": plan.workspace_roots,
        "allowed_executables": plan.allowed_executables,
        # A re-run of deploy-agent (an upgrade) restarts the agent: its commands live on.
        "on_stop": "detach",
    }
    if plan.workspaces:
        agent["workspaces"] = plan.workspaces
    tree = {"state_dir": f"{remote_dir}/state", "insecure": insecure, "agent": agent}
    return "# Written by p4bus deploy-agent; re-running it overwrites this file.\n" + tomli_w.dumps(tree)


def workspace_table(text: str) -> tuple[str, dict[str, str]]:
    """``NAME=ROOT[,p4port=P][,p4user=U][,p4client=C][,tickets=FILE][,trust=FILE]`` (the value of
    `deploy-agent --workspace`) as (NAME, its [agent.workspaces.NAME] table)."""
    name, sep, rest = text.partition("=")
    root, *pairs = rest.split(",")
    try:
        if not (name and sep and root) or any("=" not in p for p in pairs):
            raise ValueError("expected NAME=ROOT[,p4port=P,p4user=U,p4client=C,tickets=FILE,trust=FILE]")
        table = {"root": root, **dict(p.split("=", 1) for p in pairs)}
        msgspec.convert(table, AgentWorkspace)
    except (ValueError, msgspec.ValidationError) as exc:
        raise DeployError(f"--workspace {text!r}: {exc}") from None
    return name, table


def prepare(remote: Remote, rdir: str) -> None:
    remote.sh(f"mkdir -p {rdir} && chmod 700 {rdir}", "creating the remote dir")


def install(remote: Remote, host: Host, rdir: str, wheels: list[Path], config: str) -> None:
    """Replace the wheels, install p4bus from them (the venv is kept across upgrades), write the config."""
    remote.sh(f"rm -rf {rdir}/wheels && mkdir {rdir}/wheels", "clearing the old wheels")
    remote.copy(wheels, f"{rdir}/wheels")
    remote.sh(
        f"{{ [ -x {rdir}/venv/bin/python ] || {shlex.quote(host.python)} -m venv {rdir}/venv; }} && "
        f"{rdir}/venv/bin/python -m pip install -q --no-index --find-links {rdir}/wheels --force-reinstall p4bus",
        "installing p4bus",
    )
    remote.write(f"{rdir}/agent.toml", config, "600", "writing the agent config")
