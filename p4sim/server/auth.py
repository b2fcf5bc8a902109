"""Passwords and tickets. A user without a password needs no login (as on a fresh p4d)."""

from __future__ import annotations

import os
import time

from p4sim import TYPE_CHECKING
from p4sim import messages as msg
from p4sim.errors import P4Error

if TYPE_CHECKING:
    from p4sim.context import Context

TICKET_LIFETIME = 12 * 3600  # p4d's default ticket timeout


def read_ticket(tickets_file: str, port: str, user: str) -> str | None:
    """p4 ticket files hold `port=user:ticket` lines."""
    try:
        with open(tickets_file) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        name, _, ticket = value.partition(":")
        if key == port and name == user:
            return ticket
    return None


def write_ticket(tickets_file: str, port: str, user: str, ticket: str) -> None:
    try:
        with open(tickets_file) as f:
            kept = [line for line in f.read().splitlines() if not line.startswith(f"{port}={user}:")]
    except OSError:
        kept = []
    kept.append(f"{port}={user}:{ticket}")
    fd = os.open(tickets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(kept) + "\n")


def ticket_seconds_left(ctx: Context) -> float | None:
    """Seconds the current ticket has left; None without a known ticket, <= 0 if expired."""
    ticket = read_ticket(ctx.settings.tickets, ctx.settings.port, ctx.user)
    candidates = [t for t in (ticket, ctx.settings.password) if t]
    for candidate in candidates:
        expiry = ctx.store.ticket_expiry(candidate, ctx.user)
        if expiry is not None:
            return expiry - time.time()
    return None


def check_login(ctx: Context) -> None:
    """Refuse the command unless the user has no password or presents a valid credential."""
    password = ctx.store.password(ctx.user)
    if not password or ctx.settings.password == password:
        return
    left = ticket_seconds_left(ctx)
    if left is None:
        raise P4Error(msg.PASSWORD_UNSET, generic=6)
    if left <= 0:
        raise P4Error(msg.SESSION_EXPIRED, generic=6)
