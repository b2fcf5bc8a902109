"""client, branch and change: spec forms out (-o), in (-i) and deletion (-d)."""

from __future__ import annotations

import sys
import time

from p4sim import TYPE_CHECKING, specs
from p4sim import messages as msg
from p4sim.commands import Command, Options
from p4sim.errors import P4Error, UsageError

if TYPE_CHECKING:
    from p4sim.context import Context

CLIENT_OPTIONS = "noallwrite noclobber nocompress unlocked nomodtime normdir"


def _need_one_mode(command: str, opts: Options, hint: str) -> None:
    # Without -o/-i/-d real p4 opens $EDITOR; a caller without a terminal would hang.
    if not any(opts.get(f) for f in ("o", "i", "d")):
        raise UsageError(msg.NO_INTERACTIVE.format(command=command, hint=hint))


def _emit_spec(ctx: Context, kind: str, fields: specs.SpecFields) -> None:
    ctx.out.record(specs.tagged(fields), specs.render(kind, fields), per_file=False)


def _view_lines(fields: specs.SpecFields) -> str:
    view = fields.get("View") or []
    return "\n".join(view if isinstance(view, list) else [view])


def _required(kind: str, fields: specs.SpecFields, name: str) -> str:
    value = fields.get(name)
    if not value:
        raise P4Error(msg.SPEC_FIELD_MISSING.format(kind=kind, field=name))
    return value if isinstance(value, str) else "\n".join(value)


# -- client and branch: named specs with a view ------------------------------------------------
def _named_spec_fields(ctx: Context, kind: str, name: str) -> specs.SpecFields:
    """The stored spec, or the default p4 offers for a new one."""
    row = ctx.store.spec(kind, name)
    fields: specs.SpecFields = {kind.capitalize(): name}
    if row:
        fields["Update"] = specs.format_date(row["updated"])
        fields["Access"] = specs.format_date(row["accessed"])
    fields["Owner"] = row["owner"] if row else ctx.user
    if kind == "client":
        fields["Host"] = ""
    fields["Description"] = specs.description_lines(row["description"] if row else f"Created by {ctx.user}.\n")
    if kind == "client":
        fields["Root"] = row["root"] if row else ctx.settings.cwd
        fields["Options"] = row["options"] if row else CLIENT_OPTIONS
        fields["SubmitOptions"] = "submitunchanged"
        fields["LineEnd"] = "local"
        default_view = [f"//depot/... //{name}/..."]
    else:
        fields["Options"] = row["options"] if row else "unlocked"
        default_view = ["//depot/... //depot/..."]
    fields["View"] = row["view"].splitlines() if row else default_view
    return fields


def _named_spec(kind: str, ctx: Context, opts: Options, args: list[str]) -> None:
    label = kind.capitalize()
    if opts.get("i"):
        fields = specs.parse(sys.stdin.read())
        name = _required(label.lower(), fields, label)
        row = ctx.store.spec(kind, name)
        root = _required(kind, fields, "Root") if kind == "client" else None
        owner = specs.text(fields, "Owner") or ctx.user
        description = specs.description_text(fields) or ""
        options = specs.text(fields, "Options") or (CLIENT_OPTIONS if kind == "client" else "unlocked")
        view = _view_lines(fields)
        if row and (row["owner"], row["description"], row["root"], row["options"], row["view"]) == (
            owner,
            description,
            root,
            options,
            view,
        ):
            ctx.out.info(msg.SPEC_NOT_CHANGED.format(kind=label, name=name))
            return
        ctx.store.save_spec(kind, name, owner, description, root, options, view, int(time.time()))
        ctx.out.info(msg.SPEC_SAVED.format(kind=label, name=name))
        return
    named = args[0] if args else (ctx.settings.client if kind == "client" else None)
    if named is None:
        raise COMMANDS[kind].usage_error()
    name = named
    if opts.get("d"):
        if ctx.store.spec(kind, name) is None:
            raise P4Error((msg.CLIENT_UNKNOWN if kind == "client" else msg.BRANCH_UNKNOWN).format(name=name))
        ctx.store.delete_spec(kind, name)
        ctx.out.info(msg.SPEC_DELETED.format(kind=label, name=name))
        return
    _emit_spec(ctx, kind, _named_spec_fields(ctx, kind, name))


def client(ctx: Context, opts: Options, args: list[str]) -> None:
    _need_one_mode("client", opts, "use 'client -o' and 'client -i'.")
    _named_spec("client", ctx, opts, args)


def branch(ctx: Context, opts: Options, args: list[str]) -> None:
    _need_one_mode("branch", opts, "use 'branch -o' and 'branch -i'.")
    _named_spec("branch", ctx, opts, args)


# -- change ------------------------------------------------------------------------------------
def _change_fields(ctx: Context, number: int | None) -> specs.SpecFields:
    if number is None:
        files = ctx.store.opened(ctx.settings.client, 0)
        return {
            "Change": "new",
            "Client": ctx.settings.client,
            "User": ctx.user,
            "Status": "new",
            "Description": ["<enter description here>"],
            "Files": [f"{f['file']}\t# {f['action']}" for f in files],
        }
    row = ctx.store.change(number)
    if row is None:
        raise P4Error(msg.CHANGE_UNKNOWN.format(change=number))
    fields: specs.SpecFields = {
        "Change": str(number),
        "Date": specs.format_date(row["time"]),
        "Client": row["client"],
        "User": row["user"],
        "Status": row["status"],
        "Description": specs.description_lines(row["description"]),
    }
    if row["status"] == "pending":
        files = ctx.store.opened(row["client"], number)
        fields["Files"] = [f"{f['file']}\t# {f['action']}" for f in files]
    return fields


def _change_in(ctx: Context) -> None:
    fields = specs.parse(sys.stdin.read())
    description = specs.description_text(fields)
    if not description or description.strip() == "<enter description here>":
        raise P4Error(msg.SPEC_FIELD_MISSING.format(kind="change", field="Description"))
    listed = fields.get("Files") or []
    wanted = {line.split("#")[0].strip() for line in (listed if isinstance(listed, list) else [listed])}
    number_text = fields.get("Change", "new")
    client = ctx.settings.client
    if number_text == "new":
        number = ctx.store.create_change(client, specs.text(fields, "User") or ctx.user, description)
        created = True
    else:
        number = ctx.pending_change(str(number_text))
        ctx.store.update_change(number, description=description)
        created = False
    # Listed files join this change; for a new change they can only come from the default one.
    moved = 0
    for row in ctx.store.opened(client):
        if row["file"] in wanted and row["change"] != number and (not created or row["change"] == 0):
            ctx.store.reopen(client, row["file"], number)
            moved += 1
    if not created:
        ctx.out.info(msg.CHANGE_UPDATED.format(change=number))
    elif moved:
        ctx.out.info(msg.CHANGE_CREATED_FILES.format(change=number, count=moved))
    else:
        ctx.out.info(msg.CHANGE_CREATED.format(change=number))


def _change_delete(ctx: Context, number_text: str) -> None:
    number = ctx.pending_change(number_text)
    if number == 0:
        raise COMMANDS["change"].usage_error()
    files = ctx.store.opened(ctx.settings.client, number)
    if files:
        raise P4Error(msg.CHANGE_HAS_FILES.format(change=number, count=len(files)))
    if ctx.store.shelved(number):
        raise P4Error(msg.CHANGE_HAS_SHELVED.format(change=number))
    ctx.store.delete_change(number)
    ctx.out.info(msg.CHANGE_DELETED.format(change=number))


def change(ctx: Context, opts: Options, args: list[str]) -> None:
    _need_one_mode("change", opts, "use 'change -o' and 'change -i'.")
    if opts.get("i"):
        _change_in(ctx)
    elif opts.get("d"):
        if len(args) != 1:
            raise COMMANDS["change"].usage_error()
        _change_delete(ctx, args[0])
    else:
        if args and not args[0].isdigit():
            raise P4Error(msg.CHANGE_UNKNOWN.format(change=args[0]))
        _emit_spec(ctx, "change", _change_fields(ctx, int(args[0]) if args else None))


COMMANDS = {
    "client": Command("client", client, "client [ -o | -d | -i ] [ clientname ]", flags="o i d", max_args=1),
    "branch": Command("branch", branch, "branch [ -o | -d | -i ] branchspec", flags="o i d", max_args=1),
    "change": Command("change", change, "change [ -o | -d | -i ] [ changelist# ]", flags="o i d", max_args=1),
}
