"""`p4bus template list|show|add|remove`: saved job presets, kept by the orchestrator."""

from __future__ import annotations

import click
import msgspec

from common import protocol as P
from p4bus.cli import EXIT_USAGE, Ctx, UserError
from p4bus.commands.jobs import _call
from p4bus.render import Grid, print_items


def what(t: P.Template) -> str:
    """What a template integrates, as a person reads it."""
    if t.branch_spec:
        return f"branch spec {t.branch_spec}"
    return f"{t.source or '?'} -> {t.target or '?'}"


def templates_table(templates: list[P.Template]) -> Grid:
    grid = Grid(["template", "integrates", "workspace", "runs on", "description"], keep=(0, 1), wrap=4)
    for t in templates:
        where = f"agent {t.agent}" if t.agent else f"pool {t.pool}" if t.pool else "-"
        grid.add(t.name, what(t), t.workspace or "(the only one)", where, t.desc)
    return grid


@click.group()
def template() -> None:
    """Saved job presets: `p4bus submit --template NAME` runs one, schedules run them by themselves."""


@template.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def list_(obj: Ctx, as_json: bool) -> None:
    """Every template."""
    templates = _call(obj, lambda oc: oc.templates())
    print_items(
        templates,
        as_json,
        lambda: templates_table(templates),
        "no templates (add one with `p4bus template add NAME --source ... --target ...`)",
    )


@template.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def show(obj: Ctx, name: str, as_json: bool) -> None:
    """One template's parameters."""
    t = _call(obj, lambda oc: oc.template(name))
    if as_json:
        click.echo(msgspec.json.encode(t).decode())
        return
    for field, value in msgspec.structs.asdict(t).items():
        if value not in (None, ""):
            click.echo(f"{field:12} {value}")


@template.command()
@click.argument("name")
@click.option("--source", help="Depot path to integrate from, e.g. //depot/dev/...")
@click.option("--target", help="Depot path to integrate into, e.g. //depot/main/...")
@click.option("--branch-spec", help="Integrate through this branch spec instead of --source/--target.")
@click.option("--workspace", help="Configured workspace to run in (default: the only one).")
@click.option("--agent", help="Run on this agent.")
@click.option("--pool", help="Run on an agent of this pool.")
@click.option("--desc", default="", help="Description of the pending change.")
@click.option("--replace", is_flag=True, help="Replace a template of that name.")
@click.pass_obj
def add(
    obj: Ctx,
    name: str,
    source: str | None,
    target: str | None,
    branch_spec: str | None,
    workspace: str | None,
    agent: str | None,
    pool: str | None,
    desc: str,
    replace: bool,
) -> None:
    """Save a job preset; the orchestrator checks it as it would check a submit."""
    if agent and pool:
        raise UserError("give --agent or --pool, not both", EXIT_USAGE)
    t = P.Template(
        name=name,
        workspace=workspace,
        source=source,
        target=target,
        branch_spec=branch_spec,
        desc=desc,
        agent=agent,
        pool=pool,
    )
    saved = _call(obj, lambda oc: oc.put_template(t, replace))
    click.echo(f"template {saved.name}: {what(saved)}")


@template.command()
@click.argument("name")
@click.pass_obj
def remove(obj: Ctx, name: str) -> None:
    """Remove a template (no schedule may run it)."""
    gone = _call(obj, lambda oc: oc.remove_template(name))
    click.echo(f"removed template {gone.name}")


COMMANDS = [template]
