"""`p4bus agents [--json]`: the agents every configured master sees."""

from __future__ import annotations

import json
import time

import click
import msgspec

from common.rpc import MasterClient, RequestError
from p4bus.cli import EXIT_UNREACHABLE, PING_TIMEOUT_S, Ctx, UserError, request_failed
from p4bus.render import agents_table, console, print_grid


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per agent per master.")
@click.pass_obj
def agents(obj: Ctx, as_json: bool) -> None:
    """List connected agents: pools, slots, workspaces, running commands, last heartbeat."""
    cfg = obj.cfg()
    rows = []
    errors: list[UserError] = []
    answered = 0
    for endpoint in cfg.client_masters():
        with MasterClient([endpoint], obj.security(), timeout=3.0) as mc:
            try:
                master = mc.ping(timeout=PING_TIMEOUT_S).source
                rows += [(master, a) for a in mc.agents()]
                answered += 1
            except RequestError as exc:
                errors.append(request_failed("master", exc))
    if errors and not answered:
        raise UserError("; ".join(str(e) for e in errors), errors[0].exit_code)
    if as_json:
        for master, a in rows:
            click.echo(json.dumps({"master": master, **msgspec.to_builtins(a)}))
    elif rows:
        print_grid(console(), agents_table(rows, time.time()))
    else:
        click.echo(f"no agent is connected to {'the master' if answered == 1 else f'any of the {answered} masters'}")
    for e in errors:
        click.echo(f"p4bus: {e}", err=True)
    if errors:
        raise SystemExit(EXIT_UNREACHABLE)


COMMANDS = [agents]
