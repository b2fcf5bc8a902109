"""Collects a command's messages and records, then renders them for the chosen output mode.

Modes: plain (info on stdout, warnings and errors on stderr), `-s` (every line tagged on
stdout plus `exit: N`), `-ztag` (records as `... key value` blocks), `-G` (Python marshal
dicts on stdout). Output is rendered after the command's transaction commits, so a slow
reader never holds the server lock; fault injection paces and truncates it here.
"""

from __future__ import annotations

import sys
import time

from p4sim import TYPE_CHECKING
from p4sim.faults import OutputFaults

if TYPE_CHECKING:
    from typing import TextIO

INFO, WARNING, ERROR, TEXT, RECORD = "info", "warning", "error", "text", "record"
_SEVERITY = {WARNING: 2, ERROR: 3}


class Entry:
    __slots__ = ("fields", "generic", "kind", "level", "per_file", "text")

    def __init__(
        self,
        kind: str,
        text: str | None = None,
        level: int = 0,
        fields: dict[str, object] | None = None,
        generic: int = 0,
        per_file: bool = False,
    ):
        self.kind, self.text, self.level, self.fields = kind, text, level, fields
        self.generic, self.per_file = generic, per_file


class Output:
    def __init__(self, mode: str = "plain", quiet: bool = False, faults: OutputFaults | None = None):
        self.mode = mode  # plain | s | ztag | G
        self.quiet = quiet
        self.faults = faults or OutputFaults()
        self.entries: list[Entry] = []
        self._lines_written = 0

    # -- collecting --------------------------------------------------------------------------
    def info(self, text: str, level: int = 0, per_file: bool = False) -> None:
        self.entries.append(Entry(INFO, text, level, per_file=per_file))

    def text(self, text: str) -> None:
        self.entries.append(Entry(TEXT, text))

    def warning(self, text: str, generic: int = 17) -> None:
        self.entries.append(Entry(WARNING, text, generic=generic))

    def error(self, text: str, generic: int = 0) -> None:
        self.entries.append(Entry(ERROR, text, generic=generic))

    def record(self, fields: dict[str, object], text: str | None = None, level: int = 0, per_file: bool = True) -> None:
        """One result: `fields` for -ztag/-G, `text` (may be None) for plain mode."""
        self.entries.append(Entry(RECORD, text, level, fields, per_file=per_file))

    @property
    def failed(self) -> bool:
        return any(e.kind == ERROR for e in self.entries)

    # -- rendering ---------------------------------------------------------------------------
    def flush(self) -> int:
        code = 1 if self.failed else 0
        for entry in self.entries:
            if entry.per_file and self.faults.delay_per_file:
                time.sleep(self.faults.delay_per_file)
            self._render(entry)
            if self.faults.delay_per_file:
                self._flush_streams()
        if self.mode == "s":
            self._write(sys.stdout, f"exit: {code}")
        self._flush_streams()
        return code

    def _render(self, e: Entry) -> None:
        if self.mode == "G":
            return self._write_marshal(self._marshal_dict(e))
        if e.kind == RECORD and self.mode == "ztag" and e.fields is not None:
            return self._write(sys.stdout, format_tagged(e.fields))
        if e.kind in (INFO, RECORD, TEXT) and self.quiet:
            return
        if e.text is None:
            return
        if self.mode == "s":
            tag = {WARNING: "warning", ERROR: "error", TEXT: "text"}.get(
                e.kind, "info" if e.level == 0 else f"info{e.level}"
            )
            return self._write(sys.stdout, "\n".join(f"{tag}: {line}" for line in e.text.split("\n")))
        stream = sys.stderr if e.kind in (WARNING, ERROR) else sys.stdout
        # The p4 client, not the server, marks a level-N info line with N `... ` prefixes, and
        # only in plain output: -s says `infoN:` instead and -G carries the level as a field.
        self._write(stream, "... " * e.level + e.text)

    def _marshal_dict(self, e: Entry) -> dict[bytes, object]:
        if e.kind == RECORD and e.fields is not None:
            return {b"code": b"stat", **{k.encode(): _b(v) for k, v in e.fields.items()}}
        if e.kind in (WARNING, ERROR):
            return {
                b"code": b"error",
                b"data": _b(f"{e.text}\n"),
                b"severity": _SEVERITY[e.kind],
                b"generic": e.generic,
            }
        if e.kind == TEXT:
            return {b"code": b"text", b"data": _b(f"{e.text}\n")}
        return {b"code": b"info", b"data": _b(e.text or ""), b"level": e.level}

    def _write(self, stream: TextIO, text: str) -> None:
        for line in text.split("\n"):
            stream.write(line + "\n")
            self._count_line()

    def _write_marshal(self, record: dict[bytes, object]) -> None:
        import marshal

        sys.stdout.buffer.write(marshal.dumps(record, 0))
        self._count_line()

    def _count_line(self) -> None:
        self._lines_written += 1
        if self.faults.die_after_lines is not None and self._lines_written >= self.faults.die_after_lines:
            self._flush_streams()
            self.faults.die()

    @staticmethod
    def _flush_streams() -> None:
        sys.stdout.flush()
        sys.stderr.flush()


def _b(value: object) -> bytes:
    return str(value).encode("utf-8", "surrogateescape")


def format_tagged(fields: dict[str, object]) -> str:
    # An empty value prints as a bare key (e.g. fstat's "... unresolved"); records end blank.
    lines = [f"... {k} {v}" if v != "" else f"... {k}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"
