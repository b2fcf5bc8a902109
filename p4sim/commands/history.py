"""changes and describe: the change list and one change in detail."""

from __future__ import annotations

import time

from p4sim import TYPE_CHECKING
from p4sim import messages as msg
from p4sim.commands import Command, Options
from p4sim.commands.select import change_limit, display_rev, file_args
from p4sim.errors import P4Error

if TYPE_CHECKING:
    from p4sim.context import Context
    from p4sim.server.store import Row


def _date(epoch: int, with_time: bool = False) -> str:
    return time.strftime("%Y/%m/%d %H:%M:%S" if with_time else "%Y/%m/%d", time.localtime(epoch))


def _status(row: Row, shelved: set[int]) -> str:
    return "shelved" if row["status"] == "pending" and row["change"] in shelved else row["status"]


# `changes -L` shows descriptions cut to this many characters (`p4 help changes`).
_LONG_CUT = 250
# The one-line form quotes this many characters of the description, newlines as spaces.
_SHORT_CUT = 31


def changes(ctx: Context, opts: Options, args: list[str]) -> None:
    store = ctx.store
    rows = store.changes()
    shelved = store.shelved_changes()
    if opts.get("s"):
        rows = [r for r in rows if opts["s"] in (r["status"], _status(r, shelved))]
    if opts.get("c"):
        rows = [r for r in rows if r["client"] == opts["c"]]
    if opts.get("u"):
        rows = [r for r in rows if r["user"] == opts["u"]]
    if args:
        wanted: set[int] = set()
        for fa in file_args(ctx, args):
            limit = change_limit(fa.revspec)
            for prefix in fa.prefixes:
                wanted |= {c for c, f in store.change_files(prefix) if fa.matches(f) and (limit is None or c <= limit)}
        rows = [r for r in rows if r["change"] in wanted]
    if opts.get("m"):
        rows = rows[: int(opts["m"])]
    long_form = bool(opts.get("l") or opts.get("L"))
    for r in rows:
        full = r["description"]
        desc = full[:_LONG_CUT] if opts.get("L") else full if opts.get("l") else full.replace("\n", " ")[:_SHORT_CUT]
        header = msg.CHANGES_LINE.format(
            change=r["change"],
            date=_date(r["time"], with_time=bool(opts.get("t"))),
            user=r["user"],
            client=r["client"],
            pending=" *pending*" if r["status"] == "pending" else "",
        )
        # The long form: the header without the description, a blank line, each description
        # line tab-indented, a blank line after.
        text = (
            f"{header}\n\n" + "\n".join(f"\t{line}" for line in desc.rstrip("\n").split("\n")) + "\n"
            if long_form
            else msg.CHANGES_SHORT.format(header=header, desc=desc)
        )
        ctx.out.record(
            {
                "change": r["change"],
                "time": r["time"],
                "user": r["user"],
                "client": r["client"],
                "status": _status(r, shelved),
                "changeType": "public",
                "desc": desc,
            },
            text,
        )


def normal_diff(old: bytes, new: bytes) -> list[str]:
    """`diff` (normal format) lines, as p4 describe prints them."""
    from difflib import SequenceMatcher

    a = old.decode("utf-8", "replace").splitlines()
    b = new.decode("utf-8", "replace").splitlines()

    def span(lo: int, hi: int) -> str:
        return str(lo + 1) if hi - lo == 1 else f"{lo + 1},{hi}"

    lines = []
    for tag, a1, a2, b1, b2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        if tag == "delete":
            lines.append(f"{span(a1, a2)}d{b1}")
        elif tag == "insert":
            lines.append(f"{a1}a{span(b1, b2)}")
        else:
            lines.append(f"{span(a1, a2)}c{span(b1, b2)}")
        lines += [f"< {line}" for line in a[a1:a2]]
        if tag == "replace":
            lines.append("---")
        lines += [f"> {line}" for line in b[b1:b2]]
    return lines


def describe(ctx: Context, opts: Options, args: list[str]) -> None:
    store = ctx.store
    for arg in args:
        row = store.change(int(arg)) if arg.isdigit() else None
        if row is None:
            raise P4Error(msg.CHANGE_UNKNOWN.format(change=arg))
        number, pending = row["change"], row["status"] == "pending"
        if opts.get("S"):
            files = [(r["file"], display_rev(r["rev"]), r["action"], r["digest"]) for r in store.shelved(number)]
        elif pending:
            files = [(r["file"], display_rev(r["rev"]), r["action"], None) for r in store.opened(row["client"], number)]
        else:
            files = [(r["file"], r["rev"], r["action"], r["digest"]) for r in store.revs_in_change(number)]
        header = msg.DESCRIBE_HEADER.format(
            change=number,
            user=row["user"],
            client=row["client"],
            date=_date(row["time"], True),
            pending=" *pending*" if pending else "",
        )
        lines = [header, ""] + [f"\t{line}" for line in row["description"].rstrip("\n").split("\n")] + [""]
        lines += ["Shelved files ..." if opts.get("S") else "Affected files ...", ""]
        lines += [f"... {f}#{rev} {action}" for f, rev, action, _ in files]
        if not opts.get("s") and not (pending and not opts.get("S")):
            lines += ["", "Differences ..."]
            for f, rev, action, digest in files:
                if action == "delete":
                    continue
                before = store.rev(f, rev - 1) if not opts.get("S") else store.rev(f, rev)
                lines += ["", f"==== {f}#{rev} (text) ====", ""]
                lines += normal_diff(
                    store.blob(before["digest"]) if before and before["digest"] else b"", store.blob(digest)
                )
        fields: dict[str, object] = {
            "change": number,
            "user": row["user"],
            "client": row["client"],
            "time": row["time"],
            "desc": row["description"],
            "status": _status(row, store.shelved_changes()),
            "changeType": "public",
        }
        for i, (f, rev, action, _) in enumerate(files):
            fields.update({f"depotFile{i}": f, f"action{i}": action, f"type{i}": "text", f"rev{i}": rev})
        ctx.out.record(fields, "\n".join(lines) + "\n", per_file=False)


COMMANDS = {
    "changes": Command(
        "changes",
        changes,
        "changes [ -t -l -L ] [ -c client ] [ -m max ] [ -s status ] [ -u user ] [ file[revRange] ... ]",
        flags="t l L c: m: s: u:",
    ),
    "describe": Command("describe", describe, "describe [ -s -S ] changelist# ...", flags="s S", min_args=1),
}
