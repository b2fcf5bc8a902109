"""submit: turn a pending change into depot revisions, renumbering it if newer changes exist."""

from __future__ import annotations

import os
import time

from p4sim import TYPE_CHECKING
from p4sim import messages as msg
from p4sim.commands import Command, Options
from p4sim.errors import P4Error, UsageError
from p4sim.server import triggers
from p4sim.server.depot import IntegRecord, NewRevision, add_revisions
from p4sim.workspace import read_file, set_writable

if TYPE_CHECKING:
    from p4sim.context import Context
    from p4sim.server.store import Row


def _change_to_submit(ctx: Context, opts: Options) -> int:
    store, client = ctx.store, ctx.settings.client
    description = opts.value("d")
    if description:
        # p4 first moves the default change's files into a new numbered change.
        default_files = store.opened(client, 0)
        if not default_files:
            raise P4Error(msg.NO_FILES_TO_SUBMIT_DEFAULT)
        number = store.create_change(client, ctx.user, description.rstrip("\n") + "\n")
        for row in default_files:
            store.reopen(client, row["file"], number)
        return number
    if not opts.get("c"):
        raise UsageError(msg.NO_INTERACTIVE.format(command="submit", hint="use 'submit -c N' or 'submit -d DESC'."))
    number = ctx.pending_change(opts.value("c"))
    if number == 0:
        raise COMMANDS["submit"].usage_error()
    change_row = ctx.store.change(number)
    assert change_row is not None, "pending_change found it"
    if change_row["user"] != ctx.user:
        raise P4Error(msg.CHANGE_OTHER_USER.format(change=number, user=change_row["user"]))
    return number


def _check_resolved(ctx: Context, change: int, files: list[Row]) -> None:
    store, client = ctx.store, ctx.settings.client
    pending = [f["file"] for f in files if any(r["how"] is None for r in store.resolves(client, f["file"]))]
    if pending:
        raise P4Error(
            msg.MERGES_PENDING,
            *(msg.MUST_RESOLVE.format(depot=f) for f in pending),
            msg.SUBMIT_FAILED.format(change=change),
        )
    # A file opened at an older revision than the head must be resolved first; p4 schedules it.
    stale = []
    for f in files:
        head = store.head(f["file"])
        if f["action"] in ("edit", "delete", "integrate") and head and f["rev"] < head["rev"]:
            store.schedule_resolves([(client, f["file"], f["file"], f["rev"], head["rev"], f["file"], f["rev"])])
            stale.append(msg.MUST_RESOLVE_REV.format(depot=f["file"], rev=head["rev"]))
    if stale:
        raise P4Error(*stale, msg.OUT_OF_DATE, msg.SUBMIT_FAILED.format(change=change))


def submit(ctx: Context, opts: Options, args: list[str]) -> None:
    store, client, ws = ctx.store, ctx.settings.client, ctx.workspace
    change = _change_to_submit(ctx, opts)
    files = store.opened(client, change)
    if not files:
        raise P4Error(msg.NO_FILES_TO_SUBMIT)
    if store.shelved(change):
        raise P4Error(msg.HAS_SHELVED.format(change=change))
    _check_resolved(ctx, change, files)
    triggers.validate(store, "submit", [f["file"] for f in files])
    revisions, integs = [], []
    for f in files:
        local = ws.mapped_local(f["file"])
        content = None
        if f["action"] != "delete":
            if not os.path.exists(local):
                raise P4Error(msg.OPEN_FOR_READ_FAILED.format(local=local), msg.SUBMIT_ABORTED.format(change=change))
            content = read_file(local)
        revisions.append(NewRevision(f["file"], f["action"], content))
        integs += [
            IntegRecord(f["file"], r["from_file"], r["start_rev"], r["end_rev"], r["how"])
            for r in store.resolves(client, f["file"])
            if r["from_file"] != f["file"]
        ]
    ctx.out.record({"change": change, "openFiles": len(files)}, msg.SUBMITTING.format(change=change), per_file=False)
    ctx.out.record({"locked": len(files)}, msg.LOCKING.format(count=len(files)), per_file=False)
    submitted = change
    if store.last_change_number() > change:
        submitted = store.next_change_number()
        store.renumber_change(change, submitted)
    now = int(time.time())
    new_revs = add_revisions(store, submitted, revisions, integs, when=now)
    store.update_change(submitted, status="submitted", time=now)
    store.set_have(client, [(r.file, 0 if r.action == "delete" else new_revs[r.file]) for r in revisions])
    store.close_files(client, [f["file"] for f in files])
    for r in revisions:
        set_writable(ws.mapped_local(r.file), False)
        ctx.out.record(
            {"depotFile": r.file, "rev": new_revs[r.file], "action": r.action},
            msg.SUBMITTED_FILE.format(action=r.action, depot=r.file, rev=new_revs[r.file]),
        )
    done = (
        msg.SUBMITTED.format(change=change)
        if submitted == change
        else msg.RENAMED_SUBMITTED.format(change=change, new=submitted)
    )
    ctx.out.record({"submittedChange": submitted}, done, per_file=False)


COMMANDS = {
    "submit": Command("submit", submit, "submit [ -c changelist# | -d description ]", flags="c: d:", max_args=0),
}
