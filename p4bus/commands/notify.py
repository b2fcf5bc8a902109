"""`p4bus notify`: tell people when a job waits for them, fails or finishes ([notify] settings,
docs/operations.md). Runs in the foreground until SIGINT/SIGTERM, like the other services."""

from __future__ import annotations

import click

from common import lifecycle
from p4bus.cli import Ctx, configure_logging


@click.command()
@click.pass_obj
def notify(obj: Ctx) -> None:
    """Run the notifier in the foreground: job events to webhooks, Slack and mail."""
    from p4bus.notify import service

    cfg = obj.cfg()
    lifecycle.private_state(cfg.state_path)
    configure_logging(cfg, "notify")
    service.main(cfg)


COMMANDS = [notify]
