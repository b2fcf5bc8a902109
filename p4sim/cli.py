"""Entry point: `p4sim <p4 command>` or `p4 <command>` (through the shim), plus `p4sim seed|shim`.

Only the standard library is imported on the p4 path, and only what the command needs,
because callers run many short p4 invocations.
"""

from __future__ import annotations

import os
import sys

from p4sim import TYPE_CHECKING
from p4sim import messages as msg
from p4sim.errors import P4Error, UsageError
from p4sim.faults import OutputFaults, connection_fault
from p4sim.output import Output

if TYPE_CHECKING:
    from collections.abc import Mapping

TOOLS = ("init", "seed", "shim")
HELP = """usage: p4sim [p4 global options] COMMAND [ARGS]   (as `p4`; the same through the shim)
       p4sim init DIR       create an empty server in DIR (P4PORT=sim:DIR)
       p4sim seed DIR ...   a server and workspace for a scenario (p4sim seed --help)
       p4sim shim DIR       write DIR/p4, running this p4sim

P4PORT=sim:/abs/dir selects a server, which must exist; any other P4PORT fails like an
unreachable server. p4 commands: see p4sim/README.md.
"""
_VALUE_OPTIONS = {
    "p": "port",
    "u": "user",
    "c": "client",
    "P": "password",
    "d": "cwd",
    "x": "xfile",
    "H": "host",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    prog = os.path.basename(argv[0]) if argv else "p4sim"
    args = argv[1:]
    if prog != "p4" and args[:1] and args[0] in TOOLS:
        from p4sim import tools

        return tools.main(args)
    if prog != "p4" and args in ([], ["-h"], ["--help"]):
        sys.stdout.write(HELP)
        return 0
    return run_p4(args, os.environ)


def _parse_globals(argv: list[str]) -> tuple[dict[str, str], set[str], list[str]]:
    """Split `[global options] command [args]`; returns (valued options, switches, rest)."""
    values: dict[str, str] = {}
    switches: set[str] = set()
    i = 0
    while i < len(argv) and argv[i].startswith("-") and len(argv[i]) > 1:
        arg = argv[i]
        if arg in ("-s", "-G", "-q"):
            switches.add(arg[1])
        elif arg == "-ztag" or (arg == "-z" and argv[i + 1 : i + 2] == ["tag"]):
            switches.add("ztag")
            i += arg == "-z"
        elif arg[1] in _VALUE_OPTIONS:
            if len(arg) > 2:
                values[_VALUE_OPTIONS[arg[1]]] = arg[2:]
            elif i + 1 < len(argv):
                values[_VALUE_OPTIONS[arg[1]]] = argv[i + 1]
                i += 1
            else:
                raise UsageError(msg.INVALID_OPTION.format(option=arg), msg.P4_USAGE)
        else:
            raise UsageError(msg.INVALID_OPTION.format(option=arg), msg.P4_USAGE)
        i += 1
    return values, switches, argv[i:]


def _xfile_args(path: str) -> list[str]:
    """`-x FILE`: one extra argument per line ('-' reads them from stdin)."""
    text = sys.stdin.read() if path == "-" else open(path).read()
    return [line for line in text.splitlines() if line.strip()]


def run_p4(argv: list[str], env: Mapping[str, str]) -> int:
    out = Output(faults=OutputFaults.from_env(env))
    try:
        values, switches, rest = _parse_globals(argv)
    except P4Error as e:
        out.error("\n".join(e.lines), e.generic)
        return out.flush()
    out.mode = "G" if "G" in switches else "ztag" if "ztag" in switches else "s" if "s" in switches else "plain"
    out.quiet = "q" in switches
    if not rest:
        out.info(msg.P4_USAGE)
        return out.flush()
    try:
        _run_command(rest[0], rest[1:], values, env, out)
    except P4Error as e:
        out.error("\n".join(e.lines), e.generic)
    return out.flush()


def _run_command(name: str, args: list[str], values: dict[str, str], env: Mapping[str, str], out: Output) -> None:
    from p4sim.context import Context, Settings

    settings = Settings.resolve(
        env,
        values.get("port"),
        values.get("user"),
        values.get("client"),
        values.get("password"),
        values.get("cwd"),
        values.get("host"),
    )
    root = settings.server_root
    if root is None or connection_fault(env, {"refused"}):
        raise P4Error(msg.CONNECT_FAILED.format(port=settings.port), generic=38)
    from p4sim.commands import lookup

    command = lookup(name)
    if command is None:
        raise P4Error(msg.UNKNOWN_COMMAND, generic=1)
    if "xfile" in values:
        args = args + _xfile_args(values["xfile"])
    opts, args = command.parse(args)
    if command.needs_auth and connection_fault(env, {"expired"}):
        raise P4Error(msg.SESSION_EXPIRED, generic=6)
    from p4sim.server.store import NoServer, Store

    try:
        store = Store(root)
    except NoServer:
        raise P4Error(msg.NO_SIM_SERVER.format(root=root), generic=38) from None
    ctx = Context(settings, store, out)
    try:
        # Commands record partial progress (e.g. sync up to an unclobberable file) before
        # failing, as p4 does, so an error still commits what was done.
        store.begin()
        try:
            if command.needs_auth:
                from p4sim.server.auth import check_login

                check_login(ctx)
            command.run(ctx, opts, args)
        except P4Error as e:
            out.error("\n".join(e.lines), e.generic)
        except BaseException:
            store.rollback()
            raise
        store.commit()
    finally:
        store.close()
