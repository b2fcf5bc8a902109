"""The agent's durable record of every command: ``<spool_dir>/<cmd_id>/``.

Files per command (the directory's existence is what makes an Exec a duplicate):
- ``spec``   msgpack SpoolEntry: the CmdSpec (a secret stdin removed), job, workspace, time
- ``pid``    "<pid> <start ticks>" of the process-group leader (start ticks tell a reused pid)
- ``stdout``, ``stderr``  raw output bytes; byte offset N of a LogChunk is byte N here
- ``result`` msgpack CmdStatus, written atomically (tmp + fsync + rename): present = finished

This module only stores and reads; deciding what a missing result means is the caller's job.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import msgspec

from common import protocol as proto

STREAM_FILES = {proto.STDOUT: "stdout", proto.STDERR: "stderr"}
# cmd_ids become directory names: refuse anything that could escape the spool or hide.
_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")


class SpoolEntry(msgspec.Struct, omit_defaults=True):
    spec: proto.CmdSpec
    job_id: str = ""
    workspace: str | None = None
    received_at: float = 0.0


def valid_cmd_id(cmd_id: str) -> bool:
    return bool(_SAFE_ID.match(cmd_id))


def _write_atomic(path: Path, data: bytes, durable: bool) -> None:
    """Readers see the old file or the new one, never a torn one (tmp + rename).

    ``durable`` also survives a power cut (fsync of file and directory). Only the spec needs
    that: it is what makes a resent EXEC a duplicate instead of a second run. The pid and the
    result survive a crash of the agent process without it (the page cache is the kernel's),
    and a power cut kills the command anyway; sparing their fsyncs keeps them off the
    dispatch round trip.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class Spool:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # Output may contain anything a p4 command prints: only the agent's user may read it.
        os.chmod(self.root, 0o700)

    def dir(self, cmd_id: str) -> Path:
        if not valid_cmd_id(cmd_id):
            raise ValueError(f"invalid cmd_id {cmd_id!r}")
        return self.root / cmd_id

    def exists(self, cmd_id: str) -> bool:
        return self.dir(cmd_id).is_dir()

    def create(self, cmd_id: str, entry: SpoolEntry) -> None:
        """Record a command before anything runs; raises FileExistsError for a known cmd_id."""
        d = self.dir(cmd_id)
        d.mkdir(mode=0o700)
        if entry.spec.stdin_secret:
            entry = msgspec.structs.replace(entry, spec=msgspec.structs.replace(entry.spec, stdin=None))
        _write_atomic(d / "spec", proto.encode(entry), durable=True)
        # The output files are created by the output thread when it opens them, off this path.

    def read_spec(self, cmd_id: str) -> SpoolEntry | None:
        try:
            return proto.decode((self.dir(cmd_id) / "spec").read_bytes(), SpoolEntry)
        except (FileNotFoundError, proto.ProtocolError):
            return None

    def write_pid(self, cmd_id: str, pid: int, start_ticks: int | None) -> None:
        _write_atomic(self.dir(cmd_id) / "pid", f"{pid} {start_ticks or 0}\n".encode(), durable=False)

    def read_pid(self, cmd_id: str) -> tuple[int, int | None] | None:
        try:
            pid, ticks = (self.dir(cmd_id) / "pid").read_text().split()
            return int(pid), int(ticks) or None
        except (FileNotFoundError, ValueError):
            return None

    def output_path(self, cmd_id: str, stream: int) -> Path:
        return self.dir(cmd_id) / STREAM_FILES[stream]

    def output_size(self, cmd_id: str, stream: int) -> int:
        try:
            return self.output_path(cmd_id, stream).stat().st_size
        except FileNotFoundError:
            return 0

    def read_range(self, cmd_id: str, stream: int, offset: int, size: int) -> tuple[bytes, int]:
        """(bytes at [offset, offset+size), current total size of the stream)."""
        try:
            f = open(self.output_path(cmd_id, stream), "rb")
        except FileNotFoundError:
            return b"", 0  # known command, nothing written yet
        with f:
            total = os.fstat(f.fileno()).st_size
            f.seek(offset)
            return f.read(max(0, min(size, total - offset))), total

    def write_result(self, status: proto.CmdStatus) -> None:
        _write_atomic(self.dir(status.cmd_id) / "result", proto.encode(status), durable=False)

    def has_result(self, cmd_id: str) -> bool:
        return (self.dir(cmd_id) / "result").exists()

    def read_result(self, cmd_id: str) -> proto.CmdStatus | None:
        try:
            return proto.decode((self.dir(cmd_id) / "result").read_bytes(), proto.CmdStatus)
        except FileNotFoundError:
            return None

    def cmd_ids(self) -> list[str]:
        return [p.name for p in self.root.iterdir() if p.is_dir() and valid_cmd_id(p.name)]

    def unfinished(self) -> list[str]:
        return [c for c in self.cmd_ids() if not self.has_result(c)]

    def finished_since(self, since: float) -> list[tuple[float, str]]:
        """(finish time, cmd_id) of results written at or after ``since`` (wall clock), oldest first."""
        out = []
        for c in self.cmd_ids():
            try:
                mtime = (self.root / c / "result").stat().st_mtime
            except FileNotFoundError:
                continue
            if mtime >= since:
                out.append((mtime, c))
        return sorted(out)

    def prune(self, max_age_s: float, now: float | None = None) -> list[str]:
        """Remove finished commands whose result is older than ``max_age_s``; running ones stay."""
        cutoff = (time.time() if now is None else now) - max_age_s
        removed = []
        for c in self.cmd_ids():
            try:
                if (self.root / c / "result").stat().st_mtime < cutoff:
                    shutil.rmtree(self.root / c, ignore_errors=True)
                    removed.append(c)
            except FileNotFoundError:
                continue
        return removed
