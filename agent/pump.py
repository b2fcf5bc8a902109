"""The output thread: the one owner of every running command's pipes and of the PUB socket.

Why one thread: it keeps event stamping hole-free (one Stamper, one socket, one thread) and
moves output in big blocks with a single selector instead of a thread per pipe. Per command it
- reads stdout/stderr in blocks into a chunk buffer; a chunk (full at ``chunk_bytes``, or
  older than ``flush_ms``, never a message per line) has the known secrets taken out
  (agent/redact.py; nothing to do while none is known), is appended to the spool and THEN
  published as a LogChunk, so every byte an event announces can already be fetched;
- keeps a bounded head+tail capture of each stream (of what was published) for the CmdStatus;
- writes the optional stdin without blocking;
- enforces the timeout and kill requests: SIGTERM to the whole command (through its executor
  handle), SIGKILL after ``kill_grace_s``;
- when both pipes hit EOF and the leader has exited: lets the handle conclude the status,
  writes the result to the spool, THEN publishes CmdDone, then hands the status to the
  session thread.
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
from typing import IO, Any

import zmq

from agent.capture import Capture
from agent.executor import Handle
from agent.redact import Redactor
from agent.spool import Spool
from common import logs, topics, zmqutil
from common import protocol as proto
from common.auth import Security
from common.config import AgentConf
from common.publisher import Publisher

STDIN_BLOCK = 64 * 1024
# Without pidfd (non-Linux) leader exit is noticed by polling at this period.
POLL_S = 0.05
# A chunk's tail that may be the start of a secret waits this long for the rest of it.
HOLD_S = 1.0

log = logs.get("agent.pump")


@dataclass
class Started:
    """A command the session has started and recorded (spec + pid) in the spool."""

    cmd_id: str
    job_id: str
    argv: list[str]
    handle: Handle
    started_at: float  # wall clock
    timeout: float | None
    stdin: bytes | None


class _Stream:
    """One pipe of one command. Output is read straight into a fixed chunk-sized buffer (no
    per-read allocation or copy); a full buffer, or one older than flush_ms, is published."""

    def __init__(self, stream: int, pipe: IO[bytes], spool_fd: int, chunk: int, capture: Capture) -> None:
        self.stream = stream
        self.pipe = pipe  # the Popen file object; closing it closes the fd
        self.fd = pipe.fileno()
        self.spool_fd = spool_fd
        self.capture = capture
        self.buf = memoryview(bytearray(chunk))
        self.fill = 0  # bytes in buf not yet published
        self.offset = 0  # bytes spooled and published so far (after redaction)
        # Bytes at the start of buf held back by redaction, while nothing has followed them.
        self.held = 0
        self.pending_since = 0.0
        self.open = True


@dataclass
class _Running:
    started: Started
    streams: list[_Stream]
    log_topic: str
    cmd_topic: str
    deadline: float | None  # monotonic: timeout
    pidfd: int | None = None
    exited_at: float | None = None  # monotonic: the leader's exit was noticed
    kill_at: float | None = None  # monotonic: SIGKILL escalation
    timed_out: bool = False
    killed: bool = False
    spool_failed: bool = False
    stdin: memoryview | None = None  # request stdin not yet written
    stdin_pipe: IO[bytes] | None = None


class Pump(threading.Thread):
    def __init__(
        self,
        ctx: zmq.Context,
        broker: str,
        security: Security | None,
        agent_id: str,
        epoch: str,
        spool: Spool,
        conf: AgentConf,
    ) -> None:
        super().__init__(name="agent-pump", daemon=True)
        self._ctx = ctx
        self._broker = broker
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
        self._events: Publisher | None = None
        self._redactor = Redactor()  # this thread's only

    # ------------------------------------------------------------------ session-thread API
    @property
    def done_fd(self) -> int:
        return self._done_r

    def start_cmd(self, started: Started) -> None:
        self._call(partial(self._start, started))

    def kill(self, cmd_id: str) -> None:
        self._call(partial(self._kill, cmd_id))

    def learn_secrets(self, stdin: bytes) -> None:
        """Redact the values of this secret stdin from all output from now on."""
        self._call(partial(self._redactor.learn, stdin))

    def publish_done(self, status: proto.CmdStatus) -> None:
        """Publish CmdDone for a command that never ran: its status is already recorded (in the
        spool, or in memory for a refusal)."""
        self._call(partial(self._send_done, status))

    def shutdown(self) -> None:
        """Kill every running command, record and publish their ends, then stop the thread."""
        self._call(self._begin_shutdown)

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
            zmqutil.pub(self._ctx, self._broker, self._security), self._agent_id, self._epoch, self._beacon_s
        )
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        try:
            while not (self._stopping and not self._runs):
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
            if run.exited_at is not None:
                due.append(run.exited_at + self._grace)
            elif run.pidfd is None:
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
        run = _Running(
            started=st,
            streams=[],
            log_topic=topics.log(st.job_id, st.cmd_id),
            cmd_topic=topics.cmd(st.job_id, st.cmd_id),
            deadline=now + st.timeout if st.timeout else None,
        )
        self._runs[st.cmd_id] = run
        # CmdStarted precedes every LogChunk of the command: pipes are watched only from here on.
        self._publish(
            proto.CmdStarted,
            run.cmd_topic,
            job_id=st.job_id,
            cmd_id=st.cmd_id,
            agent=self._agent_id,
            pid=st.handle.proc.pid,
            argv=st.argv,
        )
        proc = st.handle.proc
        # Every executor pipes both streams (procgroup.popen_piped).
        assert proc.stdout is not None and proc.stderr is not None
        for stream, pipe in ((proto.STDOUT, proc.stdout), (proto.STDERR, proc.stderr)):
            spool_fd = os.open(
                self._spool.output_path(st.cmd_id, stream), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
            )
            s = _Stream(stream, pipe, spool_fd, self._chunk, Capture(self._capture))
            run.streams.append(s)
            self._sel.register(s.fd, selectors.EVENT_READ, partial(self._on_readable, run, s))
        if st.stdin is not None:
            assert proc.stdin is not None
            run.stdin, run.stdin_pipe = memoryview(st.stdin), proc.stdin
            os.set_blocking(proc.stdin.fileno(), False)
            self._sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, partial(self._on_writable, run))
        try:
            run.pidfd = os.pidfd_open(proc.pid)
            self._sel.register(run.pidfd, selectors.EVENT_READ, partial(self._on_exit, run))
        except (AttributeError, OSError):
            run.pidfd = None  # polled instead (see POLL_S)
        if self._stopping:
            run.killed = True
            self._terminate(run)

    # ------------------------------------------------------------------ I/O callbacks
    def _on_readable(self, run: _Running, s: _Stream, fd: int) -> None:
        n = os.readv(fd, [s.buf[s.fill :]])
        if not n:
            self._close_stream(run, s)
            self._maybe_finish(run)
            return
        if not s.fill or s.held:
            s.pending_since = time.monotonic()
            s.held = 0
        s.fill += n
        if s.fill == len(s.buf):
            self._publish_chunk(run, s)

    def _spool_write(self, run: _Running, s: _Stream, data: memoryview) -> None:
        try:
            while data:
                data = data[os.write(s.spool_fd, data) :]
        except OSError as exc:
            # Keep streaming to subscribers. ``error`` is reserved for "never started", so the
            # short spool copy shows as a file smaller than the result's byte counts.
            if not run.spool_failed:
                run.spool_failed = True
                log.error("spool write failed", cmd_id=run.started.cmd_id, error=str(exc))

    def _on_writable(self, run: _Running, fd: int) -> None:
        assert run.stdin is not None and run.stdin_pipe is not None
        try:
            n = os.write(fd, run.stdin[:STDIN_BLOCK])
            run.stdin = run.stdin[n:]
        except BlockingIOError:
            return
        except OSError:
            run.stdin = run.stdin[:0]  # the child closed its stdin: nothing more to give it
        if not run.stdin:
            self._sel.unregister(fd)
            run.stdin_pipe.close()

    def _on_exit(self, run: _Running, fd: int) -> None:
        self._sel.unregister(fd)
        os.close(fd)
        run.pidfd = None
        run.started.handle.proc.poll()
        run.exited_at = time.monotonic()
        self._maybe_finish(run)

    def _close_stream(self, run: _Running, s: _Stream) -> None:
        if s.open:
            if s.fill:
                self._publish_chunk(run, s, final=True)  # the rest of the stream goes out at once
            s.open = False
            self._sel.unregister(s.fd)
            s.pipe.close()
            os.close(s.spool_fd)

    # ------------------------------------------------------------------ timeouts and kills
    def _kill(self, cmd_id: str) -> None:
        run = self._runs.get(cmd_id)
        if run is not None:
            run.killed = True
            self._terminate(run)

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
        if run.pidfd is None and run.exited_at is None and run.started.handle.proc.poll() is not None:
            run.exited_at = now
            self._maybe_finish(run)
        if run.exited_at is not None and now >= run.exited_at + self._grace and run.started.cmd_id in self._runs:
            # The leader is gone but something it left behind still holds the pipes open:
            # end the rest of the group and stop waiting for its output.
            run.started.handle.signal(signal.SIGKILL)
            for s in run.streams:
                self._close_stream(run, s)
            self._maybe_finish(run)

    # ------------------------------------------------------------------ publishing
    def _flush_due(self, now: float) -> None:
        for run in self._runs.values():
            for s in run.streams:
                if s.fill and now - s.pending_since >= self._flush_s:
                    self._publish_chunk(run, s)

    def _publish_chunk(self, run: _Running, s: _Stream, final: bool = False) -> None:
        data: bytes | memoryview = s.buf[: s.fill]
        held = b""
        if self._redactor.secrets:
            # Held bytes that nothing followed within HOLD_S go out as they are.
            data, held = self._redactor.apply(data, final or s.held > 0)
        if data:
            # Spool first, in one write per chunk: whoever sees the event can Fetch its bytes.
            self._spool_write(run, s, memoryview(data))
            s.capture.feed(data)
            st = run.started
            self._publish(
                proto.LogChunk,
                run.log_topic,
                job_id=st.job_id,
                cmd_id=st.cmd_id,
                stream=s.stream,
                offset=s.offset,
                data=data,
            )
            s.offset += len(data)
        # Encoding copied the bytes: the buffer is free again, but for what is held back.
        s.fill = s.held = len(held)
        if held:
            s.buf[: len(held)] = held
            s.pending_since = time.monotonic() + HOLD_S - self._flush_s

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
    def _maybe_finish(self, run: _Running) -> None:
        st = run.started
        proc = st.handle.proc
        if any(s.open for s in run.streams) or proc.returncode is None:
            return
        if run.stdin_pipe is not None and not run.stdin_pipe.closed:
            self._sel.unregister(run.stdin_pipe.fileno())
            run.stdin_pipe.close()
        rc = proc.returncode
        out, err = run.streams
        ended = time.time()
        status = proto.CmdStatus(
            cmd_id=st.cmd_id,
            job_id=st.job_id,
            agent=self._agent_id,
            state="done",
            pid=proc.pid,
            exit_code=rc if rc >= 0 else None,
            signal=-rc if rc < 0 else None,
            timed_out=run.timed_out,
            killed=run.killed,
            started_at=st.started_at,
            ended_at=ended,
            duration=ended - st.started_at,
            stdout_bytes=out.offset,
            stderr_bytes=err.offset,
            stdout=out.capture.value(),
            stderr=err.capture.value(),
            truncated=out.capture.truncated or err.capture.truncated,
        )
        status = st.handle.conclude(status)
        try:
            self._spool.write_result(status)
        except OSError as exc:
            log.error("cannot write result to the spool", cmd_id=st.cmd_id, error=str(exc))
        self._send_done(status)
        del self._runs[st.cmd_id]
        self._done.put(status)
        _poke(self._done_w)


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
