"""`p4bus broker | master | agent | orchestrator`: run one service in the foreground until SIGINT/SIGTERM.

Each service loads its key pair and the keyring at start-up (common/auth.py) and refuses to
start without them, unless ``insecure = true``, which it names in its log."""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

import click

from common import lifecycle, logs
from common.config import Config
from common.zmqutil import BindError
from p4bus.cli import Ctx, UserError, configure_logging

# The bus endpoints each service binds; the agent binds none (metrics: common/metrics.py).
BINDS = {
    "broker": ("broker_xsub", "broker_xpub", "broker_replay"),
    "master": ("master_agents", "master_clients"),
    "orchestrator": ("orchestrator_api",),
    "agent": (),
}


def exposed_endpoints(cfg: Config, service: str) -> list[str]:
    """Endpoints of ``service`` that would listen beyond loopback."""
    out = []
    for name in BINDS[service]:
        host = urlsplit(cfg.endpoint(name).replace("tcp://", "http://", 1)).hostname or ""
        if not (host == "localhost" or host.startswith("127.") or host == "::1"):
            out.append(cfg.endpoint(name))
    return out


# Per-service flags; each dest is a config path (section__field), so a flag overrides the file.
FLAGS = {
    "agent": [
        click.option(
            "--exec-via",
            "agent__exec_via",
            metavar="ssh://[USER@]HOST[:PORT]",
            default=None,
            help="Run commands on that host over one reused SSH connection (agent.exec_via).",
        ),
        click.option(
            "--ssh-option",
            "agent__ssh_options",
            metavar="KEY=VALUE",
            multiple=True,
            help="An ssh -o option for --exec-via, repeatable (agent.ssh_options).",
        ),
    ],
}


def _service(name: str, module: str) -> click.Command:
    @click.command(name=name, help=f"Run the {name} service in the foreground.")
    @click.pass_obj
    def run(obj: Ctx, **flags: object) -> None:
        cfg = obj.cfg(**flags)
        lifecycle.private_state(cfg.state_path)
        configure_logging(cfg, name)
        exposed = exposed_endpoints(cfg, name)
        if exposed and cfg.insecure:
            # Without insecure, CURVE guards every bind (the service refuses to start without
            # keys); with it, say loudly who can reach what.
            logs.get(name).warning(
                "insecure.exposed",
                endpoints=exposed,
                message="insecure = true and listening beyond loopback: anyone on the network may use these",
            )
        try:
            importlib.import_module(module).main(cfg)
        except BindError as exc:
            raise UserError(str(exc)) from None

    for flag in FLAGS.get(name, []):
        run = flag(run)
    return run


COMMANDS = [
    _service(name, module)
    for name, module in (
        ("broker", "broker.service"),
        ("master", "master.service"),
        ("agent", "agent.service"),
        ("orchestrator", "orchestrator.service"),
    )
]
