"""Selecting files for commands: file arguments against the depot, the have list, opened files.

Every helper reports arguments that matched nothing with p4's per-argument warning, so the
commands only handle what was found.
"""

from __future__ import annotations

from p4sim import TYPE_CHECKING
from p4sim import messages as msg
from p4sim.errors import P4Error
from p4sim.server.store import Row
from p4sim.workspace import FileArg

if TYPE_CHECKING:
    from p4sim.context import Context


def display_rev(rev: int) -> int:
    """Files opened for add/branch have no revision yet; p4 shows them as #1."""
    return rev or 1


def file_args(ctx: Context, args: list[str]) -> list[FileArg]:
    ws = ctx.workspace
    return [ws.file_arg(a) for a in args] if args else [ws.whole_view()]


def change_limit(revspec: str | None) -> int | None:
    """The highest change number `@N` allows (None: no limit). `#` forms are per file."""
    if revspec is None or revspec in ("@now", "#head") or revspec.startswith("#"):
        return None
    value = revspec[1:]
    if not value.isdigit():
        raise P4Error(f"Invalid changelist number '{value}'.")
    return int(value)


def revisions(ctx: Context, fa: FileArg) -> dict[str, Row | None]:
    """The revision each matching depot file is at for the argument's revision specifier.

    A file at a delete revision, or before its first revision (`#none`, `#0`, `@N` earlier),
    maps to its revision row anyway; callers decide what a deleted head means.
    """
    heads = ctx.store.heads(fa.prefixes, change_limit(fa.revspec))
    found: dict[str, Row | None] = {f: r for f, r in heads.items() if fa.matches(f)}
    spec = fa.revspec
    if spec and spec.startswith("#") and spec != "#head":
        wanted = 0 if spec in ("#none", "#0") else int(spec[1:]) if spec[1:].isdigit() else None
        if wanted is None:
            raise P4Error(f"Invalid revision number '{spec[1:]}'.")
        found = {f: (ctx.store.rev(f, min(wanted, heads[f]["rev"])) if wanted else None) for f in found}
    return found


def opened_matching(ctx: Context, args: list[str], change: int | None = None, warn: str = msg.NOT_OPENED) -> list[Row]:
    """Opened files of this client (optionally in one change) matching the arguments."""
    rows = ctx.store.opened(ctx.settings.client, change)
    if not args:
        if not rows:
            ctx.out.warning(warn)
        return rows
    selected: dict[str, Row] = {}
    for fa in file_args(ctx, args):
        hits = [r for r in rows if fa.matches(r["file"])]
        if not hits:
            ctx.out.warning(msg.per_arg(warn, fa.text + (fa.revspec or "")))
        selected.update((r["file"], r) for r in hits)
    return [selected[f] for f in sorted(selected)]
