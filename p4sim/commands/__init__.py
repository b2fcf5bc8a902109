"""The p4 command table and p4-style option parsing.

Command modules are imported lazily (only the one being run) to keep each invocation fast.
"""

from __future__ import annotations

import importlib

from p4sim import TYPE_CHECKING
from p4sim import messages as msg
from p4sim.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Callable

    from p4sim.context import Context


class Options(dict[str, "str | bool"]):
    """Parsed options: a switch maps to True, an option with a value to its text."""

    def value(self, name: str) -> str | None:
        value = self.get(name)
        return value if isinstance(value, str) else None


# command name -> module under p4sim.commands that defines it in its COMMANDS table
_MODULES = {
    "info": "auth",
    "login": "auth",
    "client": "specs",
    "branch": "specs",
    "change": "specs",
    "add": "files",
    "edit": "files",
    "delete": "files",
    "revert": "files",
    "reopen": "files",
    "opened": "files",
    "fstat": "files",
    "sync": "sync",
    "integrate": "integrate",
    "integ": "integrate",
    "resolve": "resolve",
    "shelve": "shelve",
    "unshelve": "shelve",
    "submit": "submit",
    "changes": "history",
    "describe": "history",
    "diff": "diff",
}


class Command:
    def __init__(
        self,
        name: str,
        run: Callable[[Context, Options, list[str]], None],
        usage: str,
        flags: str = "",
        min_args: int = 0,
        max_args: int | None = None,
        needs_auth: bool = True,
    ):
        self.name = name
        self.run = run  # run(ctx, opts, args)
        self.usage = usage
        # Space-separated option names; a trailing ':' means the option takes a value.
        self.flags = flags
        self.min_args, self.max_args = min_args, max_args
        self.needs_auth = needs_auth

    def parse(self, argv: list[str]) -> tuple[Options, list[str]]:
        """p4 option syntax: options first (`-c 5` or `-c5`), then arguments."""
        spec = {f.rstrip(":"): f.endswith(":") for f in self.flags.split()}
        opts = Options()
        i = 0
        while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
            name = argv[i][1:]
            if name in spec and not spec[name]:
                opts[name] = True
            elif name in spec:
                if i + 1 >= len(argv):
                    raise self.usage_error()
                i += 1
                opts[name] = argv[i]
            elif spec.get(name[:1]):
                opts[name[:1]] = name[1:]
            else:
                raise UsageError(msg.INVALID_OPTION.format(option=argv[i]), msg.USAGE.format(usage=self.usage))
            i += 1
        args = argv[i:]
        if len(args) < self.min_args or (self.max_args is not None and len(args) > self.max_args):
            raise self.usage_error()
        return opts, args

    def usage_error(self) -> UsageError:
        return UsageError(msg.WRONG_ARGS, msg.USAGE.format(usage=self.usage))


def lookup(name: str) -> Command | None:
    module = _MODULES.get(name)
    if module is None:
        return None
    return importlib.import_module(f"p4sim.commands.{module}").COMMANDS[name]
