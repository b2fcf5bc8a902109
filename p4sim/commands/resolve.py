"""resolve: settle scheduled merges with the real three-way merge (p4sim.merge)."""

from __future__ import annotations

from p4sim import TYPE_CHECKING
from p4sim import messages as msg
from p4sim.commands import Command, Options
from p4sim.commands.integrate import rev_range
from p4sim.commands.select import file_args
from p4sim.errors import UsageError
from p4sim.merge import MarkerLabels, merge3
from p4sim.workspace import read_file, write_file

if TYPE_CHECKING:
    from p4sim.context import Context
    from p4sim.merge import MergeResult
    from p4sim.server.store import Store

MODES = ("am", "as", "af", "at", "ay")


def _pending(ctx: Context, opts: Options, args: list[str]) -> list:
    """Unresolved records of this client, narrowed by -c and file arguments (warning if none)."""
    store, client = ctx.store, ctx.settings.client
    rows = [r for r in store.resolves(client) if r["how"] is None]
    if opts.get("c"):
        change = ctx.pending_change(opts.value("c"))
        in_change = {o["file"] for o in store.opened(client, change)}
        rows = [r for r in rows if r["file"] in in_change]
    if not args:
        if not rows:
            ctx.out.warning(msg.NO_RESOLVE)
        return rows
    selected = []
    for fa in file_args(ctx, args):
        hits = [r for r in rows if fa.matches(r["file"])]
        if not hits:
            ctx.out.warning(msg.per_arg(msg.NO_RESOLVE, fa.text))
        selected += [r for r in hits if r not in selected]
    return sorted(selected, key=lambda r: r["file"])


def _content(store: Store, file: str, rev: int) -> bytes:
    row = store.rev(file, rev) if rev else None
    return store.blob(row["digest"]) if row else b""


def _decide(mode: str, result: MergeResult) -> str | None:
    """p4's decision table: the resolve result, or None to skip the file."""
    if result.conflicting:
        return "edit from" if mode == "af" else None
    if result.yours == 0:
        return "copy from"
    if result.theirs == 0:
        return "ignored"
    return None if mode == "as" else "merge from"


def resolve(ctx: Context, opts: Options, args: list[str]) -> None:
    mode = next((m for m in MODES if opts.get(m)), None)
    preview = bool(opts.get("n"))
    if mode is None and not preview:
        raise UsageError(msg.NO_INTERACTIVE.format(command="resolve", hint="use -am, -as, -af, -at, -ay or -n."))
    ws, store, client = ctx.workspace, ctx.store, ctx.settings.client
    for r in _pending(ctx, opts, args):
        depot, source, start, end = r["file"], r["from_file"], r["start_rev"], r["end_rev"]
        client_file = ws.mapped_client(depot)
        local = ws.client_to_local(client_file)
        two_way = mode in ("at", "ay")
        header = (
            msg.VS.format(local=local, source=source, rev=end)
            if two_way
            else msg.MERGING.format(local=local, source=source, revs=rev_range(start, end))
        )
        ctx.out.record(
            {
                "clientFile": local,
                "fromFile": source,
                "startFromRev": start or "none",
                "endFromRev": end,
                "resolveType": "content",
                "contentResolveType": "2wayraw" if two_way else "3waytext",
            },
            header,
        )
        if preview:
            continue
        assert mode is not None, "only -n runs without a mode"
        how: str | None
        theirs = _content(store, source, end)
        yours = read_file(local)
        if mode == "at":
            how, merged = "copy from", theirs
        elif mode == "ay":
            how, merged = "ignored", yours
        else:
            labels = MarkerLabels(f"{r['base_file']}#{start}", f"{source}#{end}", client_file)
            result = merge3(
                _content(store, r["base_file"], r["base_rev"]), theirs, yours, labels if mode == "af" else None
            )
            ctx.out.info(result.chunk_line)
            how = _decide(mode, result)
            merged = theirs if how == "copy from" else yours if how == "ignored" else result.content
        if how is None:
            ctx.out.info(msg.RESOLVE_SKIPPED.format(client_file=client_file))
            continue
        if merged != yours:
            write_file(local, merged, writable=True)
        store.mark_resolved(client, depot, source, how)
        if source == depot:  # a resolve scheduled by sync: the edit now sits on the new revision
            store.set_work_rev(client, depot, end)
        ctx.out.info(msg.RESOLVED.format(client_file=client_file, how=how, source=source))


COMMANDS = {
    "resolve": Command(
        "resolve",
        resolve,
        "resolve [ -af -am -as -at -ay -n ] [ -c changelist# ] [ file ... ]",
        flags="am as af at ay n c:",
    ),
}
