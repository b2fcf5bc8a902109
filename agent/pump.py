"""The output thread: it tails every running command's spool files and owns the PUB socket.

Why one thread: it keeps event stamping hole-free (one Stamper, one socket, one thread) and
moves output in big blocks with a single selector instead of a thread per command. Each
command's keeper (agent/keeper.py) writes its output, already redacted, to the spool files and
pokes a notify pipe after each write; this thread, per command,
- reads what is new in the files into a chunk buffer; a chunk (full at ``chunk_bytes``, or
  older than ``flush_ms``, never a message per line) is published as a LogChunk at its byte
  offset in the file, so every byte an event announces can already be fetched;
- saves how far it has published (``published``) about once a second, where a restarted agent
  resumes;
- enforces the timeout and kill requests: SIGTERM to the whole command (through its executor
  handle), SIGKILL after ``kill_grace_s``;
- when the keeper has recorded the exit (DONE on the notify pipe, or EOF if it died; for a
  command re-attached after a restart, whose notify pipe died with the old agent, the keeper's
  lock is polled): publishes the rest of the files, gives the keeper back for another
  command (``Kept.release``), builds the status from the keeper's ``exit`` record, lets the handle
  conclude it, writes the result to the spool, THEN publishes CmdDone, then hands the status to
  the session thread.
The session thread talks to it only through ``start_cmd``/``kill``/``publish_done``/``shutdown``
(callables queued to this thread) and reads finished statuses from ``done_fd``/``take_done``.
"""

from __future__ import annotations

import os
import queue
import selectors
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import zmq

from agent.capture import Capture, capture_fd
from agent.executor import Handle
from agent.keeper import DONE, Kept
from agent.spool import Spool
from common import logs, topics, zmqutil
from common import protocol as proto
from common.auth import Security
from common.config import AgentConf
from common.publisher import Publisher

# A re-attached command's files and keeper are looked at this often (no notify pipe).
POLL_S = 0.05
# How often the published offsets are saved: what a restarted agent may publish twice.
SAVE_S = 1.0
KEEPER_DIED = "its keeper process ended without recording the command's exit; the exit status is unknown"

log = logs.get("agent.pump")


@dataclass
class Started:
    """A command the session has started (or re-attached) and recorded in the spool."""

    cmd_id: str
    job_id: str
    argv: list[str]
    handle: Handle
    started_at: float  # wall clock
    timeout: float | None
    kept: Kept | None  # its keeper, whose notify pipe is read; None: re-attached, polled
    published: tuple[int, int] = (0, 0)  # stdout, stderr bytes published already


class _Stream:
    """One spool file of one command. Output is read straight into a fixed chunk-sized buffer
    (no per-read allocation or copy); a full buffer, or one older than flush_ms, is published.

    The file is opened once it exists: the keeper makes it at the command's first output, so
    a command that prints nothing costs no file creation (a journal entry on the disk) at all."""

    def __init__(self, stream: int, path: Path, offset: int, chunk: int) -> None:
        self.stream = stream
        self.path = path
        self.fd = -1
        self.buf = memoryview(bytearray(chunk))
        self.fill = 0  # bytes in buf not yet published
        self.offset = offset  # bytes published so far; the file is read from offset + fill
        self.pending_since = 0.0

    def opened(self) -> bool:
        if self.fd < 0:
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return False
            os.lseek(self.fd, self.offset, os.SEEK_SET)
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def make(self) -> None:
        """The file of a stream that had no output (its keeper never made it)."""
        if self.offset == 0 and not os.path.exists(self.path):
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            except OSError:
                pass  # a full disk: readers take a missing file for an empty one


@dataclass
class _Running:
    started: Started
    streams: list[_Stream]
    log_topic: str
    cmd_topic: str
    deadline: float | None  # monotonic: timeout
    kill_at: float | None = None  # monotonic: SIGKILL escalation
    timed_out: bool = False
    killed: bool = False
    saved_at: float = 0.0  # monotonic: published offsets last saved
    saved: tuple[int, int] = (0, 0)


class Pump(threading.Thread):
    def __init__(
        self,
        ctx: zmq.Context,
        brokers: list[str],
        security: Security | None,
        agent_id: str,
        epoch: str,
        spool: Spool,
        conf: AgentConf,
    ) -> None:
        super().__init__(name="agent-pump", daemon=True)
        self._ctx = ctx
        self._brokers = brokers  # each gets every event
        self._security = security
        self._agent_id = agent_id
        self._epoch = epoch
        self._spool = spool
        self._chunk = max(1, conf.chunk_bytes)
        self._flush_s = conf.flush_ms / 1000.0
        self._beacon_s = conf.beacon_s
        self._grace = conf.kill_grace_s
        self._capture = conf.capture_bytes
        self._sel = selectors.DefaultSelector()
        self._runs: dict[str, _Running] = {}
        self._control: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[proto.CmdStatus] = queue.SimpleQueue()
        self._wake_r, self._wake_w = _nonblocking_pipe()
        self._done_r, self._done_w = _nonblocking_pipe()
        self._stopping = False
        self._detached = False
        self._events: Publisher | None = None

    # ------------------------------------------------------------------ session-thread API
    @property
    def done_fd(self) -> int:
        return self._done_r

    def start_cmd(self, started: Started) -> None:
        self._call(partial(self._start, started))

    def kill(self, cmd_id: str) -> None:
        self._call(partial(self._kill, cmd_id))

    def publish_done(self, status: proto.CmdStatus) -> None:
        """Publish CmdDone for a command that never ran: its status is already recorded (in the
        spool, or in memory for a refusal)."""
        self._call(partial(self._send_done, status))

    def shutdown(self, detach: bool = False) -> None:
        """Kill every running command, record and publish their ends, then stop the thread;
        ``detach``: publish what is read, save how far, and stop, leaving the commands to their
        keepers for the next agent to re-attach to."""
        self._call(self._detach if detach else self._begin_shutdown)

    def take_done(self) -> list[proto.CmdStatus]:
        try:
            os.read(self._done_r, 4096)
        except BlockingIOError:
            pass
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    def _call(self, fn: Callable[[], None]) -> None:
        self._control.put(fn)
        _poke(self._wake_w)

    # ------------------------------------------------------------------ thread
    def run(self) -> None:
        self._events = Publisher(
            zmqutil.pub(self._ctx, self._brokers, self._security), self._agent_id, self._epoch, self._beacon_s
        )
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        try:
            while not (self._stopping and not self._runs) and not self._detached:
                for key, _mask in self._sel.select(self._timeout(time.monotonic())):
                    # An earlier callback of this batch may have finished the command and
                    # unregistered (closed) this fd already.
                    if self._sel.get_map().get(key.fd) is key:
                        key.data(key.fd)
                self._run_control()
                now = time.monotonic()
                for run in list(self._runs.values()):
                    self._enforce(run, now)
                self._flush_due(now)
        except Exception:
            log.exception("output thread failed")
            raise
        finally:
            self._events.close()
            _poke(self._done_w)  # let the session notice a dead pump

    def _timeout(self, now: float) -> float | None:
        due: list[float] = []
        for run in self._runs.values():
            due += [t for t in (run.deadline, run.kill_at) if t is not None]
            if run.started.kept is None:
                due.append(now + POLL_S)
            due += [s.pending_since + self._flush_s for s in run.streams if s.fill]
        return max(0.0, min(due) - now) if due else None

    def _on_wake(self, fd: int) -> None:
        try:
            os.read(fd, 4096)
        except BlockingIOError:
            pass

    def _run_control(self) -> None:
        while True:
            try:
                fn = self._control.get_nowait()
            except queue.Empty:
                return
            fn()

    # ------------------------------------------------------------------ start
    def _start(self, st: Started) -> None:
        now = time.monotonic()
        remaining = st.started_at + st.timeout - time.time() if st.timeout else None
        run = _Running(
            started=st,
            streams=[],
            log_topic=topics.log(st.job_id, st.cmd_id),
            cmd_topic=topics.cmd(st.job_id, st.cmd_id),
            deadline=now + remaining if remaining is not None else None,
            saved=st.published,
        )
        self._runs[st.cmd_id] = run
        if st.kept is not None:
            # CmdStarted precedes every LogChunk of the command. A re-attached command had
            # its CmdStarted from the agent that started it.
            self._publish(
                proto.CmdStarted,
                run.cmd_topic,
                job_id=st.job_id,
                cmd_id=st.cmd_id,
                agent=self._agent_id,
                pid=st.handle.pid,
                argv=st.argv,
            )
            self._sel.register(st.kept.notify, selectors.EVENT_READ, partial(self._on_notify, run))
        for stream, offset in zip((proto.STDOUT, proto.STDERR), st.published, strict=True):
            run.streams.append(_Stream(stream, self._spool.output_path(st.cmd_id, stream), offset, self._chunk))
        if self._stopping:
            run.killed = True
            self._terminate(run)
        if st.kept is None:
            self._poll(run)  # what was written while no agent watched goes out now

    # ------------------------------------------------------------------ reading
    def _on_notify(self, run: _Running, fd: int) -> None:
        try:
            pokes = os.read(fd, 65536)
        except BlockingIOError:
            return
        self._read_all(run)
        if not pokes or DONE in pokes:  # its exit is recorded (or at EOF: its keeper died)
            self._finish(run, clean=bool(pokes))

    def _poll(self, run: _Running) -> None:
        """A re-attached command: no pokes, so look at its files and its keeper's lock."""
        ended = not self._spool.keeper_alive(run.started.cmd_id)
        self._read_all(run)
        if ended:
            self._finish(run)

    def _read_all(self, run: _Running) -> None:
        for s in run.streams:
            while s.opened():
                n = os.readv(s.fd, [s.buf[s.fill :]])
                if not n:
                    break
                if not s.fill:
                    s.pending_since = time.monotonic()
                s.fill += n
                if s.fill < len(s.buf):
                    break  # all there is for now
                self._publish_chunk(run, s)

    # ------------------------------------------------------------------ timeouts and kills
    def _kill(self, cmd_id: str) -> None:
        run = self._runs.get(cmd_id)
        if run is not None:
            run.killed = True
            self._terminate(run)

    def _detach(self) -> None:
        now = time.monotonic()
        for run in self._runs.values():
            for stream in run.streams:
                if stream.fill:
                    self._publish_chunk(run, stream)
            self._save_offsets(run, now)
        self._detached = True

    def _begin_shutdown(self) -> None:
        self._stopping = True
        for run in self._runs.values():
            run.killed = True
            self._terminate(run)

    def _terminate(self, run: _Running) -> None:
        run.started.handle.signal(signal.SIGTERM)
        if run.kill_at is None:
            run.kill_at = time.monotonic() + self._grace

    def _enforce(self, run: _Running, now: float) -> None:
        if run.deadline is not None and now >= run.deadline:
            run.deadline = None
            run.timed_out = True
            self._terminate(run)
        if run.kill_at is not None and now >= run.kill_at:
            run.kill_at = None
            run.started.handle.signal(signal.SIGKILL)
        if run.started.kept is None and run.started.cmd_id in self._runs:
            self._poll(run)

    # ------------------------------------------------------------------ publishing
    def _flush_due(self, now: float) -> None:
        for run in list(self._runs.values()):
            for s in run.streams:
                if s.fill and now - s.pending_since >= self._flush_s:
                    self._publish_chunk(run, s)
            if now - run.saved_at >= SAVE_S:
                self._save_offsets(run, now)

    def _publish_chunk(self, run: _Running, s: _Stream) -> None:
        st = run.started
        self._publish(
            proto.LogChunk,
            run.log_topic,
            job_id=st.job_id,
            cmd_id=st.cmd_id,
            stream=s.stream,
            offset=s.offset,
            data=s.buf[: s.fill],
        )
        # Encoding copied the bytes: the buffer is free again.
        s.offset += s.fill
        s.fill = 0

    def _save_offsets(self, run: _Running, now: float) -> None:
        run.saved_at = now
        offsets = (run.streams[0].offset, run.streams[1].offset)
        if offsets != run.saved:
            try:
                self._spool.write_published(run.started.cmd_id, *offsets)
                run.saved = offsets
            except OSError as exc:
                # A restarted agent would publish a little more twice; tail drops the overlap.
                log.warning("cannot save published offsets", cmd_id=run.started.cmd_id, error=str(exc))

    def _send_done(self, status: proto.CmdStatus) -> None:
        self._publish(
            proto.CmdDone,
            topics.cmd(status.job_id, status.cmd_id),
            job_id=status.job_id,
            cmd_id=status.cmd_id,
            status=status,
        )

    def _publish(self, cls: type[proto.EventBase], topic: str, **fields: Any) -> None:
        assert self._events is not None
        self._events.publish(cls, topic, **fields)

    # ------------------------------------------------------------------ the end of a command
    def _finish(self, run: _Running, clean: bool = False) -> None:
        """``clean``: its keeper said DONE (else it is re-attached, or its keeper died)."""
        st = run.started
        self._read_all(run)  # its exit is recorded: nothing more will be written
        for s in run.streams:
            if s.fill:
                self._publish_chunk(run, s)
        if st.kept is not None:
            self._sel.unregister(st.kept.notify)
            st.kept.release(clean)  # from now on, the notify pipe may carry another command's pokes
        status = self._status(run)
        for s in run.streams:
            s.close()
        try:
            self._spool.write_result(status)
        except OSError as exc:
            log.error("cannot write result to the spool", cmd_id=st.cmd_id, error=str(exc))
        # The session has it before anyone hears of it: a Query prompted by CmdDone finds it
        # even when the disk kept the result out of the spool.
        self._done.put(status)
        _poke(self._done_w)
        self._send_done(status)
        del self._runs[st.cmd_id]
        # Off the round trip, now: a finished command has both files, empty or not.
        for s in run.streams:
            s.make()

    def _status(self, run: _Running) -> proto.CmdStatus:
        st = run.started
        ended = self._spool.read_exit(st.cmd_id)
        out, err = (capture_fd(s.fd, self._capture) if s.fd >= 0 else Capture(self._capture) for s in run.streams)
        status = proto.CmdStatus(
            cmd_id=st.cmd_id,
            job_id=st.job_id,
            agent=self._agent_id,
            state="done",
            pid=st.handle.pid,
            timed_out=run.timed_out,
            killed=run.killed,
            started_at=st.started_at,
            ended_at=ended.ended_at if ended else time.time(),
            stdout_bytes=run.streams[0].offset,
            stderr_bytes=run.streams[1].offset,
            stdout=out.value(),
            stderr=err.value(),
            truncated=out.truncated or err.truncated,
        )
        status.duration = max(0.0, status.ended_at - st.started_at)
        if ended is None:
            # Killed by hand, most likely: what it ran may live on, with nobody to report it.
            st.handle.signal(signal.SIGKILL)
            status.error = KEEPER_DIED
            return status
        rc = ended.returncode
        status.exit_code, status.signal = (rc, None) if rc >= 0 else (None, -rc)
        status.spool_error = ended.spool_error
        return st.handle.conclude(status, ended)


def _nonblocking_pipe() -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


def _poke(fd: int) -> None:
    try:
        os.write(fd, b"\0")
    except BlockingIOError:
        pass  # the pipe is full of pokes already: the reader will wake anyway
