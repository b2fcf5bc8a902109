"""`p4bus agents [--json]`: the agents every configured master sees."""

from __future__ import annotations

import json
import time

import click
import msgspec

from common.rpc import MasterClient, RequestError
from p4bus.cli import Ctx, UserError
from p4bus.render import agents_table, console


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per agent per master.")
@click.pass_obj
def agents(obj: Ctx, as_json: bool) -> None:
    """List connected agents: pools, slots, workspaces, running commands, last heartbeat."""
    cfg = obj.cfg()
    rows = []
    errors = []
    for endpoint in cfg.client_masters():
        with MasterClient([endpoint], obj.security(), timeout=3.0) as mc:
            try:
                master = mc.ping().source
                rows += [(master, a) for a in mc.agents()]
            except RequestError as exc:
                errors.append(f"{endpoint}: {exc.message}")
    if errors and not rows:
        raise UserError("; ".join(errors))
    if as_json:
        for master, a in rows:
            click.echo(json.dumps({"master": master, **msgspec.to_builtins(a)}))
        return
    console().print(agents_table(rows, time.time()))
    for e in errors:
        click.echo(f"p4bus: {e}", err=True)


COMMANDS = [agents]
