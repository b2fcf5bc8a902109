"""The replay endpoint: a ROUTER answering Replay (one page per request), Stats and Ping.

One request, one reply: a client pages by asking again with ``after = last_id``, which is the
flow control (a slow client never has pages piled up in its queue). Runs in its own thread
with its own SQLite connection.

Before reading, a Replay waits until the journal holds every event the proxy had accepted when
the request arrived (``barrier``). So a client that received an event live and then replays
finds that event and all earlier ones in the journal: the splice in ``broker.client`` relies
on this.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import zmq

from broker.journal_reader import JournalReader
from common import limits, logs, protocol, roles, zmqutil
from common.auth import Guard, Security

log = logs.get("broker.replay")

POLL_MS = 100
BARRIER_TIMEOUT_S = 5.0


class ReplayServer:
    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        reader_factory: Callable[[], JournalReader],
        barrier: Callable[[float], bool],
        counters: Callable[[], dict[str, int]],
        source: str,
        security: Security | None,
    ) -> None:
        # Pages are big, so fewer are queued per client (common/limits.py).
        self.sock = zmqutil.router(ctx, endpoint, security, roles.BROKER_REPLAY, sndhwm=limits.REPLAY_SNDHWM)
        self._guard = Guard(security, roles.BROKER_REPLAY)
        self._reader_factory = reader_factory
        self._barrier = barrier
        self._counters = counters
        self.source = source
        self.requests = 0
        self.errors = 0  # malformed or unknown requests, and replies that could not be sent
        self._thread = threading.Thread(target=self._run, name="replay", daemon=True)
        self._stop = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _run(self) -> None:
        reader = self._reader_factory()
        try:
            while not self._stop.is_set():
                if self.sock.poll(POLL_MS):
                    self._serve_one(reader)
        finally:
            reader.close()

    def _serve_one(self, reader: JournalReader) -> None:
        got = zmqutil.routed(self.sock, self.sock.recv_multipart(copy=False), protocol.ReplayRequest, self._guard)
        if got is None:
            self.errors += 1
            return
        self._send(got.identity, self._answer(reader, got.msg))

    def _answer(
        self, reader: JournalReader, req: protocol.Replay | protocol.Stats | protocol.Ping
    ) -> protocol.Pong | protocol.StatsReply | protocol.ErrorReply | protocol.ReplayPage:
        if isinstance(req, protocol.Ping):
            return protocol.Pong(req_id=req.req_id, source=self.source)
        if isinstance(req, protocol.Stats):
            return protocol.StatsReply(req_id=req.req_id, source=self.source, counters=self._counters())
        self.requests += 1
        if req.after < 0 or req.limit < 1:
            self.errors += 1
            return protocol.ErrorReply(
                req_id=req.req_id, code="bad_request", message="after must be >= 0 and limit >= 1"
            )
        if not self._barrier(BARRIER_TIMEOUT_S):
            # Still answer: the page is complete up to what is committed, the client catches up later.
            log.warning("replay.barrier_timeout", timeout_s=BARRIER_TIMEOUT_S)
        page = reader.page(
            req.prefix, req.after, req.since_ts, min(req.limit, limits.REPLAY_MAX_EVENTS), limits.REPLAY_PAGE_BYTES
        )
        return protocol.ReplayPage(
            req_id=req.req_id,
            events=page.events,
            publishers=page.publishers,
            last_id=page.last_id,
            head_id=page.head_id,
            more=page.more,
        )

    def _send(self, identity: bytes, reply: protocol.Base) -> None:
        try:
            # NOBLOCK: a client that stopped reading (queue at HWM) must not stall everyone else.
            self.sock.send_multipart([identity, protocol.encode(reply)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # EHOSTUNREACH (peer gone, ROUTER_MANDATORY) or EAGAIN
            self.errors += 1
            log.debug("replay.send_failed", error=exc.strerror)
