"""integrate: open target files for branch, integrate or delete from source revisions.

What is already integrated comes from the integration records: a direct record credits the
source revisions it covered; a target revision that is a copy/branch of the source credits it
back (so dev branched from main has nothing new for main until dev changes). The last
credited source revision is the merge base that resolve will use.
"""

from __future__ import annotations

from p4sim import TYPE_CHECKING
from p4sim import messages as msg
from p4sim.commands import Command, Options
from p4sim.commands.select import file_args, revisions
from p4sim.errors import P4Error
from p4sim.view import Mapping, ViewLine, literal_prefix
from p4sim.workspace import remove_file, set_writable, write_file

if TYPE_CHECKING:
    from p4sim.context import Context
    from p4sim.server.store import Store

FILE_TYPE = "text"

# Rows for the store: opened (client, file, action, change, work rev, type, user); resolves
# (client, target, source, start, end, base file, base rev, how when no resolve is needed).
OpenedRow = tuple[str, str, str, int, int, str, str]
ResolveRow = tuple[str, str, str, int, int, str, int, "str | None"]


def rev_range(start: int, end: int) -> str:
    """p4 shows integrated source revisions start+1..end as `#5` or `#4,#5`."""
    return f"#{end}" if start + 1 >= end else f"#{start + 1},#{end}"


def _credits(store: Store, mapping: Mapping) -> dict[tuple[str, str], int]:
    credit: dict[tuple[str, str], int] = {}
    for line in mapping.lines:
        src_prefix, dst_prefix = literal_prefix(line.left), literal_prefix(line.right)
        for r in store.integs_between(src_prefix, dst_prefix):
            if r["from_file"].startswith(src_prefix) and r["to_file"].startswith(dst_prefix):
                key, rev = (r["from_file"], r["to_file"]), r["end_rev"]
            elif r["how"] in ("branch from", "copy from"):
                key, rev = (r["to_file"], r["from_file"]), r["to_rev"]
            else:
                continue
            credit[key] = max(credit.get(key, 0), rev)
    return credit


def _depot_pattern(ctx: Context, arg: str) -> str:
    ws = ctx.workspace
    if ws.is_depot_syntax(arg):
        return arg
    client_path = ws.to_client_syntax(arg)
    depot = ws.client_to_depot(client_path) if client_path else None
    if depot is None:
        raise P4Error(msg.per_arg(msg.NOT_IN_VIEW, arg))
    return depot


def _sources(ctx: Context, opts: Options, args: list[str]) -> tuple[Mapping, dict, str | None]:
    """The source->target mapping, source revisions selected, and the target argument text."""
    if opts.get("r") and not opts.get("b"):
        # -r reverses a branch view; without one there is nothing to reverse.
        raise COMMANDS["integrate"].usage_error()
    branch = opts.value("b")
    if branch:
        spec = ctx.store.spec("branch", branch)
        if spec is None:
            raise P4Error(msg.BRANCH_UNKNOWN.format(name=branch))
        lines = [ViewLine.parse(vl) for vl in spec["view"].splitlines() if vl.strip()]
        if opts.get("r"):
            # The view's right side becomes the source and its left side the target.
            lines = [ViewLine(line.right, line.left, line.exclude) for line in lines]
        mapping = Mapping(lines)
        targets = file_args(ctx, args) if args else None
        revspec = targets[0].revspec if targets else None
        sources = {}
        for line in mapping.lines:
            if line.exclude:
                continue
            fa = ctx.workspace.file_arg(line.left + (revspec or ""))
            for src, row in revisions(ctx, fa).items():
                dst = mapping.translate(src)
                if dst and (targets is None or any(t.matches(dst) for t in targets)):
                    sources[src] = row
        if not sources:
            ctx.out.warning(msg.NO_TARGET_IN_BRANCH)
        return mapping, sources, " ".join(args) if args else None
    if len(args) != 2:
        raise COMMANDS["integrate"].usage_error()
    src_fa = ctx.workspace.file_arg(args[0])
    src_path = _depot_pattern(ctx, src_fa.text)
    dst_path = _depot_pattern(ctx, args[1])
    src_fa = ctx.workspace.file_arg(src_path + (src_fa.revspec or ""))
    sources = revisions(ctx, src_fa)
    if not sources:
        ctx.out.warning(msg.per_arg(msg.NO_SUCH_FILES, args[0]))
    return Mapping([ViewLine(src_path, dst_path)]), sources, args[1]


def integrate(ctx: Context, opts: Options, args: list[str]) -> None:
    ws, store, client = ctx.workspace, ctx.store, ctx.settings.client
    change = ctx.pending_change(opts.value("c"))
    preview = bool(opts.get("n"))
    mapping, sources, target_arg = _sources(ctx, opts, args)
    if not sources:
        return
    credit = _credits(store, mapping)
    targets = {s: mapping.translate(s) for s in sources}
    target_heads = store.heads({t.rsplit("/", 1)[0] + "/" for t in targets.values() if t})
    opened = {r["file"] for r in store.opened(client)}
    have = store.have(client)
    opened_rows: list[OpenedRow] = []
    resolve_rows: list[ResolveRow] = []
    have_rows: list[tuple[str, int]] = []
    to_write: list[tuple[str, str]] = []
    acted = False
    for src in sorted(sources):
        dst, src_row = targets[src], sources[src]
        if dst is None or src_row is None:
            continue
        start, end = credit.get((src, dst), 0), src_row["rev"]
        dst_row = target_heads.get(dst)
        src_live = src_row["action"] != "delete"
        dst_live = dst_row is not None and dst_row["action"] != "delete"
        if end <= start or not (src_live or dst_live):
            continue
        acted = True
        local = ws.depot_to_local(dst)
        if local is None:
            ctx.out.warning(msg.per_arg(msg.NOT_IN_VIEW, dst))
            continue
        if dst in opened:
            ctx.out.info(msg.ALREADY_OPENED.format(target=dst))
            continue
        if src_live and not dst_live:
            action, how, work_rev = "branch", "branch/sync from", (dst_row["rev"] + 1 if dst_row else 1)
            to_write.append((local, src_row["digest"]))
            resolve_rows.append((client, dst, src, start, end, src, start, "branch from"))
            opened_rows.append((client, dst, action, change, 0, FILE_TYPE, ctx.user))
        else:
            assert dst_row is not None, "the target is live, or the source is: both deleted was skipped"
            work_rev = dst_row["rev"]
            if have.get(dst) != work_rev:  # the target is opened at its head revision
                to_write.append((local, dst_row["digest"]))
                have_rows.append((dst, work_rev))
            if src_live:
                action, how = "integrate", "integrate from"
                resolve_rows.append((client, dst, src, start, end, src, start, None))
            else:
                action, how = "delete", "delete from"
                resolve_rows.append((client, dst, src, start, end, src, start, "delete from"))
            opened_rows.append((client, dst, action, change, work_rev, FILE_TYPE, ctx.user))
        ctx.out.record(
            {
                "depotFile": dst,
                "clientFile": local,
                "workRev": work_rev,
                "action": action,
                "fromFile": src,
                "startFromRev": start or "none",
                "endFromRev": end,
            },
            msg.INTEGRATE_LINE.format(target=dst, rev=work_rev, how=how, source=src, revs=rev_range(start, end)),
        )
    if not acted:
        ctx.out.warning(msg.per_arg(msg.ALL_INTEGRATED, target_arg))
    if preview:
        return
    _apply(ctx, opened_rows, resolve_rows, have_rows, to_write)


def _apply(
    ctx: Context,
    opened_rows: list[OpenedRow],
    resolve_rows: list[ResolveRow],
    have_rows: list[tuple[str, int]],
    to_write: list[tuple[str, str]],
) -> None:
    store, client = ctx.store, ctx.settings.client
    store.open_files(opened_rows)
    store.schedule_resolves(r[:7] for r in resolve_rows)
    for r in resolve_rows:
        if r[7] is not None:  # branch and delete need no resolve: record how they were done
            store.mark_resolved(client, r[1], r[2], r[7])
    store.set_have(client, have_rows)
    contents = store.blobs(d for _, d in to_write)
    for local, digest in to_write:
        write_file(local, contents[digest], writable=True)
    for row in opened_rows:
        local = ctx.workspace.mapped_local(row[1])
        if row[2] == "delete":
            remove_file(local)
        else:
            set_writable(local, True)  # opened files are writable, as p4 makes them


COMMANDS = {
    "integrate": Command(
        "integrate",
        integrate,
        "integrate [ -c changelist# -n ] fromFile[revRange] toFile | [ -c changelist# -n ] -b branch [ -r ] "
        "[ toFile[revRange] ... ]",
        flags="c: n b: r",
    ),
}
COMMANDS["integ"] = COMMANDS["integrate"]
