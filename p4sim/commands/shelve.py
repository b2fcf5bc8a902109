"""shelve and unshelve: park opened files' workspace content on the server, and bring it back."""

from __future__ import annotations

from p4sim import TYPE_CHECKING
from p4sim import messages as msg
from p4sim.commands import Command, Options
from p4sim.commands.select import display_rev, file_args, opened_matching
from p4sim.errors import P4Error, UsageError
from p4sim.server import triggers
from p4sim.workspace import read_file, remove_file, write_file

if TYPE_CHECKING:
    from p4sim.context import Context


def _delete_shelf(ctx: Context, change: int, args: list[str]) -> None:
    shelved = ctx.store.shelved(change)
    if args:
        fas = file_args(ctx, args)
        shelved = [r for r in shelved if any(fa.matches(r["file"]) for fa in fas)]
    if not shelved:
        raise P4Error(msg.NO_SHELVED_TO_DELETE)
    ctx.store.discard_shelved(change, [r["file"] for r in shelved])
    ctx.out.info(msg.SHELF_DELETED.format(change=change) if not args else msg.SHELF_FILES_DELETED.format(change=change))


def shelve(ctx: Context, opts: Options, args: list[str]) -> None:
    if not opts.get("c"):
        # Without -c p4 opens an editor on a new change and waits: refuse instead of hanging.
        raise UsageError(msg.NO_INTERACTIVE.format(command="shelve", hint="use 'shelve -c N'."))
    store, ws = ctx.store, ctx.workspace
    change = ctx.pending_change(opts.value("c"))
    if change == 0:
        raise COMMANDS["shelve"].usage_error()
    if opts.get("d"):
        return _delete_shelf(ctx, change, args)
    files = opened_matching(ctx, args, change) if args else store.opened(ctx.settings.client, change)
    if not files:
        raise P4Error(msg.NO_FILES_TO_SHELVE)
    existing = {r["file"] for r in store.shelved(change)}
    if existing and not (opts.get("f") or opts.get("r")):
        clashes = [f["file"] for f in files if f["file"] in existing]
        if clashes:
            raise P4Error(*(msg.ALREADY_SHELVED.format(depot=f) for f in clashes))
    triggers.validate(store, "shelve", [f["file"] for f in files])
    if opts.get("r"):
        store.discard_shelved(change)
    contents = [None if f["action"] == "delete" else read_file(ws.mapped_local(f["file"])) for f in files]
    digests = iter(store.put_blobs(c for c in contents if c is not None))
    store.shelve_files(
        (change, f["file"], f["action"], f["rev"], f["type"], None if c is None else next(digests))
        for f, c in zip(files, contents, strict=False)
    )
    ctx.out.info(msg.SHELVING.format(change=change))
    for f in files:
        rev = display_rev(f["rev"])
        ctx.out.record(
            {"change": change, "depotFile": f["file"], "rev": rev, "action": f["action"]},
            msg.SHELVED_FILE.format(action=f["action"], depot=f["file"], rev=rev),
        )
    ctx.out.info(msg.SHELVED.format(change=change))


def unshelve(ctx: Context, opts: Options, args: list[str]) -> None:
    store, ws, client = ctx.store, ctx.workspace, ctx.settings.client
    source = opts.value("s")
    if not source:
        raise COMMANDS["unshelve"].usage_error()
    shelved = store.shelved(int(source)) if source.isdigit() else []
    if args:
        fas = file_args(ctx, args)
        shelved = [r for r in shelved if any(fa.matches(r["file"]) for fa in fas)]
    if not shelved:
        raise P4Error(msg.NO_SHELVED_FILES.format(change=source))
    change = ctx.pending_change(opts.value("c"))
    for row in shelved:
        opened = store.opened_file(client, row["file"])
        if opened and not opts.get("f"):
            ctx.out.warning(msg.CANT_UNSHELVE.format(depot=row["file"], action=opened["action"]))
            continue
        local = ws.mapped_local(row["file"])
        store.open_files([(client, row["file"], row["action"], change, row["rev"], row["type"], ctx.user)])
        if row["action"] == "delete":
            remove_file(local)
        else:
            write_file(local, store.blob(row["digest"]), writable=True)
        rev = display_rev(row["rev"])
        ctx.out.record(
            {"depotFile": row["file"], "rev": rev, "action": row["action"]},
            msg.UNSHELVED.format(depot=row["file"], rev=rev, action=row["action"]),
        )


COMMANDS = {
    "shelve": Command(
        "shelve",
        shelve,
        "shelve [ -c changelist# [ -f | -r ] ] [ -d -c changelist# [ -f ] ] [ file ... ]",
        flags="c: f r d",
    ),
    "unshelve": Command(
        "unshelve", unshelve, "unshelve -s changelist# [ -f ] [ -c changelist# ] [ file ... ]", flags="s: c: f"
    ),
}
