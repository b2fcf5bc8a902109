"""`p4bus broker | master | agent`: run one service in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import importlib

import click

from p4bus.cli import Ctx, configure_logging


def _service(name: str, module: str):
    @click.command(name=name, help=f"Run the {name} service in the foreground.")
    @click.pass_obj
    def run(obj: Ctx) -> None:
        cfg = obj.cfg()
        configure_logging(cfg, name)
        importlib.import_module(module).main(cfg)

    return run


COMMANDS = [
    _service("broker", "broker.service"),
    _service("master", "master.service"),
    _service("agent", "agent.service"),
    _service("orchestrator", "master.orchestrator.service"),
]
