"""The agent's durable record of every command: ``<spool_dir>/<cmd_id>/``.

Files per command (the directory's existence is what makes an Exec a duplicate):
- ``spec``   msgpack SpoolEntry: the CmdSpec (a secret stdin removed), job, workspace, time
- ``pid``    "<pid> <start ticks> <keeper pid>" of the process-group leader (start ticks tell a
  reused pid), written by the keeper once the command runs; its mtime is the start time
- ``stdout``, ``stderr``  output bytes (redacted), written by the keeper; byte offset N of a
  LogChunk is byte N here
- ``exit``   how the command ended: a KeeperExit (4-byte length + msgpack) in a record reserved
  with the spec and filled in place by its keeper when it ends. Its keeper flock()s it from
  before the command starts until the exit is recorded. (Entries made by agents from before
  2026-12 have a separate ``keeper`` file for that lock, honoured while their keepers run.)
Only spec and exit are made before the command starts (one journal commit, ``sync``, makes
both durable); everything else is made while it runs.
- ``published`` "<stdout offset> <stderr offset>": how far the agent had published, saved about
  once a second, so a restarted agent resumes there (tail drops the little it sends twice)
- ``result`` msgpack CmdStatus, written atomically (tmp + fsync + rename): present = finished

This module only stores and reads; deciding what a missing result means is the caller's job.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
from pathlib import Path
from typing import NamedTuple

import msgspec

from common import protocol as proto

STREAM_FILES = {proto.STDOUT: "stdout", proto.STDERR: "stderr"}
# The exit record's reserved size, and the most of its text that is kept.
EXIT_RECORD = 4096
EXIT_TEXT_MAX = 1024
# cmd_ids become directory names: refuse anything that could escape the spool or hide.
_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")


class KeeperExit(msgspec.Struct, omit_defaults=True):
    """What a command's keeper saw of its end (agent/keeper.py)."""

    returncode: int  # Popen's: negative = killed by that signal
    ended_at: float
    # The SSH executor's keeper answered a kill by cutting the session: the signal it stood for.
    cut: int | None = None
    # Output that could not be written to the spool (and so was never published either).
    spool_error: str = ""


class SpoolEntry(msgspec.Struct, omit_defaults=True):
    spec: proto.CmdSpec
    job_id: str = ""
    workspace: str | None = None
    received_at: float = 0.0


class Pids(NamedTuple):
    pid: int  # the command's process-group leader
    ticks: int | None  # its start time in clock ticks
    keeper: int | None  # its keeper's pid (None: spooled by an agent from before keepers)
    started_at: float  # wall clock: when the keeper recorded the start


def valid_cmd_id(cmd_id: str) -> bool:
    return bool(_SAFE_ID.match(cmd_id))


def _write_new(path: Path, data: bytes) -> None:
    """A file that must not exist yet, with ``data``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]  # a full disk raises ENOSPC here
    finally:
        os.close(fd)


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

    def free_bytes(self) -> int | None:
        """Bytes an unprivileged writer may still use on the spool's filesystem."""
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def dir(self, cmd_id: str) -> Path:
        if not valid_cmd_id(cmd_id):
            raise ValueError(f"invalid cmd_id {cmd_id!r}")
        return self.root / cmd_id

    def exists(self, cmd_id: str) -> bool:
        return self.dir(cmd_id).is_dir()

    def create(self, cmd_id: str, entry: SpoolEntry, durable: bool = True) -> None:
        """Record a command before anything runs, with its reserved exit record; raises
        FileExistsError for a known cmd_id. (Each file made here is a journal entry that the
        dispatch waits for; the output files are made by the keeper while the command runs.)

        A failed write (a full disk) leaves nothing behind: a half-made directory would make
        every resend of the same cmd_id fail with FileExistsError. ``durable=False``: the
        caller makes it durable with ``sync`` before the command may start.

        The spec is written in place, not through a temporary file: the directory is new, and
        a spec torn by a crash belongs to a command that never started (nothing starts before
        ``sync``), which recovery records as such."""
        d = self.dir(cmd_id)
        d.mkdir(mode=0o700)
        if entry.spec.stdin_secret:
            entry = msgspec.structs.replace(entry, spec=msgspec.structs.replace(entry.spec, stdin=None))
        try:
            _write_new(d / "spec", proto.encode(entry))
            # Reserved, so that a disk the command fills cannot keep its keeper from recording
            # how it ended (filled in place, not renamed); also the keeper's lock.
            _write_new(d / "exit", bytes(EXIT_RECORD))
            if durable:
                self.sync(cmd_id)
        except OSError:
            shutil.rmtree(d, ignore_errors=True)
            raise

    def sync(self, cmd_id: str) -> None:
        """Make what ``create(durable=False)`` wrote survive a power cut: the spec and its
        directory (with every entry made in it so far) are fsynced."""
        d = self.dir(cmd_id)
        for path, flags in ((d / "spec", os.O_RDONLY), (d, os.O_RDONLY | os.O_DIRECTORY)):
            fd = os.open(path, flags | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def discard(self, cmd_id: str) -> None:
        """Forget a command that never started (its keeper could not be made): a resend may run it."""
        shutil.rmtree(self.dir(cmd_id), ignore_errors=True)

    def read_spec(self, cmd_id: str) -> SpoolEntry | None:
        try:
            return proto.decode((self.dir(cmd_id) / "spec").read_bytes(), SpoolEntry)
        except (FileNotFoundError, proto.ProtocolError):
            return None

    def write_pid(self, cmd_id: str, pid: int, start_ticks: int | None, keeper: int) -> None:
        _write_atomic(self.dir(cmd_id) / "pid", f"{pid} {start_ticks or 0} {keeper}\n".encode(), durable=False)

    def read_pid(self, cmd_id: str) -> Pids | None:
        try:
            path = self.dir(cmd_id) / "pid"
            fields = path.read_text().split()
            pid, ticks = int(fields[0]), int(fields[1]) or None
            # No keeper field: written by an agent from before keepers, whose pipes died with it.
            keeper = int(fields[2]) if len(fields) > 2 else None
            return Pids(pid, ticks, keeper, path.stat().st_mtime)
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def keeper_lock_path(self, cmd_id: str) -> Path:
        """What a command's keeper flock()s while it keeps the command: the exit record, or the
        ``keeper`` file of an entry made before 2026-12 (its keeper may outlive an upgrade)."""
        d = self.dir(cmd_id)
        old = d / "keeper"
        return old if old.exists() else d / "exit"

    def keeper_alive(self, cmd_id: str) -> bool:
        """True while the command's keeper lives: it holds the lock until it exits (whatever
        ends it), and no pid can be mistaken for it."""
        try:
            fd = os.open(self.keeper_lock_path(cmd_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def take_keeper_lock(self, cmd_id: str) -> int | None:
        """The keeper lock, held (the fd; close it to release) if no keeper holds it: while it
        is held no keeper can start the command. None if a keeper holds it."""
        fd = os.open(self.keeper_lock_path(cmd_id), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
            return None

    def write_exit(self, cmd_id: str, ended: KeeperExit) -> None:
        """Fill the reserved record. In place is safe: it is read only once its keeper is gone."""
        data = proto.encode(msgspec.structs.replace(ended, spool_error=ended.spool_error[:EXIT_TEXT_MAX]))
        fd = os.open(self.dir(cmd_id) / "exit", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.pwrite(fd, len(data).to_bytes(4, "big") + data, 0)
        finally:
            os.close(fd)

    def read_exit(self, cmd_id: str) -> KeeperExit | None:
        """None until the keeper has recorded the exit (a reserved record is all zeros)."""
        try:
            record = (self.dir(cmd_id) / "exit").read_bytes()
            size = int.from_bytes(record[:4], "big")
            return proto.decode(record[4 : 4 + size], KeeperExit) if size else None
        except (FileNotFoundError, proto.ProtocolError):
            return None

    def write_published(self, cmd_id: str, stdout: int, stderr: int) -> None:
        _write_atomic(self.dir(cmd_id) / "published", f"{stdout} {stderr}\n".encode(), durable=False)

    def read_published(self, cmd_id: str) -> tuple[int, int]:
        try:
            out, err = (self.dir(cmd_id) / "published").read_text().split()
            return int(out), int(err)
        except (FileNotFoundError, ValueError):
            return 0, 0

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
