"""One agent <-> master link: the DEALER and its registration/liveness schedule.

States: not welcomed (send Hello every heartbeat interval until a Welcome arrives) and welcomed
(send a Heartbeat every heartbeat interval). A welcomed master that has been silent for
``DEAD_AFTER`` intervals is considered gone: the socket stays (ZeroMQ reconnects by itself) and
the link goes back to saying Hello. The DEALER is ``immediate``: while the master is
unreachable, sends are dropped instead of queued, so a returning master gets one fresh Hello
rather than a backlog of stale Hellos and heartbeats (a reply lost that way is re-asked: every
request is idempotent).
"""

from __future__ import annotations

from typing import Literal

import zmq

from common import protocol as proto

DEAD_AFTER = 3

Due = Literal["hello", "heartbeat"]


class MasterLink:
    def __init__(self, endpoint: str, sock: zmq.Socket, heartbeat_s: float) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self.heartbeat_s = heartbeat_s
        self.welcomed = False
        self.master_id = ""
        self.peer_heartbeat_s = heartbeat_s
        self.last_heard: float | None = None
        self.last_sent: dict[str, float] = {}
        self.dropped = 0  # sends refused by ZeroMQ (queue full)

    @property
    def _interval(self) -> float:
        return max(self.heartbeat_s, self.peer_heartbeat_s)

    def heard(self, now: float) -> None:
        self.last_heard = now

    def welcome(self, msg: proto.Welcome) -> None:
        self.welcomed = True
        self.master_id = msg.master_id
        if msg.heartbeat_s > 0:
            self.peer_heartbeat_s = msg.heartbeat_s

    def check_alive(self, now: float) -> bool:
        """False (and back to Hello) once a welcomed master has been silent too long."""
        if self.welcomed and self.last_heard is not None and now - self.last_heard > DEAD_AFTER * self._interval:
            self.welcomed = False
            return False
        return True

    def due(self, now: float) -> Due | None:
        if not self.welcomed:
            last = self.last_sent.get("hello")
            return "hello" if last is None or now - last >= self.heartbeat_s else None
        last = self.last_sent.get("heartbeat")
        return "heartbeat" if last is None or now - last >= self.heartbeat_s else None

    def next_due(self, now: float) -> float:
        """Monotonic time of the next scheduled send or liveness check."""
        if not self.welcomed:
            return self.last_sent.get("hello", now) + self.heartbeat_s
        t = self.last_sent.get("heartbeat", now) + self.heartbeat_s
        if self.last_heard is not None:
            t = min(t, self.last_heard + DEAD_AFTER * self._interval + 1e-3)
        return t

    def hello_wanted(self, now: float) -> bool:
        """An unwelcomed master spoke: greet it again, at most once per heartbeat interval."""
        last = self.last_sent.get("hello")
        return not self.welcomed and (last is None or now - last >= self.heartbeat_s)

    def send(self, msg: proto.Base, now: float, kind: str = "") -> bool:
        if kind:
            # Scheduled even when refused, so a full queue is not retried in a busy loop.
            self.last_sent[kind] = now
        try:
            self.sock.send(proto.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return False
        return True
