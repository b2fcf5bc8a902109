"""`p4bus web`: serve the dashboard; `p4bus web token add|list|revoke`: who may log in to it."""

from __future__ import annotations

import os
import socket
import time

import click

from common import auth, lifecycle, logs, metrics
from p4bus.cli import Ctx, UserError, configure_logging
from p4bus.web.tokens import PEOPLE_ROLES, TokenError, TokenFile


@click.group(invoke_without_command=True)
@click.option(
    "--bind", "web__bind", metavar="HOST:PORT", default=None, help="Listen here (web.bind; default 127.0.0.1:9096)."
)
@click.pass_context
def web(ctx: click.Context, web__bind: str | None) -> None:
    """Serve the dashboard (or manage its login tokens: `p4bus web token --help`)."""
    if ctx.invoked_subcommand is not None:
        return
    obj: Ctx = ctx.obj
    cfg = obj.cfg(web__bind=web__bind)
    lifecycle.private_state(cfg.state_path)
    configure_logging(cfg, "web")
    host, port = cfg.web_bind()
    # Imported here: the rest of the CLI does not need the web stack.
    import uvicorn

    from p4bus.web.app import Web

    try:
        dashboard = Web(cfg, auth.for_service(cfg, "web", "web"))
    except TokenError as exc:
        raise UserError(str(exc), 2) from None
    if host not in ("127.0.0.1", "localhost", "::1") and not cfg.web.cookie_secure:
        logs.get("web").warning(
            "web.exposed",
            bind=f"{host}:{port}",
            message="listening beyond loopback over plain http: put it behind a TLS proxy and set web.cookie_secure",
        )
    try:
        # Bound here rather than by uvicorn, so a port in use is one line and exit code 1.
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise UserError(
            f"the dashboard cannot listen on {host}:{port}: {os.strerror(exc.errno or 0)} (set web.bind or --bind)"
        ) from None
    metrics.serve(cfg, "web", dashboard.metrics)
    # Event streams never end by themselves: on SIGTERM they get 2 s, then are closed.
    conf = uvicorn.Config(
        dashboard.app(), log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(conf)
    server.run(sockets=[sock])


@web.group()
def token() -> None:
    """Login tokens (stored hashed in web.tokens_file, mode 0600)."""


def _tokens(obj: Ctx) -> TokenFile:
    return TokenFile(obj.cfg().web_tokens_path)


@token.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(PEOPLE_ROLES), help="viewer sees; operator also acts.")
@click.pass_obj
def token_add(obj: Ctx, name: str, role: str) -> None:
    """A new token for NAME (replacing theirs); printed once, never stored in clear."""
    try:
        secret = _tokens(obj).add(name, role)
    except TokenError as exc:
        raise UserError(str(exc), 2) from None
    click.echo(secret)
    click.echo(f"token for {name} ({role}); give it to them privately: it is not shown again", err=True)


@token.command("list")
@click.pass_obj
def token_list(obj: Ctx) -> None:
    """Who has a token, and their role."""
    try:
        entries = _tokens(obj).entries()
    except TokenError as exc:
        raise UserError(str(exc), 2) from None
    if not entries:
        click.echo("no tokens (add one with `p4bus web token add NAME --role viewer|operator`)")
    for name, e in sorted(entries.items()):
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(str(e.get("created", 0)))))
        click.echo(f"{name:24} {e.get('role')!s:9} created {created}")


@token.command("revoke")
@click.argument("name")
@click.pass_obj
def token_revoke(obj: Ctx, name: str) -> None:
    """Remove NAME's token; their sessions end at their next request."""
    try:
        _tokens(obj).revoke(name)
    except TokenError as exc:
        raise UserError(str(exc), 2) from None
    click.echo(f"revoked {name}")


COMMANDS = [web]
