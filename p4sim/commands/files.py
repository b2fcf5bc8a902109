"""Opening and inspecting files: add, edit, delete, revert, reopen, opened, fstat."""

from __future__ import annotations

from p4sim import TYPE_CHECKING
from p4sim import messages as msg
from p4sim.commands import Command, Options
from p4sim.commands.select import display_rev, file_args, opened_matching
from p4sim.errors import P4Error
from p4sim.output import format_tagged
from p4sim.view import has_wildcard
from p4sim.workspace import remove_file, set_writable, write_file

if TYPE_CHECKING:
    from p4sim.context import Context
    from p4sim.server.store import Row
    from p4sim.workspace import Workspace

FILE_TYPE = "text"


def _open(ctx: Context, file: str, action: str, change: int, rev: int) -> None:
    ctx.store.open_files([(ctx.settings.client, file, action, change, rev, FILE_TYPE, ctx.user)])


def add(ctx: Context, opts: Options, args: list[str]) -> None:
    ws, change = ctx.workspace, ctx.pending_change(opts.value("c"))
    for arg in args:
        if not opts.get("f") and (has_wildcard(arg) or any(ch in arg for ch in "@#%")):
            raise P4Error(msg.WILDCARD_NAME)
        # With -f the characters p4 reserves are stored escaped (%40, %23, %25, %2A).
        depot = ws.local_to_depot(arg, escape_names=bool(opts.get("f")))
        if depot is None:
            ctx.out.warning(msg.per_arg(msg.NOT_IN_VIEW, arg))
            continue
        opened = ctx.store.opened_file(ctx.settings.client, depot)
        if opened:
            ctx.out.warning(
                msg.CURRENTLY_OPENED.format(depot=depot, rev=display_rev(opened["rev"]), action=opened["action"])
            )
            continue
        head = ctx.store.head(depot)
        if head and head["action"] != "delete":
            ctx.out.warning(msg.CANT_ADD_EXISTING.format(depot=depot))
            continue
        if not opts.get("n"):  # -n previews: the same lines, nothing opened
            _open(ctx, depot, "add", change, 0)
        ctx.out.record(
            {
                "depotFile": depot,
                "clientFile": ws.depot_to_local(depot),
                "workRev": 1,
                "action": "add",
                "type": FILE_TYPE,
            },
            msg.OPENED_FOR.format(depot=depot, rev=1, action="add"),
        )


def _open_synced(ctx: Context, opts: Options, args: list[str], action: str) -> None:
    """edit and delete: open files the workspace has, at the revision it has (-n previews;
    -k leaves the workspace file as it is)."""
    ws, change, client = ctx.workspace, ctx.pending_change(opts.value("c")), ctx.settings.client
    have = ctx.store.have(client)
    for fa in file_args(ctx, args):
        hits = sorted(f for f in have if fa.matches(f))
        if not hits:
            ctx.out.warning(msg.per_arg(msg.NOT_ON_CLIENT, fa.text))
        for depot in hits:
            opened = ctx.store.opened_file(client, depot)
            if opened:
                ctx.out.warning(
                    msg.CURRENTLY_OPENED.format(depot=depot, rev=display_rev(opened["rev"]), action=opened["action"])
                )
                continue
            rev, local = have[depot], ws.mapped_local(depot)
            if not opts.get("n"):
                _open(ctx, depot, action, change, rev)
            if not (opts.get("n") or opts.get("k")):
                if action == "delete":
                    remove_file(local)
                else:
                    set_writable(local, True)
            ctx.out.record(
                {"depotFile": depot, "clientFile": local, "workRev": rev, "action": action, "type": FILE_TYPE},
                msg.OPENED_FOR.format(depot=depot, rev=rev, action=action),
            )


def edit(ctx: Context, opts: Options, args: list[str]) -> None:
    _open_synced(ctx, opts, args, "edit")


def delete(ctx: Context, opts: Options, args: list[str]) -> None:
    _open_synced(ctx, opts, args, "delete")


def revert(ctx: Context, opts: Options, args: list[str]) -> None:
    ws, client = ctx.workspace, ctx.settings.client
    change = ctx.pending_change(opts.value("c")) if opts.get("c") else None
    rows = opened_matching(ctx, args, change)
    have = ctx.store.have(client)
    for row in rows:
        depot, action = row["file"], row["action"]
        local = ws.depot_to_local(depot)
        new_file = action in ("add", "branch")
        if not (opts.get("k") or opts.get("n")) and local:
            # An abandoned add keeps the user's file; everything else returns to the have revision.
            if action == "branch":
                remove_file(local)
            elif not new_file and depot in have:
                have_row = ctx.store.rev(depot, have[depot])
                write_file(local, ctx.store.blob(have_row["digest"] if have_row else None))
        template = msg.ABANDONED if new_file else msg.REVERTED
        ctx.out.record(
            {
                "depotFile": depot,
                "clientFile": local,
                "haveRev": have.get(depot, "none"),
                "oldAction": action,
                "action": "abandoned" if new_file else "reverted",
            },
            template.format(depot=depot, rev=display_rev(row["rev"]), action=action),
        )
    if not opts.get("n"):  # -n previews: the same lines, nothing reverted
        ctx.store.close_files(client, [r["file"] for r in rows])


def reopen(ctx: Context, opts: Options, args: list[str]) -> None:
    change = ctx.pending_change(opts.value("c"))
    label = f"change {change}" if change else "default change"
    for row in opened_matching(ctx, args):
        ctx.store.reopen(ctx.settings.client, row["file"], change)
        ctx.out.record(
            {
                "depotFile": row["file"],
                "workRev": display_rev(row["rev"]),
                "action": row["action"],
                "change": change or "default",
            },
            msg.REOPENED.format(depot=row["file"], rev=display_rev(row["rev"]), change=label),
        )


def opened(ctx: Context, opts: Options, args: list[str]) -> None:
    ws = ctx.workspace
    change = ctx.pending_change(opts.value("c")) if opts.get("c") else None
    have = ctx.store.have(ctx.settings.client)
    rows = opened_matching(ctx, args, change)
    for row in rows[: int(opts["m"])] if opts.get("m") else rows:
        label = f"change {row['change']}" if row["change"] else "default change"
        rev = display_rev(row["rev"])
        ctx.out.record(
            {
                "depotFile": row["file"],
                "clientFile": ws.depot_to_client(row["file"]),
                "rev": rev,
                "haveRev": have.get(row["file"], "none"),
                "action": row["action"],
                "change": row["change"] or "default",
                "type": row["type"],
                "user": row["user"],
                "client": row["client"],
            },
            msg.OPENED_LINE.format(depot=row["file"], rev=rev, action=row["action"], change=label, type=row["type"]),
        )


def fstat(ctx: Context, opts: Options, args: list[str]) -> None:
    """Always tagged output, even without -ztag, as in p4. -T keeps the named fields (comma or
    space separated) and -m stops after that many files."""
    ws, client, store = ctx.workspace, ctx.settings.client, ctx.store
    only_unresolved, only_opened = bool(opts.get("Ru")), bool(opts.get("Ro") or opts.get("Ru"))
    keep = set(str(opts["T"]).replace(",", " ").split()) if opts.get("T") else None
    left = int(opts["m"]) if opts.get("m") else None
    have = store.have(client)
    opened = {r["file"]: r for r in store.opened(client)}
    for fa in file_args(ctx, args):
        if left is not None and left <= 0:
            break
        heads = {f: r for f, r in store.heads(fa.prefixes).items() if fa.matches(f)}
        files = sorted(set(heads) | {f for f in opened if fa.matches(f)})
        if only_opened:
            files = [f for f in files if f in opened]
        records = []
        for depot in files:
            resolves = store.resolves(client, depot)
            pending = [r for r in resolves if r["how"] is None]
            if only_unresolved and not pending:
                continue
            records.append(
                _fstat_fields(ws, depot, heads.get(depot), have.get(depot), opened.get(depot), pending, resolves)
            )
        if not records:
            warning = msg.NO_RESOLVE if only_unresolved else msg.NOT_OPENED if only_opened else msg.NO_SUCH_FILES
            ctx.out.warning(msg.per_arg(warning, fa.text))
        if left is not None:
            records, left = records[:left], left - len(records[:left])
        for fields in records:
            if keep is not None:
                fields = {k: v for k, v in fields.items() if k in keep}
            if fields:
                ctx.out.record(fields, format_tagged(fields))


def _fstat_fields(
    ws: Workspace,
    depot: str,
    head: Row | None,
    have_rev: int | None,
    opened: Row | None,
    pending: list[Row],
    resolves: list[Row],
) -> dict[str, object]:
    fields: dict[str, object] = {"depotFile": depot, "clientFile": ws.depot_to_local(depot), "isMapped": ""}
    if head:
        fields.update(
            headAction=head["action"],
            headType=head["type"],
            headTime=head["time"],
            headRev=head["rev"],
            headChange=head["change"],
            headModTime=head["time"],
        )
    if have_rev:
        fields["haveRev"] = have_rev
    if opened:
        fields.update(
            action=opened["action"],
            change=opened["change"] or "default",
            type=opened["type"],
            actionOwner=opened["user"],
            workRev=display_rev(opened["rev"]),
        )
        if pending:
            fields["unresolved"] = ""
        elif resolves:
            fields["resolved"] = ""
    return fields


COMMANDS = {
    "add": Command("add", add, "add [ -c changelist# -f -n ] file ...", flags="c: f n", min_args=1),
    "edit": Command("edit", edit, "edit [ -c changelist# -k -n ] file ...", flags="c: k n", min_args=1),
    "delete": Command("delete", delete, "delete [ -c changelist# -n -k ] file ...", flags="c: n k", min_args=1),
    "revert": Command("revert", revert, "revert [ -n -k -c changelist# ] file ...", flags="n k c:", min_args=1),
    "reopen": Command("reopen", reopen, "reopen [ -c changelist# ] file ...", flags="c:", min_args=1),
    "opened": Command("opened", opened, "opened [ -c changelist# -m max ] [ file ... ]", flags="c: m:"),
    "fstat": Command(
        "fstat",
        fstat,
        "fstat [ -T fields -m max ] [ -Ro | -Ru ] file[rev] ...",
        flags="Ru Ro T: m:",
        min_args=1,
    ),
}
