"""Parsers for what p4 prints (see docs/p4-behaviour.md). Pure functions over text.

p4 reports warnings with exit code 0 and puts them on stderr (one server printed some on
stdout), so callers pass both streams where a message may appear in either.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# ---------------------------------------------------------------------------- -ztag records


def parse_ztag(text: str) -> list[dict[str, str]]:
    """`... key value` lines, records separated by blank lines. A key without a value
    (`... unresolved`) maps to "". A line without the `... ` prefix continues the previous
    value (multi-line descriptions)."""
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last_key: str | None = None
    for line in text.splitlines():
        if not line.strip():
            if current:
                records.append(current)
            current, last_key = {}, None
        elif line.startswith("... "):
            key, _, value = line[4:].partition(" ")
            current[key] = value
            last_key = key
        elif last_key is not None:
            current[last_key] += "\n" + line
    if current:
        records.append(current)
    return records


def parse_ztag_spec(text: str) -> dict[str, str]:
    """One spec (`branch -o`, `client -o`): its fields as one dict. A multi-line field such
    as Description ends with a newline, which -ztag prints as a blank line inside the spec,
    so the "records" are parts of the same spec."""
    spec: dict[str, str] = {}
    for record in parse_ztag(text):
        spec.update(record)
    return spec


def view_mappings(spec: dict[str, str]) -> list[tuple[str, str]]:
    """(source, target) pairs of a spec's View0, View1, ... fields, without exclusions
    (`-//a/... //b/...`); paths containing spaces are double-quoted by p4."""
    pairs = []
    for index in range(len(spec)):
        line = spec.get(f"View{index}")
        if line is None:
            break
        tokens = [a or b for a, b in re.findall(r'"([^"]*)"|(\S+)', line)]
        if len(tokens) != 2 or tokens[0].startswith("-"):
            continue
        pairs.append((tokens[0].lstrip("+"), tokens[1].lstrip("+")))
    return pairs


# ---------------------------------------------------------------------------- change numbers

_CREATED = re.compile(r"^Change (\d+) created\b", re.M)
_RENAMED = re.compile(r"^Change (\d+) renamed change (\d+) and submitted\.", re.M)
_SUBMITTED = re.compile(r"^Change (\d+) submitted\.", re.M)
_ZTAG_SUBMITTED = re.compile(r"^\.\.\. submittedChange (\d+)", re.M)


def created_change(text: str) -> int | None:
    """`Change 123 created.` / `Change 123 created with 2 open file(s).`"""
    m = _CREATED.search(text)
    return int(m.group(1)) if m else None


def submitted_change(text: str) -> tuple[int, str] | None:
    """The number the change got when submitted (the server may renumber it), and the line
    that said so."""
    for pattern, group in ((_RENAMED, 2), (_SUBMITTED, 1), (_ZTAG_SUBMITTED, 1)):
        m = pattern.search(text)
        if m:
            return int(m.group(group)), m.group(0)
    return None


class ChangeEntry(NamedTuple):
    number: int
    header: str  # the `Change N on DATE by USER@CLIENT [*pending*]` line
    description: str


_LONG_HEADER = re.compile(r"^Change (\d+) on \S+(?: \S+)? by \S+@\S+")


def long_changes(text: str) -> list[ChangeEntry]:
    """`p4 changes -l`: each header line, then its description with every line tab-indented
    (blank lines around it). Lines of neither kind are ignored."""
    entries: list[ChangeEntry] = []
    number, header, desc = 0, "", list[str]()
    for line in text.splitlines():
        m = _LONG_HEADER.match(line)
        if m:
            if header:
                entries.append(ChangeEntry(number, header, "\n".join(desc)))
            number, header, desc = int(m.group(1)), line, list[str]()
        elif header and line.startswith("\t"):
            desc.append(line[1:])
    if header:
        entries.append(ChangeEntry(number, header, "\n".join(desc)))
    return entries


# ---------------------------------------------------------------------------- resolve


class Chunks(NamedTuple):
    yours: int
    theirs: int
    both: int
    conflicting: int


_CHUNKS = re.compile(r"Diff chunks: (\d+) yours \+ (\d+) theirs \+ (\d+) both \+ (\d+) conflicting")


def diff_chunks(line: str) -> Chunks | None:
    m = _CHUNKS.search(line)
    return Chunks(*map(int, m.groups())) if m else None


# Result lines: `<client path> - merge from <source>`, `- copy from`, `- ignored`,
# `- edit from`, `- resolve skipped.`
_RESOLVE_RESULT = re.compile(r" - (merge from|copy from|ignored|edit from|resolve skipped\.)")
_RESULT_NAMES = {
    "merge from": "merged",
    "copy from": "copied",
    "ignored": "ignored",
    "edit from": "edited",
    "resolve skipped.": "skipped",
}


def resolve_results(text: str) -> dict[str, int]:
    """How many files each resolve result applied to (merged, copied, ignored, edited,
    skipped), and how many had conflicting chunks (why -as/-am skip)."""
    counts = dict.fromkeys([*_RESULT_NAMES.values(), "conflicting"], 0)
    for line in text.splitlines():
        if m := _RESOLVE_RESULT.search(line):
            counts[_RESULT_NAMES[m.group(1)]] += 1
        elif (chunks := diff_chunks(line)) and chunks.conflicting:
            counts["conflicting"] += 1
    return counts


_RESOLVE_HEADER = re.compile(r"^(.+?) - (?:merging|vs) \S")


def pending_resolves(stdout: str) -> list[str]:
    """Files `resolve -n` lists: clientFile of -ztag records, or the local path of plain
    header lines (`<local> - merging <source>#4,#5`) when a server ignored -ztag."""
    files = [r["clientFile"] for r in parse_ztag(stdout) if "clientFile" in r]
    if files:
        return files
    return [m.group(1) for line in stdout.splitlines() if (m := _RESOLVE_HEADER.match(line))]


_MUST_RESOLVE = re.compile(r"^(//.+?) - must resolve\b", re.M)


def must_resolve(text: str) -> list[str]:
    """Depot paths from submit's `<depot> - must resolve before submitting` lines."""
    return _MUST_RESOLVE.findall(text)


# ---------------------------------------------------------------------------- conflict markers

# What p4 writes into a file resolved with its conflicts left in (`resolve -af`, or an editor
# session that kept them): the base, theirs and yours versions of each conflicting chunk.
CONFLICT_MARKERS = (">>>> ORIGINAL", "==== THEIRS", "==== YOURS", "<<<<")
_FILE_HEADER = re.compile(r"^==== (.+?)#\d+ - (.+) ====$")
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")


class Marker(NamedTuple):
    file: str  # the workspace file, as `p4 diff` names it
    line: int  # 1-based, in the workspace file
    text: str


def conflict_markers(diff: str) -> list[Marker]:
    """Conflict markers that `p4 diff -du` shows as added lines: the header
    `==== //depot/f#3 - /ws/f ====` names the file, `@@ -a,b +c,d @@` numbers its lines. A
    marker already in the depot revision is a context line, not added by this resolve, and
    is not reported. (A `--- a` / `+++ b` pair, as other diff tools print, also names the file.)"""
    found: list[Marker] = []
    file, line, previous = "", 0, ""
    for text in diff.splitlines():
        if m := _FILE_HEADER.match(text):
            file, line = m.group(2), 0
        elif text.startswith("+++ ") and previous.startswith("--- "):
            file, line = text[4:].split("\t")[0], 0
        elif m := _HUNK.match(text):
            line = int(m.group(1))
        elif text.startswith("+"):
            if text[1:].startswith(CONFLICT_MARKERS):
                found.append(Marker(file, line, text[1:].rstrip()))
            line += 1
        elif text.startswith(" "):
            line += 1
        previous = text
    return found


# ---------------------------------------------------------------------------- messages

# Warnings are not the line that explains a failure; skip them when another line exists.
_WARNINGS = (
    "file(s) up-to-date",
    "no such file(s)",
    "no file(s) to resolve",
    "all revision(s) already integrated",
    "file(s) not opened on this client",
)
_CONNECTION = (
    "connect to server failed",
    "tcp connect to",
    "tcp receive failed",
    "tcp send failed",
    "partner exited unexpectedly",
    "connection refused",
    "connection reset",
    "ssl receive failed",
    "ssl send failed",
)
_AUTH = (
    "your session has expired, please login again",
    "perforce password (p4passwd) invalid or unset",
)


def contains(text: str, fragment: str) -> str | None:
    """The first line of `text` containing `fragment` (case-insensitive), stripped."""
    fragment = fragment.lower()
    for line in text.splitlines():
        if fragment in line.lower():
            return line.strip()
    return None


def _messages(stderr: str) -> list[str]:
    """stderr as messages: a line plus the tab-indented detail lines after it, joined."""
    messages: list[str] = []
    for line in stderr.splitlines():
        if line.startswith("\t") and messages:
            messages[-1] += " " + line.strip()
        elif line.strip():
            messages.append(line.strip())
    return messages


def connection_error(stderr: str) -> str | None:
    """The whole connection-failure message (`Perforce client error: Connect to server
    failed; check $P4PORT. TCP connect to ... failed.`), or None."""
    for message in _messages(stderr):
        if any(marker in message.lower() for marker in _CONNECTION):
            return message
    return None


def auth_error(stderr: str) -> str | None:
    for line in stderr.splitlines():
        if any(marker in line.lower() for marker in _AUTH):
            return line.strip()
    return None


def error_line(stderr: str, stdout: str = "") -> str:
    """The p4 line that matters for a failure: the first stderr line that is not blank, not
    tab-indented detail and not a known warning; connection failures keep their detail.
    Falls back to any stderr line, then the last stdout line."""
    if connection := connection_error(stderr):
        return connection
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("\t")]
    for line in lines:
        if not any(w in line.lower() for w in _WARNINGS):
            return line
    if lines:
        return lines[0]
    return last_line(stdout)


def last_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return ""
