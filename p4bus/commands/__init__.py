"""CLI commands, one module each; ``register`` adds them to the group."""

from __future__ import annotations

import importlib

import click

COMMANDS = [
    "services",
    "run",
    "up",
    "agents",
    "events",
    "jobs",
    "cleanup",
    "demo",
    "deploy",
    "keys",
    "notify",
    "template",
    "schedule",
    "web",
]


def register(group: click.Group) -> None:
    for name in COMMANDS:
        mod = importlib.import_module(f"p4bus.commands.{name}")
        for cmd in mod.COMMANDS:
            group.add_command(cmd)
