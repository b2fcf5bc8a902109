"""sync: bring workspace files to the requested revisions and record them in the have list."""

from __future__ import annotations

from p4sim import TYPE_CHECKING
from p4sim import messages as msg
from p4sim.commands import Command, Options
from p4sim.commands.select import file_args, revisions
from p4sim.errors import P4Error
from p4sim.workspace import is_writable_file, remove_file, write_file

if TYPE_CHECKING:
    from p4sim.context import Context
    from p4sim.server.store import Row

# p4's verbs per sync action, and the -ztag action names.
_TEXT = {"added": "added as", "updated": "updating", "deleted": "deleted as"}


def sync(ctx: Context, opts: Options, args: list[str]) -> None:
    ws, store, client = ctx.workspace, ctx.store, ctx.settings.client
    force, preview = bool(opts.get("f")), bool(opts.get("n"))
    ctx.out.quiet = ctx.out.quiet or bool(opts.get("q"))
    have = store.have(client)
    opened = {r["file"]: r for r in store.opened(client)}
    plan: list[tuple[str, str, Row | None]] = []  # (action, depot file, target revision row)
    for fa in file_args(ctx, args):
        targets = revisions(ctx, fa)
        in_view = {f: r for f, r in targets.items() if ws.depot_to_client(f) is not None}
        candidates = sorted(set(in_view) | {f for f in have if fa.matches(f)})
        arg_text = fa.text + (fa.revspec or "")
        if not candidates:
            ctx.out.warning(msg.per_arg(msg.NOT_IN_VIEW if targets else msg.NO_SUCH_FILES, arg_text if args else None))
            continue
        planned, behind = len(plan), 0
        for depot in candidates:
            row = in_view.get(depot)
            target = row["rev"] if row is not None and row["action"] != "delete" else 0
            current = have.get(depot, 0)
            if depot in opened:
                if target and current and target != current and not preview:
                    _schedule_resolve(ctx, depot, current, target)
                    have[depot] = target
                    behind += 1
                continue
            if target == current:
                if force and current:
                    plan.append(("refreshed", depot, row))
            elif target == 0:
                plan.append(("deleted", depot, row))
            else:
                plan.append(("added" if current == 0 else "updated", depot, row))
        if len(plan) == planned and not behind:
            ctx.out.warning(msg.per_arg(msg.UP_TO_DATE, arg_text if args else None))
    _apply(ctx, plan, preview, keep_files=bool(opts.get("k")))


def _schedule_resolve(ctx: Context, depot: str, have_rev: int, target: int) -> None:
    """An opened file behind the new revision keeps the user's edits and needs a resolve."""
    ctx.store.schedule_resolves([(ctx.settings.client, depot, depot, have_rev, target, depot, have_rev)])
    ctx.store.set_have(ctx.settings.client, [(depot, target)])
    ctx.out.info(msg.SYNC_OPENED.format(depot=depot, rev=target), per_file=True)
    ctx.out.info(msg.MUST_RESOLVE_REV.format(depot=depot, rev=target), level=1)


def _apply(ctx: Context, plan: list[tuple[str, str, Row | None]], preview: bool, keep_files: bool) -> None:
    """Write the files (unless -n, or -k: have list only) and print one line per file."""
    ws, store, client = ctx.workspace, ctx.store, ctx.settings.client
    # Only a deletion can lack a revision row (a file the have list has and the view lost).
    written = [r for a, _, r in plan if a != "deleted" and r is not None]
    contents = {} if preview or keep_files else store.blobs(r["digest"] for r in written)
    total_size = sum(r["size"] for r in written)
    done: list[tuple[str, int]] = []
    try:
        for i, (action, depot, row) in enumerate(plan):
            local = ws.mapped_local(depot)
            rev = row["rev"] if row is not None else "none"
            if action in ("added", "updated") and not preview and not keep_files and is_writable_file(local):
                raise P4Error(msg.CANT_CLOBBER.format(local=local))
            if not preview:
                if not keep_files and action == "deleted":
                    remove_file(local)
                elif not keep_files and row is not None:
                    write_file(local, contents[row["digest"]])
                done.append((depot, 0 if action == "deleted" or row is None else row["rev"]))
            fields: dict[str, object] = {
                "depotFile": depot,
                "clientFile": local,
                "rev": rev,
                "action": action,
                "fileSize": row["size"] if row else 0,
            }
            if i == 0:
                fields.update(
                    totalFileSize=total_size,
                    totalFileCount=len(plan),
                    change=max((r["change"] for _, _, r in plan if r is not None), default=0),
                )
            text = (
                msg.SYNC_REFRESH.format(depot=depot, rev=rev, local=local)
                if action == "refreshed"
                else msg.SYNC_LINE.format(depot=depot, rev=rev, what=_TEXT[action], local=local)
            )
            ctx.out.record(fields, text)
    finally:
        # Files already written stay synced even when a later one stops the sync.
        store.set_have(client, done)


COMMANDS = {
    "sync": Command("sync", sync, "sync [ -f -n -k -q ] [ file[revRange] ... ]", flags="f n k q"),
}
