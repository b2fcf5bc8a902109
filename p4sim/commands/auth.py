"""info and login."""

from __future__ import annotations

import secrets
import sys
import time

from p4sim import TYPE_CHECKING
from p4sim import messages as msg
from p4sim.commands import Command, Options
from p4sim.errors import P4Error
from p4sim.server.auth import TICKET_LIFETIME, ticket_seconds_left, write_ticket

if TYPE_CHECKING:
    from p4sim.context import Context

SERVER_VERSION = "P4D/LINUX26X86_64/2024.2/2675662 (2024/11/13) p4sim"


def info(ctx: Context, opts: Options, args: list[str]) -> None:
    s = ctx.settings
    spec = ctx.store.spec("client", s.client)
    fields = {
        "userName": s.user,
        "clientName": s.client if spec else "*unknown*",
        "clientHost": s.host,
        "clientRoot": spec["root"] if spec else None,
        "currentDirectory": s.cwd,
        "clientAddress": "127.0.0.1",
        "serverAddress": s.port,
        "serverRoot": str(s.server_root),
        "serverDate": time.strftime("%Y/%m/%d %H:%M:%S %z %Z"),
        "serverVersion": SERVER_VERSION,
        "serverLicense": "none",
        "caseHandling": "sensitive",
    }
    labels = [
        "User name",
        "Client name",
        "Client host",
        "Client root",
        "Current directory",
        "Client address",
        "Server address",
        "Server root",
        "Server date",
        "Server version",
        "Server license",
        "Case Handling",
    ]
    lines = [f"{label}: {value}" for label, value in zip(labels, fields.values(), strict=False) if value is not None]
    if not spec:
        lines[1] = "Client unknown."
    ctx.out.record({k: v for k, v in fields.items() if v is not None}, "\n".join(lines), per_file=False)


def login(ctx: Context, opts: Options, args: list[str]) -> None:
    user = args[0] if args else ctx.user
    password = ctx.store.password(user)
    if not password:
        ctx.out.info(msg.LOGIN_NOT_NEEDED)
        return
    if opts.get("s"):
        ctx.user = user
        left = ticket_seconds_left(ctx)
        if left is None:
            raise P4Error(msg.PASSWORD_UNSET, generic=6)
        if left <= 0:
            raise P4Error(msg.SESSION_EXPIRED, generic=6)
        minutes = int(left // 60)
        ctx.out.info(msg.TICKET_EXPIRES.format(user=user, hours=minutes // 60, minutes=minutes % 60))
        return
    # p4 prompts on stdout (the typed password is not echoed, so the line ends there).
    ctx.out.info(msg.ENTER_PASSWORD)
    typed = sys.stdin.readline().rstrip("\r\n")
    if typed != password:
        raise P4Error(msg.PASSWORD_INVALID, generic=6)
    ticket = secrets.token_hex(16).upper()
    ctx.store.add_ticket(ticket, user, time.time() + TICKET_LIFETIME)
    write_ticket(ctx.settings.tickets, ctx.settings.port, user, ticket)
    ctx.out.info(ticket if opts.get("p") else msg.LOGGED_IN.format(user=user))


COMMANDS = {
    "info": Command("info", info, "info", max_args=0, needs_auth=False),
    "login": Command("login", login, "login [ -p -s ] [ user ]", flags="p s", max_args=1, needs_auth=False),
}
