"""`p4bus keys init|create|show|authorize|list|revoke`: key pairs and the keyring (docs/security.md)."""

from __future__ import annotations

import click

from common import keys, roles
from p4bus.cli import Ctx

# What `keys init` makes: the keys of the services of one host and an operator key.
INIT_KEYS = {
    "broker": roles.BROKER,
    "master": roles.MASTER,
    "orchestrator": roles.ORCHESTRATOR,
    "operator": roles.OPERATOR,
    "web": roles.WEB,
    "notify": roles.VIEWER,  # the notifier only reads the bus
}


@click.group()
def keys_group() -> None:
    """CurveZMQ key pairs and the keyring that gives each key a name and a role."""


@keys_group.command()
@click.option("--agent", "agents", multiple=True, metavar="ID", help="Also a key (role agent) for this agent id.")
@click.pass_obj
def init(obj: Ctx, agents: tuple[str, ...]) -> None:
    """Create the local services' keys, an operator key and the keyring (idempotent)."""
    cfg = obj.cfg()
    wanted = {**INIT_KEYS, **dict.fromkeys(agents or [cfg.agent_id()], roles.AGENT)}
    made = keys.init(cfg.keys_path, cfg.keyring_path, wanted)
    click.echo(f"keys in {cfg.keys_path}: {', '.join(made) + ' created' if made else 'all present'}")


@keys_group.command()
@click.argument("name")
@click.pass_obj
def create(obj: Ctx, name: str) -> None:
    """Create key pair NAME (NAME.key and NAME.key_secret, 0600); print its public key."""
    pair = keys.create(obj.cfg().keys_path, name)
    click.echo(pair.public.decode())


@keys_group.command()
@click.argument("name")
@click.pass_obj
def show(obj: Ctx, name: str) -> None:
    """Print the public key of NAME (from NAME.key, else the keyring)."""
    cfg = obj.cfg()
    path = keys.public_path(cfg.keys_path, name)
    if path.exists():
        click.echo(keys.load_public(path))
        return
    entry = keys.read(cfg.keyring_path).get(name)
    if entry is None:
        raise keys.KeyringError(f"no key {name}: neither {path} nor an entry in {cfg.keyring_path}")
    click.echo(entry.public)


@keys_group.command()
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(roles.ROLES), help="What the key may do.")
@click.option("--public", "public", metavar="Z85", help="Its public key (default: NAME.key in the keys directory).")
@click.option("--endpoint", "endpoints", multiple=True, help="A server key: an endpoint it answers on, repeatable.")
@click.pass_obj
def authorize(obj: Ctx, name: str, role: str, public: str | None, endpoints: tuple[str, ...]) -> None:
    """Authorize a public key under NAME with ROLE (takes effect without a restart)."""
    cfg = obj.cfg()
    key = public or keys.load_public(keys.public_path(cfg.keys_path, name))
    entry = keys.authorize(cfg.keyring_path, name, role, key, endpoints)
    click.echo(f"authorized {entry.name} as {entry.role}")


@keys_group.command(name="list")
@click.pass_obj
def list_keys(obj: Ctx) -> None:
    """The keyring: name, role, public key, endpoints."""
    for e in sorted(keys.read(obj.cfg().keyring_path).values(), key=lambda e: (e.role, e.name)):
        click.echo(f"{e.name:24} {e.role:13} {e.public}  {' '.join(e.endpoints)}".rstrip())


@keys_group.command()
@click.argument("name")
@click.pass_obj
def revoke(obj: Ctx, name: str) -> None:
    """Remove NAME from the keyring: its connections are refused from the next request on."""
    gone = keys.revoke(obj.cfg().keyring_path, name)
    click.echo(f"revoked {gone.name} (was {gone.role})")


keys_group.name = "keys"
COMMANDS = [keys_group]
