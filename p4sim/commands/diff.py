"""diff: opened workspace files against the revision they were opened at (-du: unified)."""

from __future__ import annotations

import difflib

from p4sim import TYPE_CHECKING
from p4sim import messages as msg
from p4sim.commands import Command, Options
from p4sim.commands.history import normal_diff
from p4sim.commands.select import display_rev, opened_matching
from p4sim.errors import UsageError
from p4sim.workspace import read_file

if TYPE_CHECKING:
    from p4sim.context import Context


def _lines(data: bytes) -> list[str]:
    return data.decode("utf-8", "replace").splitlines()


def diff(ctx: Context, opts: Options, args: list[str]) -> None:
    """Each opened file: p4's `==== depot#rev - local ====` header, then its differences
    (unified with -du, diff's normal format without). Only -du and the default are simulated."""
    flag = opts.value("d")
    if flag not in (None, "u"):
        raise UsageError(f"p4sim simulates diff -du and plain diff only, not -d{flag}.")
    ws, store = ctx.workspace, ctx.store
    for row in opened_matching(ctx, args):
        depot, rev = row["file"], row["rev"]
        local = ws.depot_to_local(depot) or depot
        before = store.rev(depot, rev) if rev else None
        old = store.blob(before["digest"]) if before and before["digest"] else b""
        try:
            new = read_file(local)
        except OSError:
            new = b""
        lines = [msg.DIFF_HEADER.format(depot=depot, rev=display_rev(rev), local=local)]
        if flag == "u":
            hunks = difflib.unified_diff(_lines(old), _lines(new), lineterm="", n=3)
            lines += [line for line in hunks if not line.startswith(("--- ", "+++ "))]
        else:
            lines += normal_diff(old, new)
        ctx.out.text("\n".join(lines))


COMMANDS = {
    "diff": Command("diff", diff, "diff [ -d<flags> ] [ file ... ]", flags="d:"),
}
