"""`p4bus deploy-agent HOST ...` and `p4bus deploy-agent --remove HOST` (the p4bus/deploy/ package)."""

from __future__ import annotations

from pathlib import Path

import click

from common import logs
from common.config import ConfigError
from common.ssh import SshDest
from p4bus.cli import Ctx, UserError
from p4bus.deploy import DEFAULT_REMOTE_DIR, DeployError, Plan, flow, install, registration


@click.command(name="deploy-agent")
@click.argument("host", metavar="[USER@]HOST")
@click.option(
    "--master",
    "masters",
    multiple=True,
    metavar="ENDPOINT",
    help="A master's agent endpoint as the host reaches it (tcp://HOST:9090), repeatable.",
)
@click.option(
    "--broker", metavar="ENDPOINT", help="The broker's XSUB endpoint as the host reaches it (tcp://HOST:9092)."
)
@click.option(
    "--master-clients",
    metavar="ENDPOINT",
    help="The master's client endpoint as this machine reaches it (default: the first --master's port + 1).",
)
@click.option(
    "--workspace-root", "roots", multiple=True, metavar="DIR", help="A workspace root on the host, repeatable."
)
@click.option(
    "--workspace",
    "workspaces",
    multiple=True,
    metavar="NAME=ROOT[,p4port=P,p4user=U,p4client=C,tickets=FILE]",
    help="A workspace the agent holds, with the p4 settings every command in it gets; repeatable.",
)
@click.option("--pool", "pools", multiple=True, metavar="P", help="A pool of the agent, repeatable (default: default).")
@click.option("--slots", type=int, default=4, show_default=True, help="Commands the agent runs at once.")
@click.option(
    "--allow",
    "allowed",
    multiple=True,
    metavar="EXE",
    help="An executable the agent may run, repeatable (default: p4).",
)
@click.option("--agent-id", default="", help="The agent's id (default: the host's short name).")
@click.option("--remote-dir", default=DEFAULT_REMOTE_DIR, show_default=True, help="Where everything goes on the host.")
@click.option("--python", default="python3", show_default=True, help="The host's Python (>= 3.11, with venv).")
@click.option(
    "--ssh-option",
    "ssh_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="An ssh -o option (also used by scp), repeatable; ~/.ssh/config applies as well.",
)
@click.option(
    "--wheelhouse",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Install these wheels instead of building p4bus and its dependencies here.",
)
@click.option(
    "--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for the agent to register."
)
@click.option("--remove", is_flag=True, help="Stop the agent on HOST and delete its remote dir.")
@click.pass_obj
def deploy_agent(
    obj: Ctx,
    host: str,
    masters: tuple[str, ...],
    broker: str | None,
    master_clients: str | None,
    roots: tuple[str, ...],
    workspaces: tuple[str, ...],
    pools: tuple[str, ...],
    slots: int,
    allowed: tuple[str, ...],
    agent_id: str,
    remote_dir: str,
    python: str,
    ssh_options: tuple[str, ...],
    wheelhouse: Path | None,
    timeout: float,
    remove: bool,
) -> None:
    """Install, upgrade (re-run) or remove a p4bus agent on HOST over SSH; prints the agent id."""

    def say(line: str) -> None:
        click.echo(f"deploy-agent: {line}", err=True)

    # Only warnings, and on stderr: stdout carries nothing but the agent id.
    logs.setup("warning", service="deploy-agent")
    try:
        dest = SshDest.parse(host)
        if remove:
            clients = master_clients or (registration.clients_endpoint(masters[0]) if masters else None)
            flow.remove(dest, list(ssh_options), remote_dir, clients, obj.security(), say)
            return
        missing = [
            flag
            for flag, v in (("--master", masters), ("--broker", broker), ("--workspace-root", roots or workspaces))
            if not v
        ]
        if missing:
            raise UserError(f"deploy-agent needs {', '.join(missing)}", 2)
        plan = Plan(
            dest=dest,
            masters=list(masters),
            broker=broker or "",
            workspace_roots=list(roots),
            workspaces=dict(install.workspace_table(w) for w in workspaces),
            master_clients=master_clients or "",
            pools=list(pools) or ["default"],
            slots=slots,
            agent_id=agent_id,
            allowed_executables=list(allowed) or ["p4"],
            ssh_options=list(ssh_options),
            remote_dir=remote_dir,
            python=python,
            wheelhouse=wheelhouse,
            register_timeout=timeout,
        )
        click.echo(flow.deploy(plan, obj.security(), say))
    except (DeployError, ConfigError) as exc:
        raise UserError(str(exc)) from None


COMMANDS = [deploy_agent]
