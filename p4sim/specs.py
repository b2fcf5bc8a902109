"""p4 spec forms (client, branch, change): render for `-o`, parse what `-i` reads.

A form is `Field:\tvalue` lines or `Field:` followed by tab-indented lines, separated by blank
lines, after a `#` comment header. Parsed values are str (one-line fields) or list[str].
"""

from __future__ import annotations

import time

SpecFields = dict[str, "str | list[str]"]

HEADERS = {
    "client": """# A Perforce Client Specification.
#
#  Client:      The client name.
#  Update:      The date this specification was last modified.
#  Access:      The date this client was last used in any way.
#  Owner:       The Perforce user name of the user who owns the client
#               workspace. The default is the user who created the
#               client workspace.
#  Host:        If set, restricts access to the named host.
#  Description: A short description of the client (optional).
#  Root:        The base directory of the client workspace.
#  Options:     Client options:
#                      [no]allwrite [no]clobber [no]compress
#                      [un]locked [no]modtime [no]rmdir
#  SubmitOptions:
#                      submitunchanged/submitunchanged+reopen
#                      revertunchanged/revertunchanged+reopen
#                      leaveunchanged/leaveunchanged+reopen
#  LineEnd:     Text file line endings on client: local/unix/mac/win/share.
#  View:        Lines to map depot files into the client workspace.
#
# Use 'p4 help client' to see more about client views and options.
""",
    "branch": """# A Perforce Branch Specification.
#
#  Branch:      The branch name.
#  Update:      The date this specification was last modified.
#  Access:      The date of the last 'integrate' using this branch.
#  Owner:       The user who created this branch.
#  Description: A short description of the branch (optional).
#  Options:     Branch update options: [un]locked
#  View:        Lines mapping of one view of depot files to another.
#               Left-hand files are sources; right-hand files are targets.
#
# Use 'p4 help branch' to see more about branch views.
""",
    "change": """# A Perforce Change Specification.
#
#  Change:      The change number. 'new' on a new changelist.
#  Date:        The date this specification was last modified.
#  Client:      The client on which the changelist was created.  Read-only.
#  User:        The user who created the changelist.
#  Status:      Either 'pending' or 'submitted'. Read-only.
#  Type:        Either 'public' or 'restricted'. Default is 'public'.
#  Description: Comments about the changelist.  Required.
#  Jobs:        What opened jobs are to be closed by this changelist.
#               You may delete jobs from this list.  (New changelists only.)
#  Files:       What opened files from the default changelist are to be added
#               to this changelist.  You may delete files from this list.
#               (New changelists only.)
""",
}


def format_date(epoch: float) -> str:
    return time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(epoch))


def render(kind: str, fields: SpecFields) -> str:
    parts = [HEADERS[kind]]
    for name, value in fields.items():
        if isinstance(value, list) and not value:
            continue  # p4 leaves out an empty list field (e.g. a change without files)
        if isinstance(value, list):
            parts.append(f"{name}:\n" + "".join(f"\t{line}\n" for line in value))
        else:
            parts.append(f"{name}:\t{value}\n")
    return "\n".join(parts)


def tagged(fields: SpecFields) -> dict[str, object]:
    """The -ztag/-G form: list fields become Name0, Name1, ...; Description stays one value."""
    out: dict[str, object] = {}
    for name, value in fields.items():
        if name == "Description" and isinstance(value, list):
            out[name] = "\n".join(value) + "\n"
        elif isinstance(value, list):
            out.update((f"{name}{i}", line) for i, line in enumerate(value))
        else:
            out[name] = value
    return out


def parse(text: str) -> SpecFields:
    fields: SpecFields = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if raw[:1] in ("\t", " ") and current is not None:
            current.append(raw.strip())
            continue
        if not raw.strip():
            continue
        name, sep, value = raw.partition(":")
        if not sep:
            continue
        if value.strip():
            fields[name.strip()] = value.strip()
            current = None
        else:
            current = []
            fields[name.strip()] = current
    # Trailing blank lines inside a multi-line field are not part of it.
    for field_value in fields.values():
        while isinstance(field_value, list) and field_value and not field_value[-1]:
            field_value.pop()
    return fields


def description_lines(description: str) -> list[str]:
    return description.rstrip("\n").split("\n")


def text(fields: SpecFields, name: str) -> str | None:
    """A field as one string (the lines of a multi-line field joined); None if absent."""
    value = fields.get(name)
    return "\n".join(value) if isinstance(value, list) else value


def description_text(fields: SpecFields) -> str | None:
    value = fields.get("Description")
    if value is None:
        return None
    lines = value if isinstance(value, list) else [value]
    return "\n".join(lines) + "\n"
