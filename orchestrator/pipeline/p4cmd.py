"""Turning a job's workspace into commands: the p4 environment and site argv templates."""

from __future__ import annotations

import re

from orchestrator.pipeline.model import CommandSpec, JobContext, Workspace


def p4_env(ws: Workspace) -> dict[str, str]:
    # P4CONFIG files are looked up from $PWD, which a non-shell exec does not update.
    env = {"P4PORT": ws.p4port, "P4USER": ws.p4user, "P4CLIENT": ws.p4client, "PWD": ws.root}
    if ws.tickets_file:
        env["P4TICKETS"] = ws.tickets_file
    return {**env, **ws.env}


def p4(ctx: JobContext, *args: str, stdin: bytes | None = None, secret: bool = False) -> CommandSpec:
    ws = ctx.params.workspace
    return CommandSpec(argv=[ws.p4, *args], stdin=stdin, stdin_secret=secret, env=p4_env(ws), cwd=ws.root)


def change(ctx: JobContext) -> str:
    """The pending change as a p4 argument; stages after CREATE_CHANGE declare they need it."""
    return str(ctx.vars["change"])


def expand(template: list[str], ctx: JobContext) -> list[str]:
    """A site argv template with {change} and {workspace} filled in (nothing else: a value is
    never re-parsed, so a path cannot smuggle in another placeholder). A leading "p4" means
    the workspace's p4 executable, so templates work unchanged against p4sim."""
    values = {"change": str(ctx.vars.get("change", "")), "workspace": ctx.params.workspace.name}
    argv = [re.sub(r"\{(change|workspace)\}", lambda m: values[m.group(1)], arg) for arg in template]
    if argv and argv[0] == "p4":
        argv[0] = ctx.params.workspace.p4
    return argv


def site_command(ctx: JobContext, template: list[str]) -> CommandSpec:
    """A site hook runs where p4 runs, with the same P4 environment, so it can call p4."""
    ws = ctx.params.workspace
    return CommandSpec(argv=expand(template, ctx), env=p4_env(ws), cwd=ws.root)


def is_p4_submit(ctx: JobContext, template: list[str]) -> bool:
    argv = expand(template, ctx)
    return argv[:1] == [ctx.params.workspace.p4] and "submit" in argv[1:]
