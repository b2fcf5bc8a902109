"""One job's output and state as a stream of SSE messages, shared by everyone watching the job.

A ``JobFeed`` is a thread: it reads the job's events from every broker's journal
(broker/journals.py), woken by the live streams, drops the copies a second broker has of an
event (by its stamp: publisher, source, kind, epoch, seq), turns them into display operations,
and keeps

- a ring of recent messages, each with the feed's journal position after it (journal.py: with
  one broker the journal id of its last event): a browser that reconnects with
  ``Last-Event-ID`` gets exactly the messages after it (no gap, no duplicate); one whose id fell
  out of the ring, or names no position of the brokers configured now, gets a ``reset`` and a
  fresh snapshot;
- per command: its heading, the tail of each stream and its end, from which a new watcher's
  first message (the snapshot) is made, so a job with 500,000 lines starts with its last
  lines, not all of them (earlier bytes come from the agent's spool on demand).

Events are claims: a command's events count only from the agent the orchestrator's timeline
says runs it, job events only from an orchestrator's key (as p4bus/tailer.py). A byte range the
journal lacks (a publisher dropped it) is fetched from the agent's spool, so the output is
byte-exact.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from broker.journals import Copy, Endpoints, Journals
from common import logs, roles, topics
from common import protocol as P
from common.auth import Security
from common.config import Config
from common.rpc import MasterClient, OrchestratorClient, RequestError
from common.sequence import GapDetector
from p4bus.stream import Cursor
from p4bus.web import journal
from p4bus.web.journal import Position
from p4bus.web.wakeup import Wakeup

log = logs.get("web.feed")

TAIL_BYTES = 64 * 1024  # per command and stream, in a new watcher's snapshot
RING_MESSAGES = 4096
RING_BYTES = 32 << 20
IDLE_READ_S = 1.0  # read the journal at least this often (a subscription not yet active)
FETCH_MAX = 4 << 20
BATCH_EVENTS = 16  # journal events per SSE message (an agent's chunk holds up to chunk_bytes)

Op = dict[str, Any]


def sse(pos: Position, ops: list[Op]) -> bytes:
    return f"id: {journal.encode(pos)}\ndata: {json.dumps(ops, separators=(',', ':'))}\n\n".encode()


@dataclass
class CommandView:
    section: Op
    tails: dict[int, bytearray] = field(default_factory=lambda: {P.STDOUT: bytearray(), P.STDERR: bytearray()})
    cursors: dict[int, Cursor] = field(default_factory=lambda: {P.STDOUT: Cursor(), P.STDERR: Cursor()})
    done: Op | None = None


Fetcher = Callable[[str, str, int, int, int], bytes]  # (cmd, agent, stream, offset, size) -> data


class OutputModel:
    """Pure state of one job's display: events in, display operations out.

    Every change of state appends its operation to ``out`` at once, so when asking a spool or
    the orchestrator fails half-way through an event, what did change is still in ``out`` (the
    caller publishes it and offers the event again; a stream's cursor drops bytes already shown)."""

    def __init__(self, job_id: str, fetch: Fetcher, runs: Callable[[str], P.StageRun | None]) -> None:
        self.job_id = job_id
        self.fetch = fetch
        self.runs = runs
        self.commands: dict[str, CommandView] = {}
        self.job: Op | None = None
        self.ignored: set[str] = set()
        self.out: list[Op] = []

    def take(self) -> list[Op]:
        ops, self.out = self.out, []
        return ops

    def apply(self, got: P.Delivered, orchestrator_key: Callable[[str], bool]) -> list[Op]:
        """The operations of one event (``take()`` them after an exception)."""
        ev, publisher = got
        if isinstance(ev, P.JobChanged):
            if ev.job_id == self.job_id and (not publisher or orchestrator_key(publisher)):
                self.job = {"k": "job", "state": ev.state, "stage": ev.stage}
                self.out.append(self.job)
            return self.take()
        if not isinstance(ev, P.LogChunk | P.CmdStarted | P.CmdDone) or ev.job_id != self.job_id:
            return self.take()
        run = self.runs(ev.cmd_id)
        if run is None or (publisher and run.agent != publisher):
            # Not placed yet (agent ""): dropped quietly, the spool fills the gap. Else forged:
            # said once per key, as `p4bus tail` does.
            if (run is None or run.agent) and publisher not in self.ignored:
                self.ignored.add(publisher)
                why = f"it runs on {run.agent}" if run is not None else "no such command in this job"
                self.out.append(
                    {"k": "note", "text": f"ignoring events about {ev.cmd_id} published by key {publisher}: {why}"}
                )
            return self.take()
        view = self._view(ev.cmd_id, run)
        if isinstance(ev, P.LogChunk):
            self._bytes(view, run, ev.stream, ev.offset, ev.data)
        elif isinstance(ev, P.CmdDone) and view.done is None:
            st = ev.status
            for stream, total in ((P.STDOUT, st.stdout_bytes), (P.STDERR, st.stderr_bytes)):
                self._fill(view, run, stream, total)
            view.done = {
                "k": "done",
                "cmd": ev.cmd_id,
                "exit": st.exit_code,
                "signal": st.signal,
                "error": st.error,
                "duration": round(st.duration, 3),
            }
            self.out.append(view.done)
        return self.take()

    def _view(self, cmd_id: str, run: P.StageRun) -> CommandView:
        view = self.commands.get(cmd_id)
        if view is None:
            section = {
                "k": "section",
                "cmd": cmd_id,
                "stage": run.stage,
                "step": run.step,
                "attempt": run.attempt,
                "argv": run.argv,
            }
            view = self.commands[cmd_id] = CommandView(section)
            self.out.append(section)
        return view

    def _bytes(self, view: CommandView, run: P.StageRun, stream: int, offset: int, data: bytes) -> None:
        cur = view.cursors[stream]
        if offset > cur.next:
            self._fill(view, run, stream, offset)
        start = cur.next
        out, _ = cur.accept(offset, data)
        if out:
            self._out(view, stream, start, out)

    def _fill(self, view: CommandView, run: P.StageRun, stream: int, upto: int) -> None:
        """The bytes before ``upto`` that no event brought, from the agent's spool."""
        cur = view.cursors[stream]
        while cur.next < upto:
            start = cur.next
            data = self.fetch(run.cmd_id, run.agent, stream, start, min(upto - start, FETCH_MAX))
            if not data:
                self.out.append({"k": "note", "cmd": run.cmd_id, "text": f"output missing from byte {start}"})
                break
            out, _ = cur.accept(start, data)
            self._out(view, stream, start, out)

    def _out(self, view: CommandView, stream: int, offset: int, data: bytes) -> None:
        tail = view.tails[stream]
        tail += data
        del tail[:-TAIL_BYTES]
        self.out.append(
            {"k": "out", "cmd": view.section["cmd"], "s": stream, "o": offset, "d": base64.b64encode(data).decode()}
        )

    def snapshot(self) -> list[Op]:
        """Everything a new watcher needs: headings, each stream's tail, ends, the job's state."""
        ops: list[Op] = [{"k": "reset"}]
        for cmd_id, view in self.commands.items():
            ops.append(view.section)
            for stream, tail in view.tails.items():
                if tail:
                    offset = view.cursors[stream].next - len(tail)
                    ops.append(
                        {
                            "k": "out",
                            "cmd": cmd_id,
                            "s": stream,
                            "o": offset,
                            "d": base64.b64encode(bytes(tail)).decode(),
                        }
                    )
            if view.done:
                ops.append(view.done)
        if self.job:
            ops.append(self.job)
        return ops


class Ring:
    """Recent SSE messages by journal position, bounded in count and bytes (not thread-safe)."""

    def __init__(self, brokers: int = 1) -> None:
        self.ids: list[Position] = []
        self.msgs: list[bytes] = []
        self.size = 0
        self.floor: Position = (0,) * brokers  # the position of the last message no longer held

    def add(self, pos: Position, msg: bytes) -> None:
        self.ids.append(pos)
        self.msgs.append(msg)
        self.size += len(msg)
        if len(self.ids) > RING_MESSAGES or self.size > RING_BYTES:
            cut = max(1, len(self.ids) // 4)  # drop a quarter at once: appends stay O(1) amortised
            self.floor = self.ids[cut - 1]
            self.size -= sum(len(m) for m in self.msgs[:cut])
            del self.ids[:cut], self.msgs[:cut]

    def after(self, pos: Position) -> list[bytes] | None:
        """Messages after ``pos``, or None when some of them are no longer held."""
        if not journal.covered(self.floor, pos):
            return None
        # Positions grow message after message: the covered ones are a prefix.
        return self.msgs[bisect.bisect_left(self.ids, True, key=lambda p: not journal.covered(p, pos)) :]


class JobFeed(threading.Thread):
    """Follows one job from the journal for as long as someone watches it."""

    def __init__(self, cfg: Config, security: Security | None, job_id: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name=f"feed-{job_id}", daemon=True)
        self.cfg = cfg
        self.security = security
        self.job_id = job_id
        self.loop = loop
        # ``lock`` guards the ring and pos (the event loop reads them for every watcher);
        # ``model_lock`` the display state, held while events are applied (which may ask the
        # orchestrator or a spool), so only a new watcher's snapshot waits on it, in a thread.
        self.lock = threading.Lock()
        self.model_lock = threading.Lock()
        self.brokers = [Endpoints(b.xpub, b.replay) for b in cfg.bus_brokers()]
        self.ring = Ring(len(self.brokers))
        self.pos: Position = (0,) * len(self.brokers)  # of the last message in the ring
        self.model_pos = self.pos  # of the display state (the events applied to the model)
        # With several brokers, the events handled so far by stamp (a second broker's copy of
        # one is dropped); with one, its journal holds each event once.
        self.gaps = GapDetector(keep_holes=True) if len(self.brokers) > 1 else None
        self.ready = threading.Event()  # the history has been read once
        self.stopping = threading.Event()
        self.watchers = 0
        self.idle_since = 0.0  # monotonic time the last watcher left
        self.wakeup = Wakeup(loop)
        self._runs: dict[str, P.StageRun] = {}
        self.model = OutputModel(job_id, self._fetch, self._run)
        self.error = ""
        self.failure: Exception | None = None
        self._carry: list[Op] = []

    # ---------------------------------------------------------------- the thread
    def run(self) -> None:
        ctx: zmq.Context = zmq.Context.instance()
        prefixes = [f"{topics.LOG}.{self.job_id}.", f"{topics.CMD}.{self.job_id}.", topics.job(self.job_id)]
        journals = Journals.connect(ctx, self.brokers, self.security, prefixes, timeout_s=10.0, on_down=self._down)
        self.orch = OrchestratorClient(self.cfg.client_orchestrators(), self.security, timeout=5.0, ctx=ctx)
        self.masters = MasterClient(self.cfg.client_masters(), self.security, timeout=10.0, ctx=ctx)
        try:
            while not self.stopping.is_set():
                try:
                    self._read(journals)
                except (RequestError, TimeoutError, RuntimeError) as exc:
                    if str(exc) != self.error:
                        log.warning("feed.read_failed", job=self.job_id, error=str(exc))
                    self.error = str(exc)
                self.ready.set()
                journals.wait(IDLE_READ_S)  # only a wake-up: the journals have the events, with their ids
        finally:
            journals.close()
            self.orch.close()
            self.masters.close()

    def _down(self, broker: str, why: str) -> None:
        log.warning("feed.broker_unavailable", job=self.job_id, broker=broker, error=why)

    def _read(self, journals: Journals) -> None:
        copies = journals.read()
        # A long history becomes many messages: a watcher that resumes needs only the tail of it.
        for start in range(0, len(copies), BATCH_EVENTS):
            handled = self._apply(copies[start : start + BATCH_EVENTS])
            if self.failure is not None:
                journals.commit(start + handled)
                raise self.failure
        journals.commit()
        self.error = ""

    def _apply(self, copies: list[Copy]) -> int:
        """Apply and publish a batch; returns how many of its copies were handled whole. When
        asking a spool or the orchestrator failed (``failure``), the copies after it are read
        again. Operations of an event handled only in part are carried over and published with
        the position after that event, once it has been handled whole."""
        ops, self._carry = self._carry, []
        handled = 0
        pos = self.model_pos
        self.failure = None
        with self.model_lock:
            for c in copies:
                if c.got is not None and self._new(c.got):
                    try:
                        ops += self.model.apply(c.got, self._orchestrator_key)
                    except (RequestError, TimeoutError) as exc:
                        self.failure = exc
                        break
                    self._handled(c.got)
                pos = journal.advance(pos, c.broker, c.journal_id)
                handled += 1
            partial = self.model.take()
            self.model_pos = pos
        if not handled:
            self._carry = ops + partial
            return 0
        self._carry = partial
        with self.lock:
            self.pos = pos
            if ops:
                self.ring.add(pos, sse(pos, ops))
        self.wakeup.bump()
        return handled

    def _new(self, got: P.Delivered) -> bool:
        ev, publisher = got
        return self.gaps is None or self.gaps.is_new(ev.source, ev.topic, ev.epoch, ev.seq, publisher)

    def _handled(self, got: P.Delivered) -> None:
        if self.gaps is not None:
            ev, publisher = got
            self.gaps.observe(ev.source, ev.topic, ev.epoch, ev.seq, publisher)

    def _orchestrator_key(self, publisher: str) -> bool:
        return self.security is not None and self.security.role_of(publisher) == roles.ORCHESTRATOR

    def _run(self, cmd_id: str) -> P.StageRun | None:
        run = self._runs.get(cmd_id)
        if run is None or not run.agent:
            self._runs.update({r.cmd_id: r for r in self.orch.job(self.job_id).timeline})
            run = self._runs.get(cmd_id)
        return run

    def _fetch(self, cmd_id: str, agent: str, stream: int, offset: int, size: int) -> bytes:
        return self.masters.fetch(cmd_id, stream, offset, size, agent=agent or None).data

    # ---------------------------------------------------------------- the event loop's side
    def since(self, pos: Position) -> tuple[Position, list[bytes]] | None:
        """(the position now reached, the messages after ``pos``), or None if the ring no longer
        holds them all: then the watcher needs a snapshot."""
        with self.lock:
            msgs = self.ring.after(pos)
            if msgs is None:
                return None
            return (self.pos if msgs else pos), msgs

    def snapshot(self) -> tuple[Position, bytes]:
        """A new watcher's first message and its position (blocking: call it from a worker thread)."""
        with self.model_lock:
            return self.model_pos, sse(self.model_pos, self.model.snapshot())
